/* api.h: OpenAI request bodies -> what the scheduler needs (prompts and sampling parameters), with
 * OpenAI-shaped refusals. What real clients send is accepted (shared/CLIENTS.md): unknown fields
 * are ignored; tools, tool_choice, response_format, user, parallel_tool_calls are accepted and
 * ignored (the built-in chat renderers have no tool syntax; shared/chat.h); any number of stop
 * strings up to ENG_MAX_STOP; max_tokens / max_completion_tokens / max_output_tokens larger than
 * the room left are clamped to it by the caller, never refused. Refused (400, the parameter named
 * in `param`): bad JSON, a field of the wrong type, values out of range (negative max_tokens,
 * temperature < 0, top_p outside (0, 1], n outside 1..16, logprobs over 20, a logit_bias key that
 * is no token id or a bias outside [-100, 100], best_of other than n, top_logprobs without
 * logprobs), a prompt that does not fit max-model-len by itself (code context_length_exceeded); an
 * unknown model is 404. */
#ifndef ENG_API_H
#define ENG_API_H

#include <cjson/cJSON.h>

#include "chat.h"
#include "seq.h"
#include "tok.h"

#define ENG_API_MAX_N 16          /* choices per request */
#define ENG_API_MAX_PROMPTS 64    /* prompts per /v1/completions request */

enum eng_api_kind { ENG_API_COMPLETIONS, ENG_API_CHAT, ENG_API_RESPONSES, ENG_API_TOKENIZE };

struct eng_api_ctx {
	struct sh_tok *tok;
	const struct sh_chat *chat;      /* NULL: no chat template */
	const char *model;               /* served model name (and the prefix-hash seed) */
	int max_model_len;
	int capacity;                    /* tokens the KV pool can hold for one sequence */
	int block_size;
	const struct eng_sampling *defaults; /* the model's generation config (vLLM's --generation-config
					      * auto): a request's defaults; NULL: vLLM's own */
	int default_max_tokens;          /* its max_new_tokens: max_tokens when a request gives none; 0: none */
};

/* The sampling defaults of a generation_config.json (the keys vLLM takes from it: temperature,
 * top_p, top_k, min_p, repetition_penalty, max_new_tokens) into *s (from vLLM's defaults) and
 * *max_new (0: none); desc gets them in words. Returns 1 when the file was read, 0 when there is
 * none (when it may be absent), or SH_ERR (err: a bad file or value). */
int eng_api_generation_config(const char *path, int must_exist, struct eng_sampling *s, int *max_new, char *desc,
			      size_t dlen, struct sh_err *err);

struct eng_api_err {
	int status;                      /* 400, 404, 413 */
	char msg[512];
	const char *param;               /* static, or NULL */
	const char *code;                /* static, or NULL */
};

struct eng_api_req {
	enum eng_api_kind kind;
	cJSON *body;                     /* owned */
	int stream, include_usage, echo, n;
	int max_tokens;                  /* -1: not given (the room left) */
	int logprobs;                    /* -1: off; else top alternatives */
	int seeded;
	struct eng_seq_params par;       /* template for every sequence (its stop strings owned here) */
	struct sh_prompt *prompts;       /* n_prompts built prompts */
	int n_prompts;
	char **prompt_texts;             /* for echo: the prompts' text (n_prompts), else NULL */
	int add_special;                 /* tokenize: add special tokens */
};

/* Parses and checks body (len bytes) for kind. Returns SH_OK, or SH_ERR with e filled. r is
 * released by eng_api_req_release either way. */
int eng_api_parse(const struct eng_api_ctx *ctx, const char *body, size_t len, enum eng_api_kind kind,
		  struct eng_api_req *r, struct eng_api_err *e);
void eng_api_req_release(struct eng_api_req *r);

/* The max_tokens a sequence of prompt length n_prompt gets: the asked value clamped to the room
 * left (max-model-len and the KV pool), or the room itself when none was asked. */
int eng_api_max_tokens(const struct eng_api_ctx *ctx, const struct eng_api_req *r, int n_prompt);

/* A copy of the request's parameters for one sequence (seed: the request's plus the choice). */
void eng_api_seq_params(const struct eng_api_req *r, int choice, uint64_t random_seed, int max_tokens,
			struct eng_seq_params *out);

/* A JSON string of n bytes of UTF-8 that may hold NUL bytes (a model can produce them; cJSON's
 * strings stop at NUL): an escaped literal added raw. Print it with cJSON_Print*, as any item. */
cJSON *eng_api_jstr(const char *p, size_t n);

/* "stop", "length", ... for a finish reason (NULL while running). */
const char *eng_api_finish_name(int fin);

#endif
