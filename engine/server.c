/* server.c: see server.h. Connections follow proxy/conn.c: the connection owns the parser; one
 * request at a time is answered (pipelined bytes wait in the input buffer); connections are freed
 * in a deferred pass, never inside their own callbacks (STYLE.md rule 9). */
#include "server.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include "http.h"
#include "net.h"
#include "workers.h"

#define CONN_INPUT_HIGH (256 * 1024)
#define HDR_TIMEOUT_MS 30000
#define IDLE_TIMEOUT_MS 120000

struct eng_conn;

struct eng_choice {
	struct eng_greq *g;
	int index;
	int prompt;                     /* which prompt */
	struct eng_seq *seq;            /* NULL once finished */
	int fin, ngen, cached;
	int role_sent;
	struct evbuffer *text;          /* non-streamed: the whole text */
	cJSON *lp;                      /* non-streamed logprobs: chat content list / completions object */
	size_t text_off;                /* completions text_offset */
};

struct eng_greq {
	struct eng_conn *c;
	enum eng_api_kind kind;
	int stream, include_usage;
	char id[64], item_id[64];
	int64_t created;
	int n_choices, n_done;
	struct eng_choice *ch;
	int prompt_tokens;
	char **echo;                    /* per prompt, moved from the parsed request */
	int n_prompts;
	int resp_seq;                   /* responses: sequence_number */
	struct evbuffer *all;           /* responses: the text so far */
	int failed;
};

struct eng_conn {
	struct eng_server *srv;
	struct bufferevent *bev;
	struct sh_http_msg msg;
	struct evbuffer *body;
	struct event *timer;
	struct eng_greq *g;             /* the generation being answered */
	int busy;                       /* a request is being answered */
	int keep_alive;
	int head;                       /* the request is a HEAD: headers only */
	void *pj;                       /* its body being parsed on a worker (struct parse_job) */
	int dead, close_after, in_parse;
	char rid[128], user[64];
	struct eng_conn *next, *prev, *next_dead;
};

struct eng_server {
	struct event_base *base;
	struct eng_server_conf conf;
	struct eng_sched *sched;
	const struct eng_api_ctx *ctx;
	struct evconnlistener *lis;
	int efd;
	struct event *efd_ev, *free_ev;
	struct eng_conn *conns, *dead;
	int draining;                   /* eng_server_drain: no listener; connections close when answered */
	struct event *drain_ev;         /* runs drained (once) when the last connection has gone */
	void (*drained)(void *);
	void *drained_ud;
	uint64_t n_req;
	uint64_t id_key;                /* random at start: response ids differ across instances and runs */
	struct sh_workers workers;      /* long bodies are parsed (their prompts tokenized) off the loop */
	pthread_mutex_t met_mu;
	struct sh_metrics reg;
	struct sh_series *m_running, *m_waiting, *m_usage, *m_prompt, *m_gen, *m_pcq, *m_pch, *m_preempt;
	struct sh_series *m_w_bytes, *m_kv_total, *m_kv_used, *m_kv_tok, *m_kv_blocks_total, *m_kv_blocks_free;
	struct sh_metric *m_success;
	struct sh_metric *m_http;
};

static void conn_parse(struct eng_conn *c);
static void conn_close(struct eng_conn *c);

/* ---- writing ---- */

static void write_head(struct eng_conn *c, int status, const char *ctype, long len)
{
	struct evbuffer *o = bufferevent_get_output(c->bev);
	evbuffer_add_printf(o, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status, sh_http_reason(status), ctype);
	if (len >= 0)
		evbuffer_add_printf(o, "Content-Length: %ld\r\n", len);
	else
		evbuffer_add_printf(o, "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n");
	if (c->rid[0])
		evbuffer_add_printf(o, "x-request-id: %s\r\n", c->rid);
	evbuffer_add_printf(o, "Connection: %s\r\n\r\n", c->keep_alive ? "keep-alive" : "close");
	pthread_mutex_lock(&c->srv->met_mu);
	char lab[32];
	snprintf(lab, sizeof(lab), "status=\"%d\"", status);
	sh_series_add(sh_series_get(c->srv->m_http, lab), 1);
	pthread_mutex_unlock(&c->srv->met_mu);
}

/* The request is answered: next pipelined one, or close. */
static void conn_done(struct eng_conn *c)
{
	c->busy = 0;
	if (c->dead)
		return;
	if (!c->keep_alive || c->srv->draining) {
		c->close_after = 1;
		bufferevent_disable(c->bev, EV_READ);
		if (!evbuffer_get_length(bufferevent_get_output(c->bev)))
			conn_close(c);
		return;
	}
	sh_http_msg_next(&c->msg);
	evbuffer_drain(c->body, evbuffer_get_length(c->body));
	struct timeval tv = {IDLE_TIMEOUT_MS / 1000, 0};
	evtimer_add(c->timer, &tv);
	if (!c->in_parse)
		conn_parse(c);
}

static void send_body(struct eng_conn *c, int status, const char *ctype, const char *body, size_t len)
{
	write_head(c, status, ctype, (long)len);
	if (!c->head)
		evbuffer_add(bufferevent_get_output(c->bev), body, len);
	conn_done(c);
}

static void send_json(struct eng_conn *c, int status, cJSON *o)
{
	char *s = cJSON_PrintUnformatted(o);
	send_body(c, status, "application/json", s, strlen(s));
	free(s);
	cJSON_Delete(o);
}

static void send_error(struct eng_conn *c, int status, const char *msg, const char *param, const char *code)
{
	char *s = sh_http_error_json(msg, sh_http_error_type(status), param, code);
	if (status >= 500)
		fprintf(stderr, "kvgate-engine: [%s] %d %s\n", c->rid[0] ? c->rid : "-", status, msg);
	send_body(c, status, "application/json", s, strlen(s));
	free(s);
}

static void chunk(struct eng_conn *c, const char *p, size_t n)
{
	struct evbuffer *o = bufferevent_get_output(c->bev);
	if (!n)
		return;
	evbuffer_add_printf(o, "%zx\r\n", n);
	evbuffer_add(o, p, n);
	evbuffer_add(o, "\r\n", 2);
}

/* One SSE event (event: line when name is not NULL) in one chunk; o is consumed. */
static void sse(struct eng_conn *c, const char *name, cJSON *o)
{
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	size_t n = strlen(s), k = (name ? strlen(name) : 0) + n + 32;
	char *buf = sh_malloc(k);
	int len = name ? snprintf(buf, k, "event: %s\ndata: %s\n\n", name, s) : snprintf(buf, k, "data: %s\n\n", s);
	chunk(c, buf, (size_t)len);
	free(buf);
	free(s);
}

/* ---- generation requests ---- */

/* The bytes of an evbuffer as a JSON string. */
static cJSON *jstr_buf(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);
	const char *p = n ? (const char *)evbuffer_pullup(b, -1) : "";
	return eng_api_jstr(p, n);
}

static cJSON *token_bytes(const char *s, size_t n)
{
	cJSON *a = cJSON_CreateArray();
	for (size_t i = 0; i < n; i++)
		cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)s[i]));
	return a;
}

