/* count.c: exact prompt counting and the choice of pool (see count.h). */
#include "count.h"

#include <cJSON.h>
#include <event2/buffer.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "limit.h"
#include "req.h"
#include "tok.h"
#include "workers.h"

/* Bodies shorter than this are counted on the loop thread (well under a millisecond); longer ones
 * on a worker when count_threads > 0. */
#define COUNT_INLINE_BYTES 16384

int px_models_init(struct px_server *srv, struct sh_err *err)
{
	size_t i, j;

	for (i = 0; i < srv->n_pools; i++) {
		struct px_pool *p = &srv->pools[i];
		struct px_pool_conf *pc = &srv->conf.pools[i];

		p->model = pc->model;
		p->block = (size_t)pc->block_size;
		srv->reads_bodies |= *pc->model || *pc->tokenizer;
		if (!*pc->tokenizer)
			continue;
		for (j = 0; j < i; j++) {
			if (srv->pools[j].tok && strcmp(srv->conf.pools[j].tokenizer, pc->tokenizer) == 0 &&
			    strcmp(srv->conf.pools[j].chat_template, pc->chat_template) == 0) {
				p->tok = srv->pools[j].tok;
				p->chat = srv->pools[j].chat;
				break;
			}
		}
		if (p->tok)
			continue;
		p->tok = sh_tok_new(pc->tokenizer, err);
		if (!p->tok)
			return sh_errf(err, "pools[%zu].tokenizer: %s", i, err->msg);
		p->own_tok = 1;
		/* A model without a chat template still counts completions prompts. */
		p->chat = sh_chat_new(p->tok, *pc->chat_template ? pc->chat_template : NULL, err);
		if (!p->chat && (*pc->chat_template || sh_tok_chat_template(p->tok)))
			return sh_errf(err, "pools[%zu]: %s (set pools[%zu].chat_template to one of deepseek_v2, "
				       "deepseek_v3, llama3, chatml, qwen3)", i, err->msg, i);
	}
	return SH_OK;
}

void px_models_release(struct px_server *srv)
{
	size_t i;

	for (i = 0; i < srv->n_pools; i++) {
		if (srv->pools[i].own_tok) {
			sh_chat_free(srv->pools[i].chat);
			sh_tok_free(srv->pools[i].tok);
		}
		srv->pools[i].tok = NULL;
		srv->pools[i].chat = NULL;
	}
}

int64_t px_pool_max_len(const struct px_pool *p)
{
	int64_t best = 0;
	size_t i;

	if (p->max_model_len)
		return p->max_model_len;
	for (i = 0; i < p->n_ups; i++)
		if (p->ups[i].max_model_len && (!best || p->ups[i].max_model_len < best))
			best = p->ups[i].max_model_len;
	return best;
}

const char *px_pool_model(const struct px_pool *p)
{
	size_t i;

	if (p->model && *p->model)
		return p->model;
	for (i = 0; i < p->n_ups; i++)
		if (p->ups[i].model[0])
			return p->ups[i].model;
	return "";
}

/* The pools that serve the request's model. Routing by model uses the configured names only
 * (pools[].model): names learned from engines are listed by /v1/models but do not refuse requests,
 * so a pool without a configured name takes any model and its engines judge it. Returns how many
 * were written to out; 0 means "no pool serves that model". */
static size_t candidates(struct px_server *srv, const char *model, struct px_pool **out)
{
	size_t i, n = 0;

	for (i = 0; i < srv->n_pools; i++) {
		const char *pm = srv->pools[i].model;
		if (!model || !*pm || strcmp(pm, model) == 0)
			out[n++] = &srv->pools[i];
	}
	return n;
}

/* The spellings of the completion's length a route takes, the one to add first. */
static const char *const max_names[2][2] = { { "max_completion_tokens", "max_tokens" },
					     { "max_output_tokens", NULL } };

static const char *const *max_names_of(const struct px_req *r)
{
	return max_names[r->route == PX_ROUTE_RESPONSES];
}

/* max_completion_tokens, else max_tokens (responses: max_output_tokens): -1 when absent; -2 when
 * not a positive integer. */
