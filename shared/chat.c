/* chat.c: built-in chat-template renderers, FIM prompts, and the proxy's prompt call (chat.h).
 * Each renderer is a transcription of one Jinja template, keeping its quirks (Llama-3 trims
 * content; DeepSeek-V3 gathers every system message up front; Qwen3 moves <think> blocks). */
#include "chat.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prefix.h"

struct sh_chat {
	enum sh_chat_kind kind;
	const struct sh_tok *tok;
	const char *bos, *eos;   /* the template's bos_token / eos_token ("" when absent) */
	int gen_always;          /* llama3: the template appends the assistant header always */
};

static const char *const NAMES[] = {
	[SH_CHAT_DEEPSEEK_V2] = "deepseek_v2",
	[SH_CHAT_DEEPSEEK_V3] = "deepseek_v3",
	[SH_CHAT_LLAMA3] = "llama3",
	[SH_CHAT_CHATML] = "chatml",
	[SH_CHAT_QWEN3] = "qwen3",
};

#define HOW_TO_CHOOSE "name one with the chat_template setting: deepseek_v2, deepseek_v3, llama3, " \
	"chatml or qwen3"

static void s_cat(struct sh_buf *s, const char *z)
{
	sh_buf_add(s, z, strlen(z));
}

int sh_chat_detect(const char *t, enum sh_chat_kind *kind, struct sh_err *err)
{
	if (!t) {
		sh_errf(err, "tokenizer_config.json has no chat_template; " HOW_TO_CHOOSE);
		return SH_DECLINED;
	}
	if (strstr(t, "<\xEF\xBD\x9CUser\xEF\xBD\x9C>") && strstr(t, "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>")) {
		if (strstr(t, "</think>")) {
			sh_errf(err, "chat_template is a DeepSeek-R1-style template (it strips </think>), "
				"which has no built-in renderer; " HOW_TO_CHOOSE);
			return SH_DECLINED;
		}
		*kind = SH_CHAT_DEEPSEEK_V3;
		return SH_OK;
	}
	if (strstr(t, "'User: '") && strstr(t, "'Assistant: '") && strstr(t, "'Assistant:'") &&
	    strstr(t, "eos_token")) {
		*kind = SH_CHAT_DEEPSEEK_V2;
		return SH_OK;
	}
	if (strstr(t, "<|start_header_id|>") && strstr(t, "<|eot_id|>")) {
		if (strstr(t, "Cutting Knowledge") || strstr(t, "tools") || strstr(t, "ipython")) {
			sh_errf(err, "chat_template is a Llama-3.1+ template (tools, dates), which has no "
				"built-in renderer; " HOW_TO_CHOOSE);
			return SH_DECLINED;
		}
		*kind = SH_CHAT_LLAMA3;
		return SH_OK;
	}
	if (strstr(t, "<|im_start|>") && strstr(t, "<|im_end|>")) {
		if (strstr(t, "reasoning_content") && strstr(t, "</think>")) {
			*kind = SH_CHAT_QWEN3;
			return SH_OK;
		}
		if (strstr(t, "You are Qwen") || strstr(t, "tools") || strstr(t, "think")) {
			sh_errf(err, "chat_template is a ChatML variant (default system prompt, tools or "
				"thinking) that has no built-in renderer; " HOW_TO_CHOOSE);
			return SH_DECLINED;
		}
		*kind = SH_CHAT_CHATML;
		return SH_OK;
	}
	sh_errf(err, "chat_template not recognised; " HOW_TO_CHOOSE);
	return SH_DECLINED;
}

struct sh_chat *sh_chat_new(const struct sh_tok *tok, const char *name, struct sh_err *err)
{
	struct sh_chat *c;
	enum sh_chat_kind kind = SH_CHAT_CHATML;
	const char *t = sh_tok_chat_template(tok);