static char *tok_text(const struct eng_server *srv, int32_t id, size_t *n)
{
	char *s = sh_tok_decode(srv->ctx->tok, &id, 1, 0, n, NULL);
	if (!s) {
		s = sh_strdup("");
		*n = 0;
	}
	return s;
}

/* Chat logprobs entries for lps (appended to list). */
static void chat_lps(const struct eng_server *srv, const struct eng_tok_lp *lps, int n, cJSON *list)
{
	for (int i = 0; i < n; i++) {
		size_t len;
		char *t = tok_text(srv, lps[i].id, &len);
		cJSON *e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "token", t);
		cJSON_AddNumberToObject(e, "logprob", lps[i].lp);
		cJSON_AddItemToObject(e, "bytes", token_bytes(t, len));
		free(t);
		cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
		for (int k = 0; k < lps[i].n_top; k++) {
			char *tt = tok_text(srv, lps[i].top_ids[k], &len);
			cJSON *x = cJSON_CreateObject();
			cJSON_AddStringToObject(x, "token", tt);
			cJSON_AddNumberToObject(x, "logprob", lps[i].top_lps[k]);
			cJSON_AddItemToObject(x, "bytes", token_bytes(tt, len));
			free(tt);
			cJSON_AddItemToArray(top, x);
		}
		cJSON_AddItemToArray(list, e);
	}
}

/* Completions logprobs: {tokens, token_logprobs, top_logprobs, text_offset}, appended to o. */
static void cmpl_lps(const struct eng_server *srv, struct eng_choice *ch, const struct eng_tok_lp *lps, int n, cJSON *o)
{
	cJSON *toks = cJSON_GetObjectItem(o, "tokens"), *tl = cJSON_GetObjectItem(o, "token_logprobs");
	cJSON *top = cJSON_GetObjectItem(o, "top_logprobs"), *off = cJSON_GetObjectItem(o, "text_offset");
	if (!toks) {
		toks = cJSON_AddArrayToObject(o, "tokens");
		tl = cJSON_AddArrayToObject(o, "token_logprobs");
		top = cJSON_AddArrayToObject(o, "top_logprobs");
		off = cJSON_AddArrayToObject(o, "text_offset");
	}
	for (int i = 0; i < n; i++) {
		size_t len;
		char *t = tok_text(srv, lps[i].id, &len);
		cJSON_AddItemToArray(toks, cJSON_CreateString(t));
		cJSON_AddItemToArray(tl, cJSON_CreateNumber(lps[i].lp));
		cJSON_AddItemToArray(off, cJSON_CreateNumber((double)ch->text_off));
		ch->text_off += len;
		free(t);
		cJSON *m = cJSON_CreateObject();
		for (int k = 0; k < lps[i].n_top; k++) {
			char *tt = tok_text(srv, lps[i].top_ids[k], &len);
			if (!cJSON_GetObjectItemCaseSensitive(m, tt))
				cJSON_AddNumberToObject(m, tt, lps[i].top_lps[k]);
			free(tt);
		}
		cJSON_AddItemToArray(top, m);
	}
}

static cJSON *chunk_base(const struct eng_greq *g)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", g->id);
	cJSON_AddStringToObject(o, "object", g->kind == ENG_API_CHAT ? "chat.completion.chunk" : "text_completion");
	cJSON_AddNumberToObject(o, "created", (double)g->created);
	cJSON_AddStringToObject(o, "model", g->c->srv->conf.model_name);
	if (g->kind == ENG_API_CHAT)
		cJSON_AddNullToObject(o, "system_fingerprint");
	return o;
}

static void chunk_finish(const struct eng_greq *g, cJSON *o, cJSON *choices)
{
	cJSON_AddItemToObject(o, "choices", choices);
	if (g->include_usage)
		cJSON_AddNullToObject(o, "usage");
}

static cJSON *usage_json(const struct eng_greq *g)
{
	int gen = 0, cached = 0;
	for (int i = 0; i < g->n_choices; i++)
		gen += g->ch[i].ngen;
	/* cached tokens of the first choice of each prompt (the prompt is counted once) */
	for (int i = 0; i < g->n_choices; i++)
		if (i == 0 || g->ch[i].prompt != g->ch[i - 1].prompt)
			cached += g->ch[i].cached;
	cJSON *u = cJSON_CreateObject();
	int resp = g->kind == ENG_API_RESPONSES;
	cJSON_AddNumberToObject(u, resp ? "input_tokens" : "prompt_tokens", g->prompt_tokens);
	if (resp) {
		cJSON_AddItemToObject(u, "input_tokens_details", cJSON_CreateObject());
		cJSON_AddNumberToObject(cJSON_GetObjectItem(u, "input_tokens_details"), "cached_tokens", cached);
	}
	cJSON_AddNumberToObject(u, resp ? "output_tokens" : "completion_tokens", gen);
	if (resp) {
		cJSON *d = cJSON_AddObjectToObject(u, "output_tokens_details");
		cJSON_AddNumberToObject(d, "reasoning_tokens", 0);
	}
	cJSON_AddNumberToObject(u, "total_tokens", g->prompt_tokens + gen);
	if (!resp) {
		cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
		cJSON_AddNumberToObject(d, "cached_tokens", cached);
	}
	return u;
}

/* The Responses API object (status, output so far). */
static cJSON *response_obj(const struct eng_greq *g, const char *status, int with_output)
{
	cJSON *r = cJSON_CreateObject();
	cJSON_AddStringToObject(r, "id", g->id);
	cJSON_AddStringToObject(r, "object", "response");
	cJSON_AddNumberToObject(r, "created_at", (double)g->created);
	cJSON_AddStringToObject(r, "status", status);
	cJSON_AddStringToObject(r, "model", g->c->srv->conf.model_name);
	cJSON *out = cJSON_AddArrayToObject(r, "output");
	if (with_output) {
		cJSON *it = cJSON_CreateObject();
		cJSON_AddStringToObject(it, "type", "message");
		cJSON_AddStringToObject(it, "id", g->item_id);
		cJSON_AddStringToObject(it, "status", "completed");
		cJSON_AddStringToObject(it, "role", "assistant");
		cJSON *content = cJSON_AddArrayToObject(it, "content");
		cJSON *part = cJSON_CreateObject();
		cJSON_AddStringToObject(part, "type", "output_text");
		cJSON_AddItemToObject(part, "text", jstr_buf(g->all));
		cJSON_AddArrayToObject(part, "annotations");
		cJSON_AddItemToArray(content, part);
		cJSON_AddItemToArray(out, it);
		cJSON_AddItemToObject(r, "usage", usage_json(g));
		if (g->ch[0].fin == ENG_FIN_LENGTH) {
			cJSON *inc = cJSON_AddObjectToObject(r, "incomplete_details");
			cJSON_AddStringToObject(inc, "reason", "max_output_tokens");
		}
	} else {
		cJSON_AddNullToObject(r, "usage");
	}
	return r;
}

static void resp_event(struct eng_greq *g, const char *type, cJSON *o)
{
	cJSON_AddStringToObject(o, "type", type);
	cJSON_AddNumberToObject(o, "sequence_number", g->resp_seq++);
	sse(g->c, type, o);
}

