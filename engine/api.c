/* api.c: see api.h. */
#include "api.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefix.h"

static int fail(struct eng_api_err *e, int status, const char *param, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static int fail(struct eng_api_err *e, int status, const char *param, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	e->status = status;
	e->param = param;
	e->code = code;
	return SH_ERR;
}

static const cJSON *field(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	return v && !cJSON_IsNull(v) ? v : NULL;
}

/* A number field within [lo, hi]; absent or null leaves *out. */
static int get_num(const cJSON *o, const char *name, double lo, double hi, double *out, struct eng_api_err *e)
{
	const cJSON *v = field(o, name);
	if (!v)
		return SH_OK;
	if (!cJSON_IsNumber(v))
		return fail(e, 400, name, NULL, "'%s' must be a number", name);
	if (!(v->valuedouble >= lo && v->valuedouble <= hi))
		return fail(e, 400, name, NULL, "'%s' must be between %g and %g, got %g", name, lo, hi, v->valuedouble);
	*out = v->valuedouble;
	return SH_OK;
}

static int get_int(const cJSON *o, const char *name, double lo, double hi, int64_t *out, struct eng_api_err *e)
{
	const cJSON *v = field(o, name);
	if (!v)
		return SH_OK;
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
		return fail(e, 400, name, NULL, "'%s' must be an integer", name);
	if (!(v->valuedouble >= lo && v->valuedouble <= hi))
		return fail(e, 400, name, NULL, "'%s' must be between %.0f and %.0f, got %.0f", name, lo, hi, v->valuedouble);
	*out = (int64_t)v->valuedouble;
	return SH_OK;
}

static int get_bool(const cJSON *o, const char *name, int *out, struct eng_api_err *e)
{
	const cJSON *v = field(o, name);
	if (!v)
		return SH_OK;
	if (!cJSON_IsBool(v))
		return fail(e, 400, name, NULL, "'%s' must be a boolean", name);
	*out = cJSON_IsTrue(v);
	return SH_OK;
}

static int parse_stop(const cJSON *body, struct eng_seq_params *p, struct eng_api_err *e)
{
	const cJSON *v = field(body, "stop");
	if (v) {
		int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
		if (n < 0)
			return fail(e, 400, "stop", NULL, "'stop' must be a string or a list of strings");
		if (n > ENG_MAX_STOP)
			return fail(e, 400, "stop", NULL, "at most %d stop strings", ENG_MAX_STOP);
		p->stop = sh_calloc((size_t)(n ? n : 1), sizeof(char *));
		for (int i = 0; i < n; i++) {
			const cJSON *s = cJSON_IsString(v) ? v : cJSON_GetArrayItem(v, i);
			if (!cJSON_IsString(s))
				return fail(e, 400, "stop", NULL, "'stop' must be a string or a list of strings");
			if (strlen(s->valuestring) > ENG_MAX_STOP_LEN)
				return fail(e, 400, "stop", NULL, "a stop string is over %d bytes", ENG_MAX_STOP_LEN);
			if (!*s->valuestring)
				continue;
			p->stop[p->n_stop++] = sh_strdup(s->valuestring);
		}
	}
	v = field(body, "stop_token_ids");
	if (v) {
		int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
		if (n < 0 || n > ENG_MAX_STOP_IDS)
			return fail(e, 400, "stop_token_ids", NULL, "'stop_token_ids' must be a list of at most %d token ids",
				    ENG_MAX_STOP_IDS);
		p->stop_ids = sh_calloc((size_t)(n ? n : 1), sizeof(int32_t));
		for (int i = 0; i < n; i++) {
			const cJSON *s = cJSON_GetArrayItem(v, i);
			if (!cJSON_IsNumber(s) || s->valuedouble < 0 || s->valuedouble > INT32_MAX ||
			    s->valuedouble != floor(s->valuedouble))
				return fail(e, 400, "stop_token_ids", NULL, "'stop_token_ids' must be a list of token ids");
			p->stop_ids[p->n_stop_ids++] = (int32_t)s->valuedouble;
		}
	}
	return SH_OK;
}

/* logit_bias: {"token id": bias in [-100, 100], ...} (OpenAI's keys are strings) */
static int parse_bias(const cJSON *body, size_t vocab, struct eng_sampling *s, struct eng_api_err *e)
{
	const cJSON *v = field(body, "logit_bias"), *it;
	if (!v)
		return SH_OK;
	int n = cJSON_IsObject(v) ? cJSON_GetArraySize(v) : -1;
	if (n < 0 || n > ENG_MAX_BIAS)
		return fail(e, 400, "logit_bias", NULL, "'logit_bias' must be an object of at most %d token ids to biases",
			    ENG_MAX_BIAS);
	s->bias_ids = sh_malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
	s->bias = sh_malloc(sizeof(float) * (size_t)(n ? n : 1));
	cJSON_ArrayForEach(it, v) {
		char *end;
		errno = 0;
		long id = strtol(it->string, &end, 10);
		if (end == it->string || *end || errno || id < 0 || (size_t)id >= vocab)
			return fail(e, 400, "logit_bias", NULL, "logit_bias: '%.40s' is not a token id of this model (0..%zu)",
				    it->string, vocab - 1);
		if (!cJSON_IsNumber(it) || !(it->valuedouble >= -100 && it->valuedouble <= 100))
			return fail(e, 400, "logit_bias", NULL, "logit_bias: the bias of %ld must be a number in [-100, 100]", id);
		s->bias_ids[s->n_bias] = (int32_t)id;
		s->bias[s->n_bias++] = (float)it->valuedouble;
	}
	return SH_OK;
}

static int parse_sampling(const struct eng_api_ctx *ctx, const cJSON *body, struct eng_api_req *r,
			  struct eng_api_err *e)
{
	struct eng_seq_params *p = &r->par;
	struct eng_sampling *s = &p->smp;
	double d;
	int64_t i;

	if (ctx->defaults)
		*s = *ctx->defaults;
	else
		eng_sampling_defaults(s);
	p->skip_special = 1;
	p->logprobs = -1;
	d = s->temperature;
	if (get_num(body, "temperature", 0, 100, &d, e))
		return SH_ERR;
	s->temperature = (float)d;
	d = s->top_p;
	if (get_num(body, "top_p", 0, 1, &d, e))
		return SH_ERR;
	if (d <= 0)
		return fail(e, 400, "top_p", NULL, "'top_p' must be in (0, 1], got 0");
	s->top_p = (float)d;
	i = s->top_k;
	if (get_int(body, "top_k", -1, 1 << 30, &i, e))
		return SH_ERR;
	s->top_k = (int)i;
	d = s->min_p;
	if (get_num(body, "min_p", 0, 1, &d, e))
		return SH_ERR;
	s->min_p = (float)d;
	d = 0;
	if (get_num(body, "presence_penalty", -2, 2, &d, e))
		return SH_ERR;
	s->presence_penalty = (float)d;
	d = 0;
	if (get_num(body, "frequency_penalty", -2, 2, &d, e))
		return SH_ERR;
	s->frequency_penalty = (float)d;
	d = s->repetition_penalty;
	if (get_num(body, "repetition_penalty", 1e-6, 100, &d, e))
		return SH_ERR;
	s->repetition_penalty = (float)d;
	const cJSON *seed = field(body, "seed");
	if (seed) {
		/* the bounds before the cast: a double past int64's range cast to it is undefined */
		if (!cJSON_IsNumber(seed) || seed->valuedouble != floor(seed->valuedouble) ||
		    !(fabs(seed->valuedouble) <= 9.2e18))
			return fail(e, 400, "seed", NULL, "'seed' must be an integer within 64 bits");
		p->seed = (uint64_t)(int64_t)seed->valuedouble;
		r->seeded = 1;
	}
	if (get_bool(body, "ignore_eos", &p->ignore_eos, e) || get_bool(body, "skip_special_tokens", &p->skip_special, e))
		return SH_ERR;
	/* max tokens: max_completion_tokens wins over max_tokens (chat); responses: max_output_tokens */
	int64_t mt = -1;
	const char *names[] = {"max_tokens", "max_completion_tokens", "max_output_tokens"};
	for (size_t k = 0; k < SH_ARRAY_LEN(names); k++) {
		const cJSON *v = field(body, names[k]);
		if (!v)
			continue;
		if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
			return fail(e, 400, names[k], NULL, "'%s' must be an integer", names[k]);
		if (v->valuedouble < 1)
			return fail(e, 400, names[k], NULL, "'%s' must be at least 1, got %.0f", names[k], v->valuedouble);
		mt = v->valuedouble > 1e9 ? 1000000000 : (int64_t)v->valuedouble;
	}
	if (mt < 0 && ctx->default_max_tokens > 0)
		mt = ctx->default_max_tokens;
	r->max_tokens = (int)mt;
	i = 1;
	if (get_int(body, "n", 1, ENG_API_MAX_N, &i, e))
		return SH_ERR;
	r->n = (int)i;
	i = r->n;
	if (get_int(body, "best_of", 1, ENG_API_MAX_N, &i, e))
		return SH_ERR;
	if (i != r->n)
		return fail(e, 400, "best_of", NULL, i < r->n ? "'best_of' must be at least n (%d)" :
			    "'best_of' above n is not supported (n is %d)", r->n);
	if (parse_stop(body, p, e))
		return SH_ERR;
	/* logprobs: an integer for completions, a boolean (+ top_logprobs) for chat */
	const cJSON *lp = field(body, "logprobs");
	if (r->kind == ENG_API_CHAT) {
		int on = 0;
		int64_t top = 0;
		if (get_bool(body, "logprobs", &on, e) || get_int(body, "top_logprobs", 0, ENG_MAX_TOP_LOGPROBS, &top, e))
			return SH_ERR;
		if (field(body, "top_logprobs") && !on)
			return fail(e, 400, "top_logprobs", NULL, "'top_logprobs' needs 'logprobs': true");
		p->logprobs = on ? (int)top : -1;
	} else if (lp && r->kind == ENG_API_COMPLETIONS) {
		int64_t k = 0;
		if (get_int(body, "logprobs", 0, ENG_MAX_TOP_LOGPROBS, &k, e))
			return SH_ERR;
		p->logprobs = (int)k;
	}
	r->logprobs = p->logprobs;
	if (get_bool(body, "stream", &r->stream, e) || get_bool(body, "echo", &r->echo, e))
		return SH_ERR;
	const cJSON *so = field(body, "stream_options");
	if (so) {
		if (!cJSON_IsObject(so))
			return fail(e, 400, "stream_options", NULL, "'stream_options' must be an object");
		if (get_bool(so, "include_usage", &r->include_usage, e))
			return SH_ERR;
	}
	return SH_OK;
}

static int build_one(const struct eng_api_ctx *ctx, const cJSON *body, enum sh_prompt_kind kind, struct sh_prompt *p,
		     const char *param, struct eng_api_err *e)
{
	struct sh_err err = {{0}};
	sh_prompt_init(p);
	int rc = sh_prompt_build(ctx->tok, ctx->chat, body, kind, ctx->model, (size_t)ctx->block_size, p, &err);
	if (rc != SH_OK && p->param && strcmp(p->param, "prompt") && strcmp(p->param, "messages"))
		param = p->param; /* suffix, instructions */
	if (rc == SH_TOOBIG)
		return fail(e, 413, param, NULL, "%s", err.msg);
	if (rc != SH_OK)
		return fail(e, 400, param, NULL, "%s", err.msg);
	for (size_t i = 0; i < p->ids.n; i++)
		if (p->ids.ids[i] < 0 || (size_t)p->ids.ids[i] >= sh_tok_vocab_size(ctx->tok))
			return fail(e, 400, param, NULL, "token id %d is out of the vocabulary (%zu)", p->ids.ids[i],
				    sh_tok_vocab_size(ctx->tok));
	return SH_OK;
}

static void add_prompt(struct eng_api_req *r, int *cap)
{
	if (r->n_prompts == *cap) {
		*cap = *cap ? *cap * 2 : 4;
		r->prompts = sh_realloc(r->prompts, sizeof(*r->prompts) * (size_t)*cap);
		r->prompt_texts = sh_realloc(r->prompt_texts, sizeof(char *) * (size_t)*cap);
	}
	r->prompt_texts[r->n_prompts] = NULL;
	r->n_prompts++;
}

/* /v1/completions: prompt as a string, a list of strings, a list of ids or a list of such lists;
 * each element is one prompt (choices prompt_index * n + i). */
static int build_completions(const struct eng_api_ctx *ctx, struct eng_api_req *r, struct eng_api_err *e)
{
	const cJSON *pr = field(r->body, "prompt");
	int cap = 0;
	if (!pr)
		return fail(e, 400, "prompt", NULL, "'prompt' is required");
	int list_of_many = cJSON_IsArray(pr) && cJSON_GetArraySize(pr) > 0 &&
			   (cJSON_IsString(cJSON_GetArrayItem(pr, 0)) || cJSON_IsArray(cJSON_GetArrayItem(pr, 0)));
	int n = list_of_many ? cJSON_GetArraySize(pr) : 1;
	if (!cJSON_IsString(pr) && !cJSON_IsArray(pr))
		return fail(e, 400, "prompt", NULL, "'prompt' must be a string, a list of strings or a list of token ids");
	if (n > ENG_API_MAX_PROMPTS)
		return fail(e, 400, "prompt", NULL, "at most %d prompts per request", ENG_API_MAX_PROMPTS);
	for (int i = 0; i < n; i++) {
		const cJSON *el = list_of_many ? cJSON_GetArrayItem(pr, i) : pr;
		if (list_of_many && !cJSON_IsString(el) && !cJSON_IsArray(el))
			return fail(e, 400, "prompt", NULL, "'prompt' must be a string, a list of strings or a list of token ids");
		cJSON *one = sh_prompt_one(r->body, el); /* the prompt and suffix: all it reads */
		add_prompt(r, &cap);
		int rc = build_one(ctx, one, SH_PROMPT_COMPLETIONS, &r->prompts[r->n_prompts - 1], "prompt", e);
		cJSON_Delete(one);
		if (rc)
			return rc;
		if (r->echo)
			r->prompt_texts[r->n_prompts - 1] =
				cJSON_IsString(el) ? sh_strdup(el->valuestring)
						   : sh_tok_decode(ctx->tok, r->prompts[r->n_prompts - 1].ids.ids,
								   r->prompts[r->n_prompts - 1].ids.n, 0, NULL, NULL);
	}
	return SH_OK;
}

static int check_fits(const struct eng_api_ctx *ctx, const struct eng_api_req *r, const char *param,
		      struct eng_api_err *e)
{
	for (int i = 0; i < r->n_prompts; i++) {
		int n = (int)r->prompts[i].ids.n;
		if (n == 0)
			return fail(e, 400, param, NULL, "the prompt is empty (no tokens)");
		if (n >= ctx->max_model_len)
			return fail(e, 400, param, "context_length_exceeded",
				    "This model's maximum context length is %d tokens. However, your request has %d input "
				    "tokens, which leaves no room for output. Please reduce the length of the input.",
				    ctx->max_model_len, n);
	}
	return SH_OK;
}

/* Whether a JSON text (valid: cJSON parsed it) has a \u0000 escape in a string: cJSON's strings end
 * at the first NUL, so such a prompt would be cut short without a word. */
static int has_nul_escape(const char *p, size_t n)
{
	int in_str = 0;
	for (size_t i = 0; i < n; i++) {
		if (!in_str) {
			in_str = p[i] == '"';
		} else if (p[i] == '"') {
			in_str = 0;
		} else if (p[i] == '\\' && i + 1 < n) {
			if (p[i + 1] == 'u' && i + 5 < n && !memcmp(p + i + 2, "0000", 4))
				return 1;
			i++; /* the escaped character */
		}
	}
	return 0;
}

int eng_api_parse(const struct eng_api_ctx *ctx, const char *body, size_t len, enum eng_api_kind kind,
		  struct eng_api_req *r, struct eng_api_err *e)
{
	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->max_tokens = -1;
	r->logprobs = -1;
	r->par.logprobs = -1;
	r->n = 1;
	r->body = cJSON_ParseWithLength(body, len);
	if (!r->body)
		return fail(e, 400, NULL, NULL, "the body is not valid JSON");
	if (!cJSON_IsObject(r->body))
		return fail(e, 400, NULL, NULL, "the body must be a JSON object");
	if (has_nul_escape(body, len))
		return fail(e, 400, NULL, NULL, "strings with a NUL character (\\u0000) are not supported");
	const cJSON *model = field(r->body, "model");
	if (model && !cJSON_IsString(model))
		return fail(e, 400, "model", NULL, "'model' must be a string");
	if (model && *model->valuestring && strcmp(model->valuestring, ctx->model))
		return fail(e, 404, "model", "model_not_found", "The model `%s` does not exist.", model->valuestring);

	if (kind == ENG_API_TOKENIZE) {
		int cap = 0;
		r->add_special = 1;
		if (get_bool(r->body, "add_special_tokens", &r->add_special, e))
			return SH_ERR;
		const char *param = field(r->body, "messages") ? "messages" : "prompt";
		if (!field(r->body, param))
			return fail(e, 400, "prompt", NULL, "'prompt' or 'messages' is required");
		add_prompt(r, &cap);
		return build_one(ctx, r->body, SH_PROMPT_ANY, &r->prompts[0], param, e);
	}
	if (parse_sampling(ctx, r->body, r, e) || parse_bias(r->body, sh_tok_vocab_size(ctx->tok), &r->par.smp, e))
		return SH_ERR;
	if (kind == ENG_API_COMPLETIONS) {
		if (build_completions(ctx, r, e))
			return SH_ERR;
		return check_fits(ctx, r, "prompt", e);
	}
	int cap = 0;
	if (kind == ENG_API_RESPONSES) {
		add_prompt(r, &cap);
		if (build_one(ctx, r->body, SH_PROMPT_RESPONSES, &r->prompts[0], "input", e))
			return SH_ERR;
		r->n = 1;
		return check_fits(ctx, r, "input", e);
	}
	const cJSON *msgs = field(r->body, "messages");
	if (!cJSON_IsArray(msgs))
		return fail(e, 400, "messages", NULL, "'messages' must be a list of messages");
	if (!ctx->chat)
		return fail(e, 400, "messages", NULL, "this model has no chat template; use /v1/completions");
	add_prompt(r, &cap);
	if (build_one(ctx, r->body, SH_PROMPT_CHAT, &r->prompts[0], "messages", e))
		return SH_ERR;
	return check_fits(ctx, r, "messages", e);
}

void eng_api_req_release(struct eng_api_req *r)
{
	cJSON_Delete(r->body);
	for (int i = 0; i < r->n_prompts; i++) {
		sh_prompt_release(&r->prompts[i]);
		free(r->prompt_texts[i]);
	}
	free(r->prompts);
	free(r->prompt_texts);
	eng_seq_params_release(&r->par);
	memset(r, 0, sizeof(*r));
}

int eng_api_max_tokens(const struct eng_api_ctx *ctx, const struct eng_api_req *r, int n_prompt)
{
	int room = SH_MIN(ctx->max_model_len, ctx->capacity) - n_prompt;
	if (room < 1)
		room = 1;
	return r->max_tokens > 0 && r->max_tokens < room ? r->max_tokens : room;
}

void eng_api_seq_params(const struct eng_api_req *r, int choice, uint64_t random_seed, int max_tokens,
			struct eng_seq_params *out)
{
	*out = r->par;
	out->stop = NULL;
	out->stop_ids = NULL;
	if (r->par.n_stop) {
		out->stop = sh_calloc((size_t)r->par.n_stop, sizeof(char *));
		for (int i = 0; i < r->par.n_stop; i++)
			out->stop[i] = sh_strdup(r->par.stop[i]);
	}
	if (r->par.n_stop_ids) {
		out->stop_ids = sh_malloc(sizeof(int32_t) * (size_t)r->par.n_stop_ids);
		memcpy(out->stop_ids, r->par.stop_ids, sizeof(int32_t) * (size_t)r->par.n_stop_ids);
	}
	out->smp.bias_ids = NULL;
	out->smp.bias = NULL;
	if (r->par.smp.n_bias) {
		size_t nb = (size_t)r->par.smp.n_bias;
		out->smp.bias_ids = sh_malloc(sizeof(int32_t) * nb);
		out->smp.bias = sh_malloc(sizeof(float) * nb);
		memcpy(out->smp.bias_ids, r->par.smp.bias_ids, sizeof(int32_t) * nb);
		memcpy(out->smp.bias, r->par.smp.bias, sizeof(float) * nb);
	}
	out->seed = r->seeded ? r->par.seed + (uint64_t)choice : random_seed;
	out->max_tokens = max_tokens;
}

const char *eng_api_finish_name(int fin)
{
	switch (fin) {
	case ENG_FIN_STOP: return "stop";
	case ENG_FIN_LENGTH: return "length";
	case ENG_FIN_ABORT: return "abort";
	case ENG_FIN_ERROR: return "error";
	default: return NULL;
	}
}

/* A JSON string of n bytes of UTF-8 that may hold NUL bytes (a model can produce them): cJSON's
 * strings stop at NUL, so the literal is escaped here and added raw. */
cJSON *eng_api_jstr(const char *p, size_t n)
{
	char *o = sh_malloc(n * 6 + 3), *q = o;
	*q++ = '"';
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)p[i];
		if (ch == '"' || ch == '\\') {
			*q++ = '\\';
			*q++ = (char)ch;
		} else if (ch == '\n') {
			*q++ = '\\';
			*q++ = 'n';
		} else if (ch < 0x20 || ch == 0x7f) {
			q += sprintf(q, "\\u%04x", ch);
		} else {
			*q++ = (char)ch;
		}
	}
	*q++ = '"';
	*q = 0;
	cJSON *r = cJSON_CreateRaw(o);
	free(o);
	return r;
}

