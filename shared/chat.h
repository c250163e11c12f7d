/* chat.h: chat templates without a Jinja engine, fill-in-the-middle prompts, and the one call the
 * proxy makes per request (body -> exact prompt ids, count and prefix-block hashes).
 *
 * Built-in renderers, byte-identical to the model's own Jinja template as apply_chat_template runs
 * it (checked on tests/data/tok/chat_cases.json against @huggingface/transformers):
 *   deepseek_v2  DeepSeek-V2 / DeepSeek-Coder-V2 (also deepseek-llm):
 *                <bos>{system}\n\nUser: {u}\n\nAssistant: {a}<eos>User: {u2}\n\nAssistant:
 *   deepseek_v3  DeepSeek-V3 (<｜User｜>, <｜Assistant｜>, tool outputs)
 *   llama3       Llama-3 (<|start_header_id|>role<|end_header_id|>\n\n{content|trim}<|eot_id|>)
 *   chatml       plain ChatML (<|im_start|>role\n{content}<|im_end|>\n)
 *   qwen3        Qwen3's ChatML with <think> handling (reasoning_content, enable_thinking=false)
 * The renderer is chosen by recognising tokenizer_config.json's chat_template, or named.
 *
 * Message content may be a string, null (rendered as "") or a list of {"type":"text","text"}
 * parts (joined with "\n", as vLLM does for string templates; other part types are ignored and
 * flagged approximate). Tools and tool_calls are not rendered: a request that has them gets its
 * count flagged approximate (sh_prompt.approx). */
#ifndef SH_CHAT_H
#define SH_CHAT_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "sh.h"
#include "tok.h"

enum sh_chat_kind {
	SH_CHAT_DEEPSEEK_V2,
	SH_CHAT_DEEPSEEK_V3,
	SH_CHAT_LLAMA3,
	SH_CHAT_CHATML,
	SH_CHAT_QWEN3,
};

struct sh_chat;

/* A renderer for tok's model. name: one of the names above, or NULL to recognise the template of
 * tokenizer_config.json; NULL (with err saying how to choose one) when it is not recognised or
 * the name is unknown. tok must outlive the renderer. */
struct sh_chat *sh_chat_new(const struct sh_tok *tok, const char *name, struct sh_err *err);
void sh_chat_free(struct sh_chat *chat);
const char *sh_chat_name(const struct sh_chat *chat);
enum sh_chat_kind sh_chat_kind(const struct sh_chat *chat);

/* Which renderer a Jinja template is, or SH_DECLINED (err says why) when none fits exactly. */
int sh_chat_detect(const char *jinja, enum sh_chat_kind *kind, struct sh_err *err);

/* Flags of sh_chat_render. */
enum {
	SH_CHAT_GEN_PROMPT = 1 << 0,    /* add_generation_prompt */
	SH_CHAT_NO_THINKING = 1 << 1,   /* qwen3: enable_thinking=false */
};

/* Renders an OpenAI `messages` array. Returns a malloc'd NUL-terminated string (its length in
 * *len) the caller frees, or NULL with err (a message that is not an object, a role that is not a
 * string, content of another type). *approx (if not NULL) is set when something was left out
 * (non-text parts, tool_calls). */
char *sh_chat_render(const struct sh_chat *chat, const cJSON *messages, int flags, size_t *len,
		     int *approx, struct sh_err *err);

/* Fill-in-the-middle text for the model's FIM tokens (DeepSeek: <｜fim▁begin｜>{prefix}
 * <｜fim▁hole｜>{suffix}<｜fim▁end｜>; Qwen: <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}
 * <|fim_middle|>), the tokens taken from tokenizer.json. NULL with err when the model has none. */
char *sh_chat_fim(const struct sh_tok *tok, const char *prefix, size_t plen, const char *suffix,
		  size_t slen, size_t *len, struct sh_err *err);

/* The prompt of one request, as the engine will see it. */
struct sh_prompt {
	struct sh_tok_ids ids;   /* prompt token ids */
	uint64_t *hashes;        /* prefix-block hashes of the full blocks (malloc'd) */
	size_t nhashes;
	int chat;                /* 1: rendered from messages; 0: a completions prompt */
	int approx;              /* something was not rendered (tools, non-text parts) */
	const char *param;       /* after an error: the request field it is about */
};

/* Which field of a request body holds the prompt. */
enum sh_prompt_kind {
	SH_PROMPT_CHAT,          /* messages (chat completions); prompt is ignored */
	SH_PROMPT_COMPLETIONS,   /* prompt and suffix; messages is ignored */
	SH_PROMPT_ANY,           /* messages if present, else prompt (tokenize) */
	SH_PROMPT_RESPONSES,     /* /v1/responses: instructions and input, rendered as chat messages */
};
void sh_prompt_init(struct sh_prompt *p);
void sh_prompt_release(struct sh_prompt *p);

/* The proxy's call: from a parsed OpenAI request body, the exact prompt ids, their count (ids.n)
 * and the prefix-block hashes (block tokens per block, seeded with the model name), in one pass;
 * kind says which field holds the prompt (the other is an unknown field there, ignored).
 *   chat:        body.messages rendered by chat, with the generation prompt unless
 *                body.add_generation_prompt is false (vLLM's field; default true), honouring
 *                body.chat_template_kwargs.enable_thinking=false, encoded without adding special
 *                tokens (the template has them); body.tools is not rendered (approx is set);
 *   completions: body.prompt as a string, a one-element list of strings, a list of token ids or a
 *                one-element list of such lists; with body.suffix the FIM text; strings are
 *                encoded with the post-processor (SH_TOK_ADD_SPECIAL), as vLLM does.
 * chat may be NULL when only completions are served. Returns SH_OK, SH_PARSE (err: what is wrong
 * with the body, for a 400), SH_DECLINED (batched prompts, FIM without FIM tokens, no renderer),
 * or SH_TOOBIG (text over the tokenizer's cap). */
/* A completions body narrowed to one element el of its prompt list: a new object referring to el
 * (as its prompt) and to the body's suffix, all sh_prompt_build reads of SH_PROMPT_COMPLETIONS;
 * cJSON_Delete frees it, not what it refers to. */
cJSON *sh_prompt_one(const cJSON *body, const cJSON *el);

int sh_prompt_build(struct sh_tok *tok, const struct sh_chat *chat, const cJSON *body,
		    enum sh_prompt_kind kind, const char *model, size_t block, struct sh_prompt *out,
		    struct sh_err *err);

#endif