static cJSON *resp_item_ev(const struct eng_greq *g)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "item_id", g->item_id);
	cJSON_AddNumberToObject(o, "output_index", 0);
	cJSON_AddNumberToObject(o, "content_index", 0);
	return o;
}

/* A choice ended (fin: ENG_FIN_*; NONE: cut short, counted as an abort) in the success counter. */
static void count_finish(struct eng_server *srv, int fin)
{
	const char *f = eng_api_finish_name(fin);
	char lab[200];
	snprintf(lab, sizeof(lab), "finished_reason=\"%s\",model_name=\"%s\"", f ? f : "abort", srv->conf.model_name);
	pthread_mutex_lock(&srv->met_mu);
	sh_series_add(sh_series_get(srv->m_success, lab), 1);
	pthread_mutex_unlock(&srv->met_mu);
}

static void greq_free(struct eng_greq *g)
{
	struct eng_server *srv = g->c->srv;
	int cancelled = 0;
	for (int i = 0; i < g->n_choices; i++) {
		struct eng_choice *ch = &g->ch[i];
		if (ch->seq) { /* still running: the client went away, or the engine stops it */
			count_finish(srv, ENG_FIN_ABORT);
			pthread_mutex_lock(&srv->sched->out_mu);
			ch->seq->ud = NULL;
			pthread_mutex_unlock(&srv->sched->out_mu);
			eng_seq_cancel(ch->seq);
			eng_seq_unref(ch->seq);
			cancelled = 1;
		}
		if (ch->text)
			evbuffer_free(ch->text);
		cJSON_Delete(ch->lp);
	}
	if (cancelled)
		eng_sched_kick(srv->sched);
	for (int i = 0; i < g->n_prompts; i++)
		free(g->echo ? g->echo[i] : NULL);
	free(g->echo);
	if (g->all)
		evbuffer_free(g->all);
	free(g->ch);
	g->c->g = NULL;
	free(g);
}

/* Ends g with an error: a stream (its head already sent) gets an error event and its end, anything
 * else the status with an OpenAI error body; its sequences are cancelled. */
static void greq_fail(struct eng_greq *g, int status, const char *msg)
{
	struct eng_conn *c = g->c;
	int stream = g->stream, kind = g->kind;
	greq_free(g);
	if (!stream) {
		send_error(c, status, msg, NULL, NULL);
		return;
	}
	char *e = sh_http_error_json(msg, sh_http_error_type(status), NULL, NULL);
	size_t n = strlen(e) + 16;
	char *b = sh_malloc(n);
	int k = snprintf(b, n, "data: %s\n\n", e);
	chunk(c, b, (size_t)k);
	free(b);
	free(e);
	if (kind != ENG_API_RESPONSES) {
		static const char done[] = "data: [DONE]\n\n";
		chunk(c, done, sizeof(done) - 1);
	}
	evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
	conn_done(c);
}

/* Every choice finished: the end of the stream, or the whole response. */
static void greq_complete(struct eng_greq *g)
{
	struct eng_conn *c = g->c;
	struct eng_server *srv = c->srv;
	int failed = 0;
	for (int i = 0; i < g->n_choices; i++) {
		failed |= g->ch[i].fin == ENG_FIN_ERROR || g->ch[i].fin == ENG_FIN_ABORT;
		count_finish(srv, g->ch[i].fin);
	}
	if (failed) {
		greq_fail(g, 500, "the engine failed while generating");
		return;
	}
	if (g->stream) {
		if (g->kind == ENG_API_RESPONSES) {
			cJSON *o = resp_item_ev(g);
			cJSON_AddItemToObject(o, "text", jstr_buf(g->all));
			resp_event(g, "response.output_text.done", o);
			o = resp_item_ev(g);
			cJSON *part = cJSON_AddObjectToObject(o, "part");
			cJSON_AddStringToObject(part, "type", "output_text");
			cJSON_AddItemToObject(part, "text", jstr_buf(g->all));
			cJSON_AddArrayToObject(part, "annotations");
			resp_event(g, "response.content_part.done", o);
			cJSON *full = response_obj(g, g->ch[0].fin == ENG_FIN_LENGTH ? "incomplete" : "completed", 1);
			o = cJSON_CreateObject();
			cJSON_AddNumberToObject(o, "output_index", 0);
			cJSON_AddItemReferenceToObject(o, "item", cJSON_GetArrayItem(cJSON_GetObjectItem(full, "output"), 0));
			cJSON *o2 = cJSON_Duplicate(o, 1);
			cJSON_Delete(o);
			resp_event(g, "response.output_item.done", o2);
			o = cJSON_CreateObject();
			cJSON_AddItemToObject(o, "response", full);
			/* response.completed even when cut by max_output_tokens (status says "incomplete"): Codex
			 * ends a turn on response.completed only */
			resp_event(g, "response.completed", o);
		} else if (g->include_usage) {
			cJSON *o = chunk_base(g);
			cJSON_AddArrayToObject(o, "choices");
			cJSON_AddItemToObject(o, "usage", usage_json(g));
			sse(c, NULL, o);
		}
		if (g->kind != ENG_API_RESPONSES) {
			static const char done[] = "data: [DONE]\n\n";
			chunk(c, done, sizeof(done) - 1);
		}
		evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
		greq_free(g);
		conn_done(c);
		return;
	}
	cJSON *o;
	if (g->kind == ENG_API_RESPONSES) {
		o = response_obj(g, g->ch[0].fin == ENG_FIN_LENGTH ? "incomplete" : "completed", 1);
	} else {
		o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "id", g->id);
		cJSON_AddStringToObject(o, "object", g->kind == ENG_API_CHAT ? "chat.completion" : "text_completion");
		cJSON_AddNumberToObject(o, "created", (double)g->created);
		cJSON_AddStringToObject(o, "model", srv->conf.model_name);
		cJSON *choices = cJSON_AddArrayToObject(o, "choices");
		for (int i = 0; i < g->n_choices; i++) {
			struct eng_choice *ch = &g->ch[i];
			cJSON *x = cJSON_CreateObject();
			cJSON_AddNumberToObject(x, "index", i);
			if (g->kind == ENG_API_CHAT) {
				cJSON *m = cJSON_AddObjectToObject(x, "message");
				cJSON_AddStringToObject(m, "role", "assistant");
				cJSON_AddItemToObject(m, "content", jstr_buf(ch->text));
				cJSON_AddArrayToObject(m, "tool_calls");
				if (ch->lp) {
					cJSON *l = cJSON_AddObjectToObject(x, "logprobs");
					cJSON_AddItemToObject(l, "content", ch->lp);
					ch->lp = NULL;
				} else {
					cJSON_AddNullToObject(x, "logprobs");
				}
			} else {
				cJSON_AddItemToObject(x, "text", jstr_buf(ch->text));
				if (ch->lp) {
					cJSON_AddItemToObject(x, "logprobs", ch->lp);
					ch->lp = NULL;
				} else {
					cJSON_AddNullToObject(x, "logprobs");
				}
			}
			cJSON_AddStringToObject(x, "finish_reason", eng_api_finish_name(ch->fin));
			cJSON_AddItemToArray(choices, x);
		}
		cJSON_AddItemToObject(o, "usage", usage_json(g));
	}
	greq_free(g);
	send_json(c, 200, o);
}