int eng_api_generation_config(const char *path, int must_exist, struct eng_sampling *s, int *max_new, char *desc,
			      size_t dlen, struct sh_err *err)
{
	static const struct {
		const char *key;
		double lo, hi;
	} keys[] = {{"temperature", 0, 100}, {"top_p", 1e-9, 1}, {"top_k", -1, 1 << 30}, {"min_p", 0, 1},
		    {"repetition_penalty", 1e-6, 100}, {"max_new_tokens", 1, 1 << 30}};
	size_t len, o = 0;
	char *text = sh_read_file(path, 1u << 20, &len, err);

	eng_sampling_defaults(s);
	*max_new = 0;
	if (desc && dlen)
		desc[0] = 0;
	if (!text)
		return must_exist ? SH_ERR : 0;
	cJSON *root = cJSON_ParseWithLength(text, len);
	free(text);
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return sh_errf(err, "%s: not a JSON object", path);
	}
	for (size_t k = 0; k < SH_ARRAY_LEN(keys); k++) {
		const cJSON *v = field(root, keys[k].key);
		if (!v)
			continue;
		if (!cJSON_IsNumber(v) || !(v->valuedouble >= keys[k].lo && v->valuedouble <= keys[k].hi) ||
		    (k == 2 || k == 5 ? v->valuedouble != floor(v->valuedouble) : 0)) {
			sh_errf(err, "%s: %s must be a number in [%g, %g]", path, keys[k].key, keys[k].lo, keys[k].hi);
			cJSON_Delete(root);
			return SH_ERR;
		}
		double x = v->valuedouble;
		switch (k) {
		case 0: s->temperature = (float)x; break;
		case 1: s->top_p = (float)x; break;
		case 2: s->top_k = (int)x; break;
		case 3: s->min_p = (float)x; break;
		case 4: s->repetition_penalty = (float)x; break;
		default: *max_new = (int)x; break;
		}
		if (desc && o < dlen)
			o += (size_t)snprintf(desc + o, dlen - o, "%s%s %g", o ? ", " : "", keys[k].key, x);
	}
	cJSON_Delete(root);
	return 1;
}