	if (name) {
		size_t i;
		for (i = 0; i < SH_ARRAY_LEN(NAMES); i++)
			if (!strcmp(name, NAMES[i]))
				break;
		if (i == SH_ARRAY_LEN(NAMES)) {
			sh_errf(err, "unknown chat template \"%s\"; " HOW_TO_CHOOSE, name);
			return NULL;
		}
		kind = (enum sh_chat_kind)i;
	} else if (sh_chat_detect(t, &kind, err) != SH_OK) {
		return NULL;
	}
	c = sh_calloc(1, sizeof(*c));
	c->kind = kind;
	c->tok = tok;
	c->bos = sh_tok_bos(tok) ? sh_tok_bos(tok) : "";
	c->eos = sh_tok_eos(tok) ? sh_tok_eos(tok) : "";
	/* Meta's own Llama-3 template checks add_generation_prompt; some copies do not */
	c->gen_always = kind == SH_CHAT_LLAMA3 && t && !strstr(t, "add_generation_prompt");
	return c;
}

void sh_chat_free(struct sh_chat *chat)
{
	free(chat);
}

const char *sh_chat_name(const struct sh_chat *chat)
{
	return NAMES[chat->kind];
}

enum sh_chat_kind sh_chat_kind(const struct sh_chat *chat)
{
	return chat->kind;
}

/* ---- messages ----------------------------------------------------------------------------- */

struct msg {
	const char *role;
	char *content;       /* flattened, owned */
	size_t len;
	const char *reasoning;   /* reasoning_content, or NULL */
	int tool_calls;
};

/* Flattens content: string as is, null -> "", text parts joined with "\n". */
static int flatten(const cJSON *m, struct msg *out, int *approx, size_t idx, struct sh_err *err)
{
	const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
	const cJSON *rc = cJSON_GetObjectItemCaseSensitive(m, "reasoning_content");
	const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
	struct sh_buf s = {0};

	if (!cJSON_IsObject(m))
		return sh_errf(err, "messages[%zu] is not an object", idx);
	if (!cJSON_IsString(role))
		return sh_errf(err, "messages[%zu].role is not a string", idx);
	out->role = role->valuestring;
	out->reasoning = cJSON_IsString(rc) ? rc->valuestring : NULL;
	out->tool_calls = cJSON_IsArray(tc) && cJSON_GetArraySize(tc) > 0;
	if (out->tool_calls)
		*approx = 1;
	if (!c || cJSON_IsNull(c)) {
		sh_buf_add(&s, "", 0);
	} else if (cJSON_IsString(c)) {
		s_cat(&s, c->valuestring);
	} else if (cJSON_IsArray(c)) {
		const cJSON *p;
		int first = 1;
		sh_buf_add(&s, "", 0);
		cJSON_ArrayForEach(p, c) {
			const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
			const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
			if (!cJSON_IsObject(p)) {
				free(s.p);
				return sh_errf(err, "messages[%zu].content[] is not an object", idx);
			}
			if (cJSON_IsString(type) && !strcmp(type->valuestring, "text") && cJSON_IsString(text)) {
				if (!first)
					sh_buf_add(&s, "\n", 1);
				s_cat(&s, text->valuestring);
				first = 0;
			} else {
				*approx = 1;
			}
		}
	} else {
		return sh_errf(err, "messages[%zu].content must be a string, null or a list of parts", idx);
	}
	out->content = s.p;
	out->len = s.n;
	return SH_OK;
}

/* Python's str.isspace(), as Jinja's trim and str.strip() use it. */
static int py_space(const unsigned char *s, size_t n, size_t *len)
{
	uint32_t cp;
	if (s[0] < 0x80) {
		*len = 1;
		return (s[0] >= 9 && s[0] <= 13) || (s[0] >= 0x1C && s[0] <= 0x20);
	}
	if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) {
		*len = 2;
		return 1;
	}
	if (n >= 3 && (s[0] & 0xF0) == 0xE0) {
		cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
		*len = 3;
		return cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
		       cp == 0x202F || cp == 0x205F || cp == 0x3000;
	}
	*len = 1;
	return 0;
}

static void trim_ws(const char *s, size_t n, size_t *a, size_t *z)
{
	size_t l;
	*a = 0;
	*z = n;
	while (*a < *z && py_space((const unsigned char *)s + *a, *z - *a, &l))
		*a += l;
	while (*z > *a) {
		size_t q = *z - 1;
		while (q > *a && ((unsigned char)s[q] & 0xC0) == 0x80)
			q--;
		if (!py_space((const unsigned char *)s + q, *z - q, &l) || q + l != *z)
			break;
		*z = q;
	}
}