/* New output of one choice (text may be empty; fin ends it). */
static void choice_output(struct eng_choice *ch, const char *text, size_t len, const struct eng_tok_lp *lps, int nlp,
			  int fin, int ngen, int cached)
{
	struct eng_greq *g = ch->g;
	struct eng_server *srv = g->c->srv;
	ch->ngen = ngen;
	ch->cached = cached;
	if (g->kind == ENG_API_RESPONSES) {
		evbuffer_add(g->all, text, len);
		if (g->stream && len) {
			cJSON *o = resp_item_ev(g);
			cJSON_AddItemToObject(o, "delta", eng_api_jstr(text, len));
			cJSON_AddArrayToObject(o, "logprobs");
			resp_event(g, "response.output_text.delta", o);
		}
	} else if (g->stream && (len || nlp)) {
		cJSON *o = chunk_base(g), *choices = cJSON_CreateArray(), *x = cJSON_CreateObject();
		cJSON_AddNumberToObject(x, "index", ch->index);
		if (g->kind == ENG_API_CHAT) {
			cJSON *d = cJSON_AddObjectToObject(x, "delta");
			cJSON_AddItemToObject(d, "content", eng_api_jstr(text, len));
			if (nlp) {
				cJSON *l = cJSON_AddObjectToObject(x, "logprobs");
				chat_lps(srv, lps, nlp, cJSON_AddArrayToObject(l, "content"));
			} else {
				cJSON_AddNullToObject(x, "logprobs");
			}
		} else {
			cJSON_AddItemToObject(x, "text", eng_api_jstr(text, len));
			if (nlp) {
				cJSON *l = cJSON_AddObjectToObject(x, "logprobs");
				cmpl_lps(srv, ch, lps, nlp, l);
			} else {
				cJSON_AddNullToObject(x, "logprobs");
			}
		}
		cJSON_AddNullToObject(x, "finish_reason");
		cJSON_AddItemToArray(choices, x);
		chunk_finish(g, o, choices);
		sse(g->c, NULL, o);
	} else if (!g->stream) {
		evbuffer_add(ch->text, text, len);
		if (nlp) {
			if (g->kind == ENG_API_CHAT) {
				if (!ch->lp)
					ch->lp = cJSON_CreateArray();
				chat_lps(srv, lps, nlp, ch->lp);
			} else {
				if (!ch->lp)
					ch->lp = cJSON_CreateObject();
				cmpl_lps(srv, ch, lps, nlp, ch->lp);
			}
		}
	}
	if (!fin)
		return;
	ch->fin = fin;
	eng_seq_unref(ch->seq);
	ch->seq = NULL;
	if (g->stream && g->kind != ENG_API_RESPONSES && fin != ENG_FIN_ERROR && fin != ENG_FIN_ABORT) {
		cJSON *o = chunk_base(g), *choices = cJSON_CreateArray(), *x = cJSON_CreateObject();
		cJSON_AddNumberToObject(x, "index", ch->index);
		if (g->kind == ENG_API_CHAT)
			cJSON_AddObjectToObject(x, "delta");
		else
			cJSON_AddStringToObject(x, "text", "");
		cJSON_AddNullToObject(x, "logprobs");
		cJSON_AddStringToObject(x, "finish_reason", eng_api_finish_name(fin));
		cJSON_AddItemToArray(choices, x);
		chunk_finish(g, o, choices);
		sse(g->c, NULL, o);
	}
	if (++g->n_done == g->n_choices)
		greq_complete(g);
}

void eng_server_notify(void *ud)
{
	struct eng_server *srv = ud;
	uint64_t one = 1;
	ssize_t k = write(srv->efd, &one, sizeof(one));
	(void)k;
}

static void efd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct eng_server *srv = arg;
	uint64_t v;
	(void)what;
	ssize_t k = read(fd, &v, sizeof(v));
	(void)k;
	struct eng_seq *q = eng_sched_take_ready(srv->sched), *next;
	for (; q; q = next) {
		pthread_mutex_lock(&srv->sched->out_mu);
		next = q->ready_next;
		q->out_queued = 0;  /* from here on the scheduler may queue q again (see take_ready) */
		struct eng_choice *ch = q->ud;
		char *text = q->out;
		size_t len = q->out_len;
		struct eng_tok_lp *lps = q->out_lp;
		int nlp = q->out_nlp, fin = q->out_fin, ngen = q->out_ngen, cached = q->out_cached;
		if (ch) {
			q->out = NULL;
			q->out_len = q->out_cap = 0;
			q->out_lp = NULL;
			q->out_nlp = q->out_caplp = 0;
		}
		pthread_mutex_unlock(&srv->sched->out_mu);
		if (ch) {
			choice_output(ch, text ? text : "", len, lps, nlp, fin, ngen, cached);
			free(text);
			free(lps);
		}
		eng_seq_unref(q);
	}
}