static int64_t requested_max(const struct px_req *r, const char **param)
{
	const char *const *names = max_names_of(r);
	size_t i;

	for (i = 0; i < 2 && names[i]; i++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->json, names[i]);
		*param = names[i];
		if (!v || cJSON_IsNull(v))
			continue;
		/* compared before any cast: a double past int64's range cast to it is undefined */
		if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1) || v->valuedouble != floor(v->valuedouble))
			return -2;
		return v->valuedouble > 1e15 ? (int64_t)1e15 : (int64_t)v->valuedouble; /* clamped below anyway */
	}
	return -1;
}

/* Rewrite the body with max_tokens = n (each spelling that was present; the route's last one,
 * max_tokens or max_output_tokens, if none). */
static void clamp_body(struct px_req *r, int64_t n)
{
	const char *const *names = max_names_of(r);
	char *text;
	size_t i, found = 0;

	for (i = 0; i < 2 && names[i]; i++) {
		if (cJSON_GetObjectItemCaseSensitive(r->json, names[i])) {
			cJSON_ReplaceItemInObjectCaseSensitive(r->json, names[i], cJSON_CreateNumber((double)n));
			found++;
		}
	}
	if (!found)
		cJSON_AddNumberToObject(r->json, names[1] ? names[1] : names[0], (double)n);
	text = cJSON_PrintUnformatted(r->json);
	if (!text)
		return;
	evbuffer_drain(r->body, evbuffer_get_length(r->body));
	evbuffer_add(r->body, text, strlen(text));
	free(text);
}

static int too_long(struct px_req *r, int64_t limit, int64_t prompt, int64_t want, int user_limit)
{
	if (want > 0)
		snprintf(r->err_buf, sizeof(r->err_buf),
			 "This model's maximum context length is %lld tokens%s. However, you requested %lld tokens "
			 "(%lld in the messages, %lld in the completion). Please reduce the length of the messages "
			 "or completion.", (long long)limit, user_limit ? " (your account's limit)" : "",
			 (long long)(prompt + want), (long long)prompt, (long long)want);
	else
		snprintf(r->err_buf, sizeof(r->err_buf),
			 "This model's maximum context length is %lld tokens%s. However, your messages resulted in "
			 "%lld tokens. Please reduce the length of the messages.", (long long)limit,
			 user_limit ? " (your account's limit)" : "", (long long)prompt);
	r->err_msg = r->err_buf;
	r->err_code = "context_length_exceeded";
	r->err_param = "messages";
	return 400;
}

/* A completions request's list of prompts (each a string or a list of ids), each counted as the
 * engine will (its own prompt, the same suffix): *max_n the longest, *sum_n all together, *np how
 * many; first gets the first one's ids and hashes (routing). SH_DECLINED when the body is not such
 * a list. */
static int count_batch(const struct px_pool *p, const cJSON *body, const char *model, struct sh_prompt *first,
		       int64_t *max_n, int64_t *sum_n, int64_t *np, struct sh_err *err)
{
	const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(body, "prompt"), *el;
	int rc = SH_OK;

	*max_n = *sum_n = *np = 0;
	if (!cJSON_IsArray(prompt) || cJSON_GetArraySize(prompt) < 2 ||
	    !(cJSON_IsString(prompt->child) || cJSON_IsArray(prompt->child)))
		return SH_DECLINED;
	cJSON_ArrayForEach(el, prompt) {
		cJSON *one = sh_prompt_one(body, el);
		struct sh_prompt pr;

		sh_prompt_init(&pr);
		rc = cJSON_IsString(el) || cJSON_IsArray(el) ?
			     sh_prompt_build(p->tok, p->chat, one, SH_PROMPT_COMPLETIONS, model, p->block, &pr, err) :
			     (sh_errf(err, "prompt: a list must hold strings or lists of token ids"), SH_PARSE);
		cJSON_Delete(one);
		if (rc != SH_OK) {
			sh_prompt_release(&pr);
			return rc;
		}
		if ((int64_t)pr.ids.n > *max_n)
			*max_n = (int64_t)pr.ids.n;
		*sum_n += (int64_t)pr.ids.n;
		if (!(*np)++) {
			*first = pr;
			continue;
		}
		sh_prompt_release(&pr);
	}
	return SH_OK;
}

/* What counting a request gives. */
struct count_res {
	struct sh_prompt pr;       /* ids and hashes (a list of prompts: the first's) */
	int rc;
	struct sh_err err;
	int64_t n_prompts, batch_max, batch_sum;
};

/* The count itself, of the body json for route against pool p's tokenizer: touches nothing but its
 * arguments and the (thread-safe) tokenizer, so a worker may run it. */