/* Strips a character set at the left and/or right (Python's lstrip/rstrip/strip with chars). */
static void strip_chars(const char *s, size_t n, const char *set, int left, int right, size_t *a,
			size_t *z)
{
	*a = 0;
	*z = n;
	while (left && *a < *z && strchr(set, s[*a]) && s[*a])
		(*a)++;
	while (right && *z > *a && strchr(set, s[*z - 1]) && s[*z - 1])
		(*z)--;
}

static int has_str(const char *s, size_t n, const char *needle)
{
	return memmem(s, n, needle, strlen(needle)) != NULL;
}

static void render_deepseek_v2(const struct sh_chat *c, struct msg *m, size_t n, int gen,
			       struct sh_buf *o)
{
	s_cat(o, c->bos);
	for (size_t i = 0; i < n; i++) {
		if (!strcmp(m[i].role, "user")) {
			s_cat(o, "User: ");
			sh_buf_add(o, m[i].content, m[i].len);
			s_cat(o, "\n\n");
		} else if (!strcmp(m[i].role, "assistant")) {
			s_cat(o, "Assistant: ");
			sh_buf_add(o, m[i].content, m[i].len);
			s_cat(o, c->eos);
		} else if (!strcmp(m[i].role, "system")) {
			sh_buf_add(o, m[i].content, m[i].len);
			s_cat(o, "\n\n");
		}
	}
	if (gen)
		s_cat(o, "Assistant:");
}

#define DS3(x) "<\xEF\xBD\x9C" x "\xEF\xBD\x9C>"

static void render_deepseek_v3(const struct sh_chat *c, struct msg *m, size_t n, int gen,
			       struct sh_buf *o)
{
	int is_tool = 0, output_first = 1, first_sp = 1;
	size_t i;

	s_cat(o, c->bos);
	for (i = 0; i < n; i++)
		if (!strcmp(m[i].role, "system")) {
			if (!first_sp)
				s_cat(o, "\n\n");
			sh_buf_add(o, m[i].content, m[i].len);
			first_sp = 0;
		}
	for (i = 0; i < n; i++) {
		if (!strcmp(m[i].role, "user")) {
			is_tool = 0;
			s_cat(o, DS3("User"));
			sh_buf_add(o, m[i].content, m[i].len);
		}
		if (!strcmp(m[i].role, "assistant")) {
			s_cat(o, is_tool ? DS3("tool\xE2\x96\x81outputs\xE2\x96\x81" "end") : DS3("Assistant"));
			sh_buf_add(o, m[i].content, m[i].len);
			s_cat(o, DS3("end\xE2\x96\x81of\xE2\x96\x81sentence"));
			is_tool = 0;
		}
		if (!strcmp(m[i].role, "tool")) {
			is_tool = 1;
			if (output_first) {
				s_cat(o, DS3("tool\xE2\x96\x81outputs\xE2\x96\x81" "begin")
					 DS3("tool\xE2\x96\x81output\xE2\x96\x81" "begin"));
				output_first = 0;
			} else {
				s_cat(o, "\n" DS3("tool\xE2\x96\x81output\xE2\x96\x81" "begin"));
			}
			sh_buf_add(o, m[i].content, m[i].len);
			s_cat(o, DS3("tool\xE2\x96\x81output\xE2\x96\x81" "end"));
		}
	}
	if (is_tool)
		s_cat(o, DS3("tool\xE2\x96\x81outputs\xE2\x96\x81" "end"));
	if (gen && !is_tool)
		s_cat(o, DS3("Assistant"));
}