/* The seed of a request that carries none: the n-th such draw of a server started with --seed S is
 * the same every run (as vLLM's global generator seeded by --seed), whatever the clock. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ull;
	return x ^ (x >> 29);
}

static uint64_t rand_seed(struct eng_server *srv)
{
	return mix64(srv->conf.seed * 0xD1B54A32D192ED03ull + ++srv->n_req * 0x9E3779B97F4A7C15ull);
}

/* A parsed request (rc: eng_api_parse's): the error, or the generation started. Takes r. */
static void generate_parsed(struct eng_conn *c, enum eng_api_kind kind, int rc, struct eng_api_req *rp,
			    const struct eng_api_err *ep)
{
	struct eng_server *srv = c->srv;
	const struct eng_api_ctx *ctx = srv->ctx;
	struct eng_api_req r = *rp;
	struct eng_api_err e = *ep;

	if (rc) {
		eng_api_req_release(&r);
		send_error(c, e.status, e.msg, e.param, e.code);
		return;
	}
	struct eng_greq *g = sh_calloc(1, sizeof(*g));
	g->c = c;
	g->kind = kind;
	g->stream = r.stream;
	g->include_usage = r.include_usage;
	g->echo = r.echo && kind == ENG_API_COMPLETIONS ? r.prompt_texts : NULL;
	if (g->echo)
		r.prompt_texts = sh_calloc((size_t)r.n_prompts, sizeof(char *));
	g->n_prompts = r.n_prompts;
	g->created = sh_wall_s();
	uint64_t id = mix64(srv->id_key + ++srv->n_req);
	snprintf(g->id, sizeof(g->id), "%s%016" PRIx64, kind == ENG_API_CHAT ? "chatcmpl-" : kind == ENG_API_RESPONSES ? "resp_" : "cmpl-", id);
	snprintf(g->item_id, sizeof(g->item_id), "msg_%016" PRIx64, mix64(id));
	g->n_choices = r.n_prompts * r.n;
	g->ch = sh_calloc((size_t)g->n_choices, sizeof(*g->ch));
	if (kind == ENG_API_RESPONSES)
		g->all = evbuffer_new();
	c->g = g;
	for (int p = 0; p < r.n_prompts; p++) {
		const struct sh_tok_ids *ids = &r.prompts[p].ids;
		g->prompt_tokens += (int)ids->n;
		int mt = eng_api_max_tokens(ctx, &r, (int)ids->n);
		for (int j = 0; j < r.n; j++) {
			struct eng_choice *ch = &g->ch[p * r.n + j];
			struct eng_seq_params sp;
			ch->g = g;
			ch->index = p * r.n + j;
			ch->prompt = p;
			if (!g->stream)
				ch->text = evbuffer_new();
			eng_api_seq_params(&r, j, rand_seed(srv), mt, &sp);
			ch->seq = eng_seq_new(ids->ids, (int)ids->n, &sp);
			ch->seq->index = ch->index;
			ch->seq->prompt_shared = j > 0;
			ch->seq->ud = ch;
			snprintf(ch->seq->user, sizeof(ch->seq->user), "%s", c->user);
		}
	}
	eng_api_req_release(&r);
	if (g->stream) {
		write_head(c, 200, "text/event-stream", -1);
		if (kind == ENG_API_RESPONSES) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddItemToObject(o, "response", response_obj(g, "in_progress", 0));
			resp_event(g, "response.created", o);
			o = cJSON_CreateObject();
			cJSON_AddItemToObject(o, "response", response_obj(g, "in_progress", 0));
			resp_event(g, "response.in_progress", o);
			o = cJSON_CreateObject();
			cJSON_AddNumberToObject(o, "output_index", 0);
			cJSON *it = cJSON_AddObjectToObject(o, "item");
			cJSON_AddStringToObject(it, "type", "message");
			cJSON_AddStringToObject(it, "id", g->item_id);
			cJSON_AddStringToObject(it, "status", "in_progress");
			cJSON_AddStringToObject(it, "role", "assistant");
			cJSON_AddArrayToObject(it, "content");
			resp_event(g, "response.output_item.added", o);
			o = resp_item_ev(g);
			cJSON *part = cJSON_AddObjectToObject(o, "part");
			cJSON_AddStringToObject(part, "type", "output_text");
			cJSON_AddStringToObject(part, "text", "");
			cJSON_AddArrayToObject(part, "annotations");
			resp_event(g, "response.content_part.added", o);
		} else {
			/* the first chunk of each choice: the role (chat) or the echoed prompt (completions) */
			for (int i = 0; i < g->n_choices; i++) {
				const char *echo = g->echo ? g->echo[g->ch[i].prompt] : NULL;
				if (kind == ENG_API_COMPLETIONS && !echo)
					continue;
				cJSON *o = chunk_base(g), *choices = cJSON_CreateArray(), *x = cJSON_CreateObject();
				cJSON_AddNumberToObject(x, "index", i);
				if (kind == ENG_API_CHAT) {
					cJSON *d = cJSON_AddObjectToObject(x, "delta");
					cJSON_AddStringToObject(d, "role", "assistant");
					cJSON_AddStringToObject(d, "content", "");
				} else {
					cJSON_AddStringToObject(x, "text", echo);
					g->ch[i].text_off = strlen(echo); /* offsets count the echo, as non-streamed */
				}
				cJSON_AddNullToObject(x, "logprobs");
				cJSON_AddNullToObject(x, "finish_reason");
				cJSON_AddItemToArray(choices, x);
				chunk_finish(g, o, choices);
				sse(c, NULL, o);
			}
		}
	} else if (g->echo) {
		for (int i = 0; i < g->n_choices; i++) {
			const char *echo = g->echo[g->ch[i].prompt];
			if (echo) {
				evbuffer_add(g->ch[i].text, echo, strlen(echo));
				g->ch[i].text_off = strlen(echo);
			}
		}
	}
	for (int i = 0; i < g->n_choices; i++)
		eng_sched_submit(srv->sched, g->ch[i].seq);
}

/* A body of PARSE_INLINE_BYTES or more is parsed (its prompts tokenized: ~5 MB/s) on a worker, so
 * that the loop goes on writing every other stream; the job forgets a connection that closed. */
#define PARSE_INLINE_BYTES 16384
#define ENG_PARSE_THREADS 2

struct parse_job {
	struct sh_job job;
	struct eng_conn *c;             /* NULL once the connection closed */
	const struct eng_api_ctx *ctx;
	enum eng_api_kind kind;
	char *body;
	size_t len;
	int rc;
	struct eng_api_req r;
	struct eng_api_err e;
};

static void parse_run(struct sh_job *j)
{
	struct parse_job *pj = (struct parse_job *)j;
	pj->rc = eng_api_parse(pj->ctx, pj->body, pj->len, pj->kind, &pj->r, &pj->e);
}

static void parse_done(struct sh_job *j)
{
	struct parse_job *pj = (struct parse_job *)j;
	struct eng_conn *c = pj->c;
	free(pj->body);
	if (c) {
		c->pj = NULL;
		generate_parsed(c, pj->kind, pj->rc, &pj->r, &pj->e);
	} else {
		eng_api_req_release(&pj->r);
	}
	free(pj);
}

static void handle_generate(struct eng_conn *c, enum eng_api_kind kind)
{
	struct eng_server *srv = c->srv;
	struct eng_api_req r;
	struct eng_api_err e = {0};
	size_t blen = evbuffer_get_length(c->body);
	const char *body = (const char *)evbuffer_pullup(c->body, -1);

	if (srv->workers.n && blen >= PARSE_INLINE_BYTES) {
		struct parse_job *pj = sh_calloc(1, sizeof(*pj));
		pj->job.run = parse_run;
		pj->job.done = parse_done;
		pj->c = c;
		pj->ctx = srv->ctx;
		pj->kind = kind;
		pj->body = sh_malloc(blen);
		memcpy(pj->body, body, blen); /* the connection may go away meanwhile */
		pj->len = blen;
		c->pj = pj;
		sh_workers_submit(&srv->workers, &pj->job);
		return;
	}
	int rc = eng_api_parse(srv->ctx, body ? body : "", blen, kind, &r, &e);
	generate_parsed(c, kind, rc, &r, &e);
}

/* ---- other endpoints ---- */

static void handle_models(struct eng_conn *c)
{
	struct eng_server *srv = c->srv;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "object", "list");
	cJSON *d = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "id", srv->conf.model_name);
	cJSON_AddStringToObject(m, "object", "model");
	cJSON_AddNumberToObject(m, "created", (double)sh_wall_s());
	cJSON_AddStringToObject(m, "owned_by", "kvgate");
	cJSON_AddStringToObject(m, "root", srv->conf.model_path);
	cJSON_AddNullToObject(m, "parent");
	cJSON_AddNumberToObject(m, "max_model_len", srv->ctx->max_model_len);
	cJSON_AddItemToArray(d, m);
	send_json(c, 200, o);
}