static void count_prompt(const struct px_pool *p, const cJSON *json, int route, const char *model,
			 struct count_res *o)
{
	sh_prompt_init(&o->pr);
	o->n_prompts = 1;
	o->rc = sh_prompt_build(p->tok, p->chat, json,
				route == PX_ROUTE_CHAT ? SH_PROMPT_CHAT :
				route == PX_ROUTE_RESPONSES ? SH_PROMPT_RESPONSES : SH_PROMPT_COMPLETIONS,
				model, p->block, &o->pr, &o->err);
	if (o->rc == SH_DECLINED && route == PX_ROUTE_COMPLETIONS) { /* a list of prompts: each counted */
		sh_prompt_release(&o->pr);
		o->rc = count_batch(p, json, model, &o->pr, &o->batch_max, &o->batch_sum, &o->n_prompts, &o->err);
		if (o->rc != SH_OK)
			o->pr.param = "prompt";
	}
}

/* The request's model (NULL: none) and the pools serving it; 0 with r->err_* and *status set
 * when the body names none or a bad one. */
static size_t request_pools(struct px_req *r, struct px_pool **cand, const char **model, int *status)
{
	const cJSON *mj = r->json ? cJSON_GetObjectItemCaseSensitive(r->json, "model") : NULL;
	size_t n;

	*status = PX_NEXT;
	if (mj && !cJSON_IsString(mj) && !cJSON_IsNull(mj)) {
		r->err_msg = "'model' must be a string";
		r->err_param = "model";
		r->err_code = "invalid_type";
		*status = 400;
		return 0;
	}
	*model = cJSON_IsString(mj) ? mj->valuestring : NULL;
	n = candidates(r->conn->srv, *model, cand);
	if (n == 0) {
		snprintf(r->err_buf, sizeof(r->err_buf), "The model `%.100s` does not exist or you do not have "
			 "access to it.", *model);
		r->err_msg = r->err_buf;
		r->err_code = "model_not_found";
		r->err_param = "model";
		*status = 404;
	}
	return n;
}

/* After the count (on the loop thread): refusals, the pool, the clamp, the minute's tokens. */
static int count_finish(struct px_req *r, struct count_res *o)
{
	struct px_pool *cand[64], *best = NULL, *widest = NULL;
	const char *model, *param;
	int64_t want, user_max, limit, best_limit = 0, widest_limit = -1, prompt_sum;
	size_t n, i;
	int status;

	n = request_pools(r, cand, &model, &status);  /* as the stage found them */
	want = requested_max(r, &param);
	if (o->rc == SH_PARSE) {
		r->err_param = o->pr.param;  /* a string constant */
		sh_prompt_release(&o->pr);
		snprintf(r->err_buf, sizeof(r->err_buf), "%s", o->err.msg);
		r->err_msg = r->err_buf;
		r->err_code = "invalid_request";
		return 400;
	}
	if (o->rc != SH_OK || n == 0) {
		/* Not countable here (no renderer): the engine decides. */
		sh_prompt_release(&o->pr);
		return PX_NEXT;
	}
	/* a list of prompts: each must fit (the longest decides) and the minute is charged for all */
	r->prompt_tokens = o->n_prompts > 1 ? o->batch_max : (int64_t)o->pr.ids.n;
	prompt_sum = o->n_prompts > 1 ? o->batch_sum : r->prompt_tokens;
	r->hashes = o->pr.hashes;
	r->nhashes = o->pr.nhashes;
	o->pr.hashes = NULL;
	sh_prompt_release(&o->pr);

	/* The smallest pool that fits prompt + max_tokens (at least one token of room when max_tokens
	 * is not given); else the widest, with max_tokens clamped to its room. */
	user_max = r->user ? r->user->lim.max_context : 0;
	for (i = 0; i < n; i++) {
		limit = px_pool_max_len(cand[i]);
		if (!limit)
			limit = INT64_MAX;  /* unknown yet: assume it fits */
		if (user_max && user_max < limit)
			limit = user_max;
		if (limit > widest_limit) {
			widest_limit = limit;
			widest = cand[i];
		}
		if (r->prompt_tokens + (want > 0 ? want : 1) <= limit && (!best || limit < best_limit)) {
			best = cand[i];
			best_limit = limit;
		}
	}
	if (!best) {
		if (r->prompt_tokens >= widest_limit)
			return too_long(r, widest_limit, r->prompt_tokens, want,
					user_max && user_max == widest_limit);
		best = widest;
		best_limit = widest_limit;
	}
	r->pool = best;
	if (want > 0 && r->prompt_tokens + want > best_limit) {
		want = best_limit - r->prompt_tokens;
		clamp_body(r, want);
	} else if (want < 0 && user_max && best_limit == user_max) {
		/* the engine would fill its own, larger context: the user's limit must say so */
		want = best_limit - r->prompt_tokens;
		clamp_body(r, want);
	}
	r->max_tokens = want;
	/* outstanding work on the instance, for load balancing: the room left when max_tokens is open */
	r->tokens_est = r->prompt_tokens + (want > 0 ? want : best_limit == INT64_MAX ? 0 : best_limit - r->prompt_tokens);
	/* tokens per minute: the prompts and max_tokens when given (not a room nobody asked for) */
	return px_limit_tokens(r, prompt_sum + o->n_prompts * (want > 0 ? want : 0));
}