static void render_llama3(const struct sh_chat *c, struct msg *m, size_t n, int gen, struct sh_buf *o)
{
	for (size_t i = 0; i < n; i++) {
		size_t a, z;
		if (i == 0)
			s_cat(o, c->bos);
		s_cat(o, "<|start_header_id|>");
		s_cat(o, m[i].role);
		s_cat(o, "<|end_header_id|>\n\n");
		trim_ws(m[i].content, m[i].len, &a, &z);
		sh_buf_add(o, m[i].content + a, z - a);
		s_cat(o, "<|eot_id|>");
	}
	if (gen || c->gen_always)
		s_cat(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_chatml(struct msg *m, size_t n, int gen, struct sh_buf *o)
{
	for (size_t i = 0; i < n; i++) {
		s_cat(o, "<|im_start|>");
		s_cat(o, m[i].role);
		s_cat(o, "\n");
		sh_buf_add(o, m[i].content, m[i].len);
		s_cat(o, "<|im_end|>\n");
	}
	if (gen)
		s_cat(o, "<|im_start|>assistant\n");
}

static void render_qwen3(struct msg *m, size_t n, int flags, struct sh_buf *o)
{
	size_t last_query = n ? n - 1 : 0, i;
	int multi_step = 1;

	if (n && !strcmp(m[0].role, "system")) {
		s_cat(o, "<|im_start|>system\n");
		sh_buf_add(o, m[0].content, m[0].len);
		s_cat(o, "<|im_end|>\n");
	}
	for (i = n; i-- > 0;) {
		const char *c = m[i].content;
		size_t l = m[i].len;
		int wrapped = l >= 15 && !memcmp(c, "<tool_response>", 15) && l >= 16 &&
			      !memcmp(c + l - 16, "</tool_response>", 16);
		if (multi_step && !strcmp(m[i].role, "user") && !wrapped) {
			multi_step = 0;
			last_query = i;
		}
	}
	for (i = 0; i < n; i++) {
		const char *role = m[i].role;
		if (!strcmp(role, "user") || (!strcmp(role, "system") && i != 0)) {
			s_cat(o, "<|im_start|>");
			s_cat(o, role);
			s_cat(o, "\n");
			sh_buf_add(o, m[i].content, m[i].len);
			s_cat(o, "<|im_end|>\n");
		} else if (!strcmp(role, "assistant")) {
			const char *content = m[i].content, *rs = "";
			size_t cl = m[i].len, rl = 0, a, z;
			if (m[i].reasoning) {
				rs = m[i].reasoning;
				rl = strlen(rs);
			} else if (has_str(content, cl, "</think>")) {
				/* content.split('</think>')[-1].lstrip('\n') and
				 * content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
				const char *first = memmem(content, cl, "</think>", 8), *last = first, *p;
				while ((p = memmem(last + 8, (size_t)(content + cl - last - 8), "</think>", 8)))
					last = p;
				{
					const char *r = content;
					size_t r_len = (size_t)(first - content);
					strip_chars(r, r_len, "\n", 0, 1, &a, &z);
					r_len = z;
					while ((p = memmem(r, r_len, "<think>", 7))) {
						r_len -= (size_t)(p + 7 - r);
						r = p + 7;
					}
					strip_chars(r, r_len, "\n", 1, 0, &a, &z);
					rs = r + a;
					rl = z - a;
				}
				content = last + 8;
				cl = (size_t)(m[i].content + m[i].len - content);
				strip_chars(content, cl, "\n", 1, 0, &a, &z);
				content += a;
				cl = z - a;
			}
			s_cat(o, "<|im_start|>assistant\n");
			if (i > last_query && (i == n - 1 || rl)) {
				s_cat(o, "<think>\n");
				strip_chars(rs, rl, "\n", 1, 1, &a, &z);
				sh_buf_add(o, rs + a, z - a);
				s_cat(o, "\n</think>\n\n");
				strip_chars(content, cl, "\n", 1, 0, &a, &z);
				sh_buf_add(o, content + a, z - a);
			} else {
				sh_buf_add(o, content, cl);
			}
			s_cat(o, "<|im_end|>\n");
		} else if (!strcmp(role, "tool")) {
			if (i == 0 || strcmp(m[i - 1].role, "tool"))
				s_cat(o, "<|im_start|>user");
			s_cat(o, "\n<tool_response>\n");
			sh_buf_add(o, m[i].content, m[i].len);
			s_cat(o, "\n</tool_response>");
			if (i == n - 1 || strcmp(m[i + 1].role, "tool"))
				s_cat(o, "<|im_end|>\n");
		}
	}
	if (flags & SH_CHAT_GEN_PROMPT) {
		s_cat(o, "<|im_start|>assistant\n");
		if (flags & SH_CHAT_NO_THINKING)
			s_cat(o, "<think>\n\n</think>\n\n");
	}
}

char *sh_chat_render(const struct sh_chat *chat, const cJSON *messages, int flags, size_t *len,
		     int *approx, struct sh_err *err)
{
	size_t n, i = 0;
	struct msg *m;
	const cJSON *e;
	struct sh_buf o = {0};
	int ap = 0, gen = !!(flags & SH_CHAT_GEN_PROMPT);

	if (!cJSON_IsArray(messages)) {
		sh_errf(err, "messages must be an array");
		return NULL;
	}
	n = (size_t)cJSON_GetArraySize(messages);
	m = sh_calloc(n + 1, sizeof(*m));
	cJSON_ArrayForEach(e, messages) {
		if (flatten(e, &m[i], &ap, i, err)) {
			for (size_t k = 0; k < i; k++)
				free(m[k].content);
			free(m);
			return NULL;
		}
		i++;
	}
	sh_buf_add(&o, "", 0);
	switch (chat->kind) {
	case SH_CHAT_DEEPSEEK_V2: render_deepseek_v2(chat, m, n, gen, &o); break;
	case SH_CHAT_DEEPSEEK_V3: render_deepseek_v3(chat, m, n, gen, &o); break;
	case SH_CHAT_LLAMA3: render_llama3(chat, m, n, gen, &o); break;
	case SH_CHAT_CHATML: render_chatml(m, n, gen, &o); break;
	case SH_CHAT_QWEN3: render_qwen3(m, n, flags, &o); break;
	}
	for (i = 0; i < n; i++)
		free(m[i].content);
	free(m);
	if (approx)
		*approx = ap;
	if (len)
		*len = o.n;
	return o.p;
}

char *sh_chat_fim(const struct sh_tok *tok, const char *prefix, size_t plen, const char *suffix,
		  size_t slen, size_t *len, struct sh_err *err)
{
	static const char *const forms[][3] = {
		{DS3("fim\xE2\x96\x81" "begin"), DS3("fim\xE2\x96\x81hole"), DS3("fim\xE2\x96\x81" "end")},
		{"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"},
	};
	for (size_t f = 0; f < SH_ARRAY_LEN(forms); f++) {
		struct sh_buf o = {0};
		if (sh_tok_token_id(tok, forms[f][0]) < 0 || sh_tok_token_id(tok, forms[f][1]) < 0 ||
		    sh_tok_token_id(tok, forms[f][2]) < 0)
			continue;
		s_cat(&o, forms[f][0]);
		sh_buf_add(&o, prefix, plen);
		s_cat(&o, forms[f][1]);
		sh_buf_add(&o, suffix, slen);
		s_cat(&o, forms[f][2]);
		*len = o.n;
		return o.p;
	}
	sh_errf(err, "this model has no fill-in-the-middle tokens (suffix is not supported)");
	return NULL;
}

/* ---- the proxy's call --------------------------------------------------------------------- */

void sh_prompt_init(struct sh_prompt *p)
{
	memset(p, 0, sizeof(*p));
}

void sh_prompt_release(struct sh_prompt *p)
{
	sh_tok_ids_release(&p->ids);
	free(p->hashes);
	memset(p, 0, sizeof(*p));
}

static int is_id_list(const cJSON *a)
{
	const cJSON *e;
	if (!cJSON_IsArray(a) || !cJSON_GetArraySize(a))
		return 0;
	cJSON_ArrayForEach(e, a)
		if (!cJSON_IsNumber(e))
			return 0;
	return 1;
}

static int prompt_ids(struct sh_tok *tok, const cJSON *a, struct sh_tok_ids *out,
		      struct sh_err *err)
{
	const cJSON *e;
	size_t v = sh_tok_vocab_size(tok);
	cJSON_ArrayForEach(e, a) {
		double d = e->valuedouble;
		if (d != floor(d))
			return sh_errf(err, "prompt token id %g is not an integer", d), SH_PARSE;
		if (d < 0 || d >= (double)v)
			return sh_errf(err, "prompt token id %.0f is out of range", d), SH_PARSE;
		sh_tok_ids_push(out, (int32_t)d);
	}
	return SH_OK;
}

cJSON *sh_prompt_one(const cJSON *body, const cJSON *el)
{
	cJSON *one = cJSON_CreateObject();
	const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(body, "suffix");

	cJSON_AddItemReferenceToObject(one, "prompt", (cJSON *)el);
	if (suffix)
		cJSON_AddItemReferenceToObject(one, "suffix", (cJSON *)suffix);
	return one;
}

static const cJSON *field(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	return v && !cJSON_IsNull(v) ? v : NULL;
}

static cJSON *add_msg(cJSON *msgs, const char *role, const char *text)
{
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "role", role);
	cJSON_AddStringToObject(m, "content", text);
	cJSON_AddItemToArray(msgs, m);
	return m;
}

/* A Responses API body's instructions and input as chat messages: instructions -> system; input a
 * string -> one user message, or items: messages (developer -> system; content a string or parts
 * joined with newlines), function calls as assistant text "[call name(arguments)]", their outputs
 * as user text; other items (reasoning) carry nothing rendered. NULL with err (and *param) when
 * the body is not one. */
static cJSON *responses_messages(const cJSON *body, const char **param, struct sh_err *err)
{
	cJSON *msgs = cJSON_CreateArray();
	const cJSON *ins = field(body, "instructions"), *in = field(body, "input"), *it;
	struct sh_buf t = {0};

	*param = "input";
	if (ins && !cJSON_IsString(ins)) {
		*param = "instructions";
		sh_errf(err, "'instructions' must be a string");
		goto bad;
	}
	if (ins)
		add_msg(msgs, "system", ins->valuestring);
	if (!in) {
		sh_errf(err, "'input' is required");
		goto bad;
	}
	if (cJSON_IsString(in)) {
		add_msg(msgs, "user", in->valuestring);
		return msgs;
	}
	if (!cJSON_IsArray(in)) {
		sh_errf(err, "'input' must be a string or a list of items");
		goto bad;
	}
	cJSON_ArrayForEach(it, in) {
		const cJSON *type = field(it, "type"), *role = field(it, "role"), *content = field(it, "content");
		const char *ty = cJSON_IsString(type) ? type->valuestring : "message";
		const char *ro = cJSON_IsString(role) ? role->valuestring : "user";
		if (!cJSON_IsObject(it)) {
			sh_errf(err, "'input' items must be objects");
			goto bad;
		}
		t.n = 0;
		sh_buf_add(&t, "", 0);
		if (!strcmp(ty, "message")) {
			if (!strcmp(ro, "developer"))
				ro = "system";
			if (cJSON_IsString(content)) {
				s_cat(&t, content->valuestring);
			} else if (cJSON_IsArray(content)) {
				const cJSON *part;
				cJSON_ArrayForEach(part, content) {
					const cJSON *x = field(part, "text");
					if (!cJSON_IsString(x))
						continue;
					if (t.n)
						sh_buf_add(&t, "\n", 1);
					s_cat(&t, x->valuestring);
				}
			}
		} else if (!strcmp(ty, "function_call")) {
			const cJSON *n = field(it, "name"), *a = field(it, "arguments");
			s_cat(&t, "[call ");
			s_cat(&t, cJSON_IsString(n) ? n->valuestring : "");
			s_cat(&t, "(");
			s_cat(&t, cJSON_IsString(a) ? a->valuestring : "");
			s_cat(&t, ")]");
			ro = "assistant";
		} else if (!strcmp(ty, "function_call_output")) {
			const cJSON *o = field(it, "output");
			s_cat(&t, cJSON_IsString(o) ? o->valuestring : "");
			ro = "user";
		} else {
			continue;  /* reasoning and other item types carry nothing rendered */
		}
		sh_buf_add(&t, "", 1);  /* the NUL */
		add_msg(msgs, ro, t.p);
	}
	free(t.p);
	return msgs;
bad:
	free(t.p);
	cJSON_Delete(msgs);
	return NULL;
}

int sh_prompt_build(struct sh_tok *tok, const struct sh_chat *chat, const cJSON *body,
		    enum sh_prompt_kind kind, const char *model, size_t block, struct sh_prompt *out,
		    struct sh_err *err)
{
	const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
	const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(body, "prompt");
	int rc;

	if (!cJSON_IsObject(body))
		return sh_errf(err, "the request body is not a JSON object"), SH_PARSE;
	if (kind == SH_PROMPT_RESPONSES) {
		cJSON *msgs = responses_messages(body, &out->param, err), *chat_body;
		if (!msgs)
			return SH_PARSE;
		chat_body = cJSON_CreateObject();
		cJSON_AddItemToObject(chat_body, "messages", msgs);
		rc = sh_prompt_build(tok, chat, chat_body, SH_PROMPT_CHAT, model, block, out, err);
		cJSON_Delete(chat_body);
		if (rc != SH_OK)
			out->param = "input";
		return rc;
	}
	if (kind == SH_PROMPT_COMPLETIONS)
		msgs = NULL;
	else if (kind == SH_PROMPT_CHAT)
		prompt = NULL;
	out->param = msgs ? "messages" : "prompt";
	if (msgs) {
		const cJSON *agp = cJSON_GetObjectItemCaseSensitive(body, "add_generation_prompt");
		const cJSON *kw = cJSON_GetObjectItemCaseSensitive(body, "chat_template_kwargs");
		const cJSON *think = cJSON_GetObjectItemCaseSensitive(kw, "enable_thinking");
		int flags = 0;
		size_t len;
		char *text;
		if (!chat)
			return sh_errf(err, "chat completions are not served for this model"), SH_DECLINED;
		if (!cJSON_IsArray(msgs) || !cJSON_GetArraySize(msgs))
			return sh_errf(err, "messages must be a non-empty array"), SH_PARSE;
		if (!agp || cJSON_IsTrue(agp))
			flags |= SH_CHAT_GEN_PROMPT;
		if (cJSON_IsFalse(think))
			flags |= SH_CHAT_NO_THINKING;
		text = sh_chat_render(chat, msgs, flags, &len, &out->approx, err);
		if (!text)
			return SH_PARSE;
		if (cJSON_GetObjectItemCaseSensitive(body, "tools"))
			out->approx = 1;
		out->chat = 1;
		rc = sh_tok_encode(tok, text, len, 0, &out->ids, err);
		free(text);
		if (rc != SH_OK)
			return rc;
	} else if (prompt) {
		const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(body, "suffix");
		const cJSON *p = prompt;
		if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && !is_id_list(p))
			p = cJSON_GetArrayItem(p, 0);   /* ["text"] or [[ids]] */
		if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 1 && !is_id_list(p))
			return sh_errf(err, "batched prompts (%d) are not supported", cJSON_GetArraySize(p)),
			       SH_DECLINED;
		if (suffix && !cJSON_IsNull(suffix) && !cJSON_IsString(suffix))
			return out->param = "suffix", sh_errf(err, "suffix must be a string"), SH_PARSE;
		if (is_id_list(p)) {
			if (cJSON_IsString(suffix) && *suffix->valuestring)
				return out->param = "suffix", sh_errf(err, "suffix needs a text prompt"), SH_PARSE;
			if ((rc = prompt_ids(tok, p, &out->ids, err)) != SH_OK)
				return rc;
		} else if (cJSON_IsString(p)) {
			if (cJSON_IsString(suffix)) {
				size_t len;
				char *text = sh_chat_fim(tok, p->valuestring, strlen(p->valuestring),
							 suffix->valuestring, strlen(suffix->valuestring),
							 &len, err);
				if (!text)
					return out->param = "suffix", SH_DECLINED;
				rc = sh_tok_encode(tok, text, len, SH_TOK_ADD_SPECIAL, &out->ids, err);
				free(text);
			} else {
				rc = sh_tok_encode(tok, p->valuestring, strlen(p->valuestring),
						   SH_TOK_ADD_SPECIAL, &out->ids, err);
			}
			if (rc != SH_OK)
				return rc;
		} else {
			return sh_errf(err, "prompt must be a string, a list of strings or token ids"),
			       SH_PARSE;
		}
	} else if (kind == SH_PROMPT_CHAT) {
		return sh_errf(err, "'messages' is required"), SH_PARSE;
	} else if (kind == SH_PROMPT_COMPLETIONS) {
		return sh_errf(err, "'prompt' is required"), SH_PARSE;
	} else {
		return sh_errf(err, "the request has neither messages nor prompt"), SH_PARSE;
	}
	if (block) {
		out->hashes = sh_malloc((out->ids.n / block + 1) * sizeof(uint64_t));
		out->nhashes = sh_prefix_hashes(sh_prefix_seed(model ? model : "", model ? strlen(model) : 0),
						out->ids.ids, out->ids.n, block, out->hashes);
	}
	return SH_OK;
}