static void handle_tokenize(struct eng_conn *c)
{
	struct eng_api_req r;
	struct eng_api_err e = {0};
	size_t blen = evbuffer_get_length(c->body);
	const char *body = (const char *)evbuffer_pullup(c->body, -1);
	if (eng_api_parse(c->srv->ctx, body ? body : "", blen, ENG_API_TOKENIZE, &r, &e)) {
		eng_api_req_release(&r);
		send_error(c, e.status, e.msg, e.param, e.code);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	const struct sh_tok_ids *ids = &r.prompts[0].ids;
	cJSON_AddNumberToObject(o, "count", (double)ids->n);
	cJSON_AddNumberToObject(o, "max_model_len", c->srv->ctx->max_model_len);
	cJSON_AddItemToObject(o, "tokens", cJSON_CreateIntArray(ids->ids, (int)ids->n));
	eng_api_req_release(&r);
	send_json(c, 200, o);
}

static void handle_detokenize(struct eng_conn *c)
{
	size_t blen = evbuffer_get_length(c->body);
	const char *body = (const char *)evbuffer_pullup(c->body, -1);
	cJSON *b = cJSON_ParseWithLength(body ? body : "", blen);
	const cJSON *t = b ? cJSON_GetObjectItemCaseSensitive(b, "tokens") : NULL;
	if (!cJSON_IsArray(t)) {
		cJSON_Delete(b);
		send_error(c, 400, b ? "'tokens' must be a list of token ids" : "the body is not valid JSON", b ? "tokens" : NULL, NULL);
		return;
	}
	int n = cJSON_GetArraySize(t);
	int32_t *ids = sh_malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
	size_t V = sh_tok_vocab_size(c->srv->ctx->tok);
	for (int i = 0; i < n; i++) {
		const cJSON *x = cJSON_GetArrayItem(t, i);
		if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= (double)V) {
			free(ids);
			cJSON_Delete(b);
			send_error(c, 400, "'tokens' must be a list of token ids in the vocabulary", "tokens", NULL);
			return;
		}
		ids[i] = (int32_t)x->valuedouble;
	}
	cJSON_Delete(b);
	char *s = sh_tok_decode(c->srv->ctx->tok, ids, (size_t)n, 0, NULL, NULL);
	free(ids);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "prompt", s ? s : "");
	free(s);
	send_json(c, 200, o);
}

static void refresh_metrics(struct eng_server *srv)
{
	struct eng_sched_stats st;
	eng_sched_stats(srv->sched, &st);
	int used = st.total_blocks - st.free_blocks - st.evictable_blocks;
	sh_series_set(srv->m_running, st.running);
	sh_series_set(srv->m_waiting, st.waiting);
	sh_series_set(srv->m_usage, st.total_blocks ? (double)used / st.total_blocks : 0);
	sh_series_set(srv->m_prompt, (double)st.prompt_tokens);
	sh_series_set(srv->m_gen, (double)st.gen_tokens);
	sh_series_set(srv->m_pcq, (double)st.pc_queries);
	sh_series_set(srv->m_pch, (double)st.pc_hits);
	sh_series_set(srv->m_preempt, (double)st.preemptions);
	sh_series_set(srv->m_kv_used, (double)used * (double)srv->conf.kv_block_bytes);
	sh_series_set(srv->m_kv_blocks_free, st.free_blocks + st.evictable_blocks);
}

static void handle_metrics(struct eng_conn *c)
{
	struct eng_server *srv = c->srv;
	struct evbuffer *b = evbuffer_new();
	pthread_mutex_lock(&srv->met_mu);
	refresh_metrics(srv);
	sh_metrics_render(&srv->reg, b);
	pthread_mutex_unlock(&srv->met_mu);
	size_t n = evbuffer_get_length(b);
	const char *p = (const char *)evbuffer_pullup(b, -1);
	send_body(c, 200, "text/plain; version=0.0.4", p ? p : "", n);
	evbuffer_free(b);
}

struct state_ev {
	uint64_t hash;
	int added;
	uint32_t order;
};

struct state_acc {
	struct state_ev *ev;
	size_t n, cap;
};

static void state_fn(void *ud, uint64_t hash, int added)
{
	struct state_acc *a = ud;
	if (a->n == a->cap) {
		a->cap = a->cap ? a->cap * 2 : 256;
		a->ev = sh_realloc(a->ev, sizeof(*a->ev) * a->cap);
	}
	a->ev[a->n] = (struct state_ev){hash, added, (uint32_t)a->n};
	a->n++;
}

static int state_cmp(const void *x, const void *y)
{
	const struct state_ev *a = x, *b = y;
	if (a->hash != b->hash)
		return a->hash < b->hash ? -1 : 1;
	return a->order < b->order ? -1 : a->order > b->order;
}

static void handle_state(struct eng_conn *c, const char *query)
{
	struct eng_server *srv = c->srv;
	uint64_t since = 0;
	const char *p = query ? strstr(query, "since=") : NULL;
	if (p)
		since = strtoull(p + 6, NULL, 10);
	struct eng_sched_stats st;
	eng_sched_stats(srv->sched, &st);
	struct state_acc a = {0};
	int reset = 0;
	uint64_t now = 0;
	if (srv->sched->pc)
		now = eng_pcache_report(srv->sched->pc, since, &reset, state_fn, &a);
	else
		reset = since != 0;
	if (a.n)
		qsort(a.ev, a.n, sizeof(*a.ev), state_cmp);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "seq", (double)now);
	cJSON_AddBoolToObject(o, "reset", reset);
	cJSON_AddStringToObject(o, "model", srv->conf.model_name);
	cJSON_AddNumberToObject(o, "block_size", srv->conf.block_size);
	cJSON_AddNumberToObject(o, "running", st.running);
	cJSON_AddNumberToObject(o, "waiting", st.waiting);
	cJSON_AddNumberToObject(o, "free_blocks", st.free_blocks + st.evictable_blocks);
	cJSON_AddNumberToObject(o, "total_blocks", st.total_blocks);
	cJSON_AddNumberToObject(o, "kv_cache_usage",
				st.total_blocks ? (double)(st.total_blocks - st.free_blocks - st.evictable_blocks) / st.total_blocks : 0);
	cJSON *add = cJSON_AddArrayToObject(o, "added"), *ev = cJSON_AddArrayToObject(o, "evicted");
	for (size_t i = 0; i < a.n; i++) {
		if (i + 1 < a.n && a.ev[i + 1].hash == a.ev[i].hash)
			continue;  /* the last event of each hash wins */
		char h[24];
		snprintf(h, sizeof(h), "%016" PRIx64, a.ev[i].hash);
		cJSON_AddItemToArray(a.ev[i].added ? add : ev, cJSON_CreateString(h));
	}
	free(a.ev);
	send_json(c, 200, o);
}