/* A count on a worker (count_threads > 0): the job owns the body while it runs (the request holds
 * no pointer into it), and gives it back in done unless the request went away meanwhile. */
struct count_job {
	struct sh_job job;
	struct px_req *r;          /* NULL once the request is gone (count_job_forget) */
	const struct px_pool *pool;
	cJSON *json;
	int route;
	char *model;
	struct count_res res;
};

static void count_job_run(struct sh_job *j)
{
	struct count_job *cj = (struct count_job *)j;

	count_prompt(cj->pool, cj->json, cj->route, cj->model, &cj->res);
}

static void count_job_done(struct sh_job *j)
{
	struct count_job *cj = (struct count_job *)j;
	struct px_req *r = cj->r;
	struct count_res res = cj->res;

	free(cj->model);
	if (!r) { /* the request went away meanwhile */
		sh_prompt_release(&res.pr);
		cJSON_Delete(cj->json);
		free(cj);
		return;
	}
	r->count_job = NULL;
	r->json = cj->json;
	free(cj);
	px_req_resume(r, count_finish(r, &res));
}

static void count_job_forget(void *arg)
{
	struct px_req *r = arg;

	if (r->count_job)
		((struct count_job *)r->count_job)->r = NULL;
}

int px_count_stage(struct px_req *r)
{
	struct px_server *srv = r->conn->srv;
	struct px_pool *cand[64];
	const char *model, *param;
	struct count_res res;
	int64_t want;
	size_t n, i;
	int status;

	r->prompt_tokens = -1;
	r->max_tokens = -1;
	n = request_pools(r, cand, &model, &status);
	if (n == 0)
		return status;
	r->pool = cand[0];
	/* Chat, completions and responses carry a prompt kvgate can count; the rest go to the first
	 * pool that serves the model (without a tokenizer, responses go to the widest) */
	if (r->route != PX_ROUTE_CHAT && r->route != PX_ROUTE_COMPLETIONS && r->route != PX_ROUTE_RESPONSES)
		return PX_NEXT;
	if (!cand[0]->tok) {
		for (i = 0; i < n; i++)
			if (r->route == PX_ROUTE_RESPONSES && px_pool_max_len(cand[i]) > px_pool_max_len(r->pool))
				r->pool = cand[i];
		return PX_NEXT;  /* no tokenizer configured: a plain proxy for this model */
	}

	want = requested_max(r, &param);
	if (want == -2) {
		snprintf(r->err_buf, sizeof(r->err_buf), "'%s' must be a positive integer", param);
		r->err_msg = r->err_buf;
		r->err_param = param;
		r->err_code = "invalid_value";
		return 400;
	}
	if (srv->workers.n && evbuffer_get_length(r->body) >= COUNT_INLINE_BYTES) {
		struct count_job *cj = sh_calloc(1, sizeof(*cj));

		cj->job.run = count_job_run;
		cj->job.done = count_job_done;
		cj->r = r;
		cj->pool = cand[0];
		cj->json = r->json;
		cj->route = r->route;
		cj->model = sh_strdup(model ? model : px_pool_model(cand[0]));
		r->json = NULL;  /* the job's until done */
		r->count_job = cj;
		px_req_cleanup_add(r, count_job_forget, r);
		sh_workers_submit(&srv->workers, &cj->job);
		return PX_AGAIN;
	}
	count_prompt(cand[0], r->json, r->route, model ? model : px_pool_model(cand[0]), &res);
	return count_finish(r, &res);
}