static void route(struct eng_conn *c)
{
	const char *url = sh_http_url(&c->msg);
	int method = sh_http_method(&c->msg);
	char path[256];
	size_t n = strcspn(url, "?");
	snprintf(path, sizeof(path), "%.*s", (int)SH_MIN(n, sizeof(path) - 1), url);
	const char *query = url[n] == '?' ? url + n + 1 : NULL;
	size_t hl;
	const char *h = sh_http_header(&c->msg, "x-request-id", &hl);
	snprintf(c->rid, sizeof(c->rid), "%.*s", h ? (int)SH_MIN(hl, sizeof(c->rid) - 1) : 0, h ? h : "");
	h = sh_http_header(&c->msg, "x-kvgate-user", &hl);
	snprintf(c->user, sizeof(c->user), "%.*s", h ? (int)SH_MIN(hl, sizeof(c->user) - 1) : 0, h ? h : "");
	c->keep_alive = sh_http_keep_alive(&c->msg);
	c->head = method == HTTP_HEAD;
	c->busy = 1;

	int get = method == HTTP_GET || method == HTTP_HEAD, post = method == HTTP_POST;
	if (!strcmp(path, "/health") || !strcmp(path, "/ping")) {
		if (get)
			return send_body(c, 200, "text/plain", "", 0);
	} else if (!strcmp(path, "/v1/models")) {
		if (get)
			return handle_models(c);
	} else if (!strcmp(path, "/metrics")) {
		if (get)
			return handle_metrics(c);
	} else if (!strcmp(path, "/kvgate/state")) {
		if (get)
			return handle_state(c, query);
	} else if (!strcmp(path, "/v1/chat/completions")) {
		if (post)
			return handle_generate(c, ENG_API_CHAT);
	} else if (!strcmp(path, "/v1/completions") || !strcmp(path, "/v1/beta/completions") ||
		   !strcmp(path, "/beta/completions")) {
		if (post)
			return handle_generate(c, ENG_API_COMPLETIONS);
	} else if (!strcmp(path, "/v1/responses")) {
		if (post)
			return handle_generate(c, ENG_API_RESPONSES);
	} else if (!strcmp(path, "/tokenize")) {
		if (post)
			return handle_tokenize(c);
	} else if (!strcmp(path, "/detokenize")) {
		if (post)
			return handle_detokenize(c);
	} else {
		char msg[320];
		snprintf(msg, sizeof(msg), "no route for %s", path);
		return send_error(c, 404, msg, NULL, NULL);
	}
	send_error(c, 405, "method not allowed", NULL, NULL);
}

/* ---- connections ---- */

static int on_body(struct sh_http_msg *m, void *ud, const char *at, size_t len)
{
	struct eng_conn *c = ud;
	(void)m;
	return evbuffer_add(c->body, at, len);
}

/* Expect: 100-continue (curl sends it for bodies over 1 KB and waits a second for the answer): the
 * body is welcome, its declared size already checked against the cap. */
static int on_headers(struct sh_http_msg *m, void *ud)
{
	struct eng_conn *c = ud;
	if (sh_http_header_is(m, "expect", "100-continue") && sh_http_version_minor(m) >= 1)
		bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
	return 0;
}

static const struct sh_http_cbs conn_cbs = {on_headers, on_body, NULL};

static void conn_parse(struct eng_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer_iovec v[8];
	if (c->in_parse)
		return;
	c->in_parse = 1;
	while (!c->dead && !c->close_after && !c->busy) {
		int n = evbuffer_peek(in, -1, NULL, v, 8);
		if (n <= 0)
			break;
		long used = 0;
		for (int i = 0; i < n && c->msg.state != SH_HTTP_DONE; i++) {
			long k = sh_http_msg_feed(&c->msg, v[i].iov_base, v[i].iov_len);
			if (k < 0)
				break;
			used += k;
		}
		evbuffer_drain(in, (size_t)used);
		if (c->msg.state == SH_HTTP_ERROR) {
			c->keep_alive = 0;
			c->busy = 1;
			send_error(c, c->msg.err_status ? c->msg.err_status : 400, c->msg.err_msg ? c->msg.err_msg : "bad request",
				   NULL, NULL);
			break;
		}
		if (c->msg.state == SH_HTTP_DONE) {
			evtimer_del(c->timer);
			route(c);
			continue;
		}
		break;
	}
	c->in_parse = 0;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	conn_parse(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct eng_conn *c = arg;
	if (c->close_after && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		conn_close(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	conn_close(arg);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct eng_conn *c = arg;
	if (!c->busy)
		conn_close(c);
}

static void conn_close(struct eng_conn *c)
{
	struct eng_server *srv = c->srv;
	if (c->dead)
		return;
	c->dead = 1;
	if (c->g)
		greq_free(c->g);  /* cancels its sequences: the scheduler frees their blocks next step */
	if (c->pj)
		((struct parse_job *)c->pj)->c = NULL;
	bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	evtimer_del(c->timer);
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next_dead = srv->dead;
	srv->dead = c;
	event_active(srv->free_ev, EV_TIMEOUT, 0);
	if (srv->draining && !srv->conns)
		event_active(srv->drain_ev, EV_TIMEOUT, 0);
}

static void reap(struct eng_server *srv)
{
	struct eng_conn *c;
	while ((c = srv->dead)) {
		srv->dead = c->next_dead;
		bufferevent_free(c->bev);
		event_free(c->timer);
		evbuffer_free(c->body);
		sh_http_msg_release(&c->msg);
		free(c);
	}
}

static void free_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	reap(arg);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct eng_server *srv = arg;
	(void)l;
	(void)sa;
	(void)salen;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct eng_conn *c = sh_calloc(1, sizeof(*c));
	c->srv = srv;
	c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		close(fd);
		free(c);
		return;
	}
	c->body = evbuffer_new();
	sh_http_msg_init(&c->msg, HTTP_REQUEST, &conn_cbs, c);
	c->msg.max_header_bytes = 64 * 1024;
	c->msg.max_headers = 100;
	c->msg.max_body = srv->conf.max_body;
	c->timer = evtimer_new(srv->base, timer_cb, c);
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, CONN_INPUT_HIGH);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	struct timeval tv = {HDR_TIMEOUT_MS / 1000, 0};
	evtimer_add(c->timer, &tv);
	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
}

/* ---- lifecycle ---- */

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct eng_server *srv = arg;
	void (*done)(void *) = srv->drained;
	(void)fd;
	(void)what;
	srv->drained = NULL;
	if (done)
		done(srv->drained_ud);
}

int eng_server_abort(struct eng_server *srv, const char *msg)
{
	int n = 0;
	for (struct eng_conn *c = srv->conns, *nx; c; c = nx) {
		nx = c->next;
		if (c->g && !c->dead) {
			greq_fail(c->g, 503, msg);
			n++;
		}
	}
	return n;
}

int eng_server_drain(struct eng_server *srv, void (*done)(void *ud), void *ud)
{
	int busy = 0;
	srv->draining = 1;
	srv->drained = done;
	srv->drained_ud = ud;
	if (srv->lis) { /* new connections are refused at once, not left in the backlog */
		evconnlistener_free(srv->lis);
		srv->lis = NULL;
	}
	for (struct eng_conn *c = srv->conns, *nx; c; c = nx) {
		nx = c->next;
		if (c->busy)
			busy++;
		else
			conn_close(c);
	}
	if (!srv->conns)
		event_active(srv->drain_ev, EV_TIMEOUT, 0);
	return busy;
}

static const double ttft_b[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
				7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double itl_b[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
			       10.0, 20.0, 40.0, 80.0};
static const double e2e_b[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
			       120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

static void metrics_init(struct eng_server *srv)
{
	struct sh_metrics *r = &srv->reg;
	char lab[160];
	snprintf(lab, sizeof(lab), "model_name=\"%s\"", srv->conf.model_name);
	sh_metrics_init(r);
#define SER(field, name, help, type) srv->field = sh_series_get(sh_metric_new(r, name, help, type, NULL, 0), lab)
	SER(m_running, "vllm:num_requests_running", "Sequences in the running batch.", SH_METRIC_GAUGE);
	SER(m_waiting, "vllm:num_requests_waiting", "Sequences waiting to be admitted.", SH_METRIC_GAUGE);
	SER(m_usage, "vllm:kv_cache_usage_perc", "KV-cache usage: 1 means 100 percent (cached unreferenced blocks count as free).",
	    SH_METRIC_GAUGE);
	SER(m_prompt, "vllm:prompt_tokens_total", "Prompt tokens admitted.", SH_METRIC_COUNTER);
	SER(m_gen, "vllm:generation_tokens_total", "Tokens generated.", SH_METRIC_COUNTER);
	SER(m_pcq, "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", SH_METRIC_COUNTER);
	SER(m_pch, "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", SH_METRIC_COUNTER);
	SER(m_preempt, "vllm:num_preemptions", "Sequences preempted (recomputed later).", SH_METRIC_COUNTER);
	SER(m_w_bytes, "kvgate_engine_memory_weights_bytes", "Bytes of model weights in backend memory.", SH_METRIC_GAUGE);
	SER(m_kv_total, "kvgate_engine_memory_kv_cache_bytes", "Bytes of the KV-cache pool.", SH_METRIC_GAUGE);
	SER(m_kv_used, "kvgate_engine_memory_kv_cache_used_bytes", "Bytes of KV-cache blocks in use by sequences.",
	    SH_METRIC_GAUGE);
	SER(m_kv_tok, "kvgate_engine_memory_kv_bytes_per_token", "KV-cache bytes one token costs (all layers).",
	    SH_METRIC_GAUGE);
	SER(m_kv_blocks_total, "kvgate_engine_kv_blocks_total", "KV-cache blocks.", SH_METRIC_GAUGE);
	SER(m_kv_blocks_free, "kvgate_engine_kv_blocks_free", "KV-cache blocks free or evictable.", SH_METRIC_GAUGE);
#undef SER
	srv->m_success = sh_metric_new(r, "vllm:request_success_total", "Finished requests by finish reason.",
				       SH_METRIC_COUNTER, NULL, 0);
	srv->m_http = sh_metric_new(r, "kvgate_engine_http_responses_total", "HTTP responses by status.",
				    SH_METRIC_COUNTER, NULL, 0);
	struct sh_metric *info = sh_metric_new(r, "vllm:cache_config_info", "Information of the KV cache configuration.",
					       SH_METRIC_GAUGE, NULL, 0);
	char ilab[512];
	snprintf(ilab, sizeof(ilab),
		 "block_size=\"%d\",cache_dtype=\"%s\",enable_prefix_caching=\"%s\",gpu_memory_utilization=\"%g\","
		 "num_gpu_blocks=\"%d\",num_cpu_blocks=\"0\"",
		 srv->conf.block_size, srv->conf.kv_dtype, srv->conf.prefix_caching ? "True" : "False",
		 srv->conf.gpu_mem_util, srv->sched->kv->n_blocks);
	sh_series_set(sh_series_get(info, ilab), 1);
	sh_series_set(srv->m_w_bytes, (double)srv->conf.weight_bytes);
	sh_series_set(srv->m_kv_total, (double)srv->conf.kv_block_bytes * srv->sched->kv->n_blocks);
	sh_series_set(srv->m_kv_tok, srv->conf.kv_bytes_per_token);
	sh_series_set(srv->m_kv_blocks_total, srv->sched->kv->n_blocks);

	struct eng_sched_hist *h = &srv->sched->hist;
	h->mu = &srv->met_mu;
	h->ttft = sh_metric_new(r, "vllm:time_to_first_token_seconds", "Time to first token.", SH_METRIC_HISTOGRAM, ttft_b,
				SH_ARRAY_LEN(ttft_b));
	h->itl = sh_metric_new(r, "vllm:inter_token_latency_seconds", "Time between tokens of a sequence.",
			       SH_METRIC_HISTOGRAM, itl_b, SH_ARRAY_LEN(itl_b));
	h->e2e = sh_metric_new(r, "vllm:e2e_request_latency_seconds", "Arrival to last token of a sequence.",
			       SH_METRIC_HISTOGRAM, e2e_b, SH_ARRAY_LEN(e2e_b));
	h->s_ttft = sh_series_get((struct sh_metric *)h->ttft, lab);
	h->s_itl = sh_series_get((struct sh_metric *)h->itl, lab);
	h->s_e2e = sh_series_get((struct sh_metric *)h->e2e, lab);
}

struct eng_server *eng_server_new(struct event_base *base, const struct eng_server_conf *conf,
				  struct eng_sched *sched, const struct eng_api_ctx *ctx, struct sh_err *err)
{
	struct eng_server *srv = sh_calloc(1, sizeof(*srv));
	char addr[300];
	struct sockaddr_storage sa;
	int salen;

	srv->base = base;
	srv->conf = *conf;
	srv->sched = sched;
	srv->ctx = ctx;
	srv->efd = -1;
	srv->workers.efd = -1; /* not started: eng_server_free may run before */
	if (getrandom(&srv->id_key, sizeof(srv->id_key), 0) != sizeof(srv->id_key))
		srv->id_key = (uint64_t)sh_now_us() ^ ((uint64_t)sh_wall_s() << 20) ^ ((uint64_t)getpid() << 40);
	pthread_mutex_init(&srv->met_mu, NULL);
	metrics_init(srv);
	snprintf(addr, sizeof(addr), strchr(conf->host, ':') ? "[%s]:%d" : "%s:%d", conf->host, conf->port);
	if (sh_net_addr(addr, &sa, &salen, err))
		goto fail;
	srv->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (srv->efd < 0) {
		sh_errf(err, "eventfd: %s", strerror(errno));
		goto fail;
	}
	srv->efd_ev = event_new(base, srv->efd, EV_READ | EV_PERSIST, efd_cb, srv);
	event_add(srv->efd_ev, NULL);
	srv->free_ev = event_new(base, -1, 0, free_cb, srv);
	srv->drain_ev = event_new(base, -1, 0, drain_cb, srv);
	if (sh_workers_start(&srv->workers, base, ENG_PARSE_THREADS, err))
		goto fail;
	srv->lis = evconnlistener_new_bind(base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 128,
					   (struct sockaddr *)&sa, salen);
	if (!srv->lis) {
		sh_errf(err, "cannot listen on %s: %s", addr, strerror(errno));
		goto fail;
	}
	return srv;
fail:
	eng_server_free(srv);
	return NULL;
}

void eng_server_free(struct eng_server *srv)
{
	if (!srv)
		return;
	if (srv->lis)
		evconnlistener_free(srv->lis);
	while (srv->conns)
		conn_close(srv->conns);
	reap(srv);
	sh_workers_stop(&srv->workers); /* after the connections: their jobs find them gone */
	if (srv->efd_ev)
		event_free(srv->efd_ev);
	if (srv->free_ev)
		event_free(srv->free_ev);
	if (srv->drain_ev)
		event_free(srv->drain_ev);
	if (srv->efd >= 0)
		close(srv->efd);
	srv->sched->hist.mu = NULL;
	sh_metrics_release(&srv->reg);
	pthread_mutex_destroy(&srv->met_mu);
	free(srv);
}
