/* req.c: the request object, its stage table and the local answers (see req.h).
 *
 * Stages, in order (a new stage is one function and one row):
 *   check    route and method, request id, JSON body for the routes kvgate reads
 *   local    /health and /metrics, answered here
 *   auth     API key -> user (proxy/auth.c)
 *   limit    the user's rates and concurrency slot (proxy/limit.c)
 *   models   GET /v1/models from what the pools serve
 *   count    exact prompt tokens, context limits, the pool (proxy/count.c)
 *   route    the instance of the pool: cached prefix vs load (proxy/route.c)
 *   forward  to the engine (proxy/forward.c)
 */
#include "req.h"

#include <cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "conn.h"
#include "count.h"
#include "forward.h"
#include "limit.h"
#include "route.h"
#include "pxlog.h"
#include "pxmetrics.h"
#include "upstream.h"

static const char *route_names[PX_ROUTE__COUNT] = {
	[PX_ROUTE_OTHER] = "other",
	[PX_ROUTE_CHAT] = "chat",
	[PX_ROUTE_COMPLETIONS] = "completions",
	[PX_ROUTE_RESPONSES] = "responses",
	[PX_ROUTE_EMBEDDINGS] = "embeddings",
	[PX_ROUTE_MODELS] = "models",
	[PX_ROUTE_HEALTH] = "health",
	[PX_ROUTE_METRICS] = "metrics",
	[PX_ROUTE_NOT_FOUND] = "not_found",
};

const char *px_route_name(enum px_route route)
{
	return route_names[route];
}

/* Known paths, their route and the one method they take (-1: forwarded with any method). */
static const struct {
	const char *path;
	int prefix;  /* path is a prefix ("/v1/models/" + id) */
	enum px_route route;
	int method;
} routes[] = {
	{ "/v1/chat/completions", 0, PX_ROUTE_CHAT, HTTP_POST },
	{ "/v1/completions", 0, PX_ROUTE_COMPLETIONS, HTTP_POST },
	{ "/v1/beta/completions", 0, PX_ROUTE_COMPLETIONS, HTTP_POST },
	{ "/v1/responses", 0, PX_ROUTE_RESPONSES, HTTP_POST },
	{ "/v1/embeddings", 0, PX_ROUTE_EMBEDDINGS, HTTP_POST },
	{ "/v1/models", 0, PX_ROUTE_MODELS, HTTP_GET },
	{ "/v1/models/", 1, PX_ROUTE_MODELS, HTTP_GET },
	{ "/health", 0, PX_ROUTE_HEALTH, HTTP_GET },
	{ "/metrics", 0, PX_ROUTE_METRICS, HTTP_GET },
	{ "/v1/", 1, PX_ROUTE_OTHER, -1 },
};

static int route_of(const char *url, int *method)
{
	size_t plen = strcspn(url, "?");
	size_t i, n;

	for (i = 0; i < SH_ARRAY_LEN(routes); i++) {
		n = strlen(routes[i].path);
		if (routes[i].prefix ? (plen > n && strncmp(url, routes[i].path, n) == 0)
				     : (plen == n && strncmp(url, routes[i].path, n) == 0)) {
			*method = routes[i].method;
			return routes[i].route;
		}
	}
	*method = -1;
	return PX_ROUTE_NOT_FOUND;
}

/* ---- request ids ---- */

static int rid_ok(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > 64)
		return 0;
	for (i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '-' || ch == '_' || ch == '.'))
			return 0;
	}
	return 1;
}

static void rid_make(struct px_req *r)
{
	struct px_server *srv = r->conn->srv;
	uint64_t x = srv->next_rid++ * 0x9E3779B97F4A7C15ULL;

	/* splitmix64 of a counter seeded at start from the OS: unique per process, unguessable enough
	 * for a correlation id (it grants nothing). */
	x ^= x >> 30;
	x *= 0xBF58476D1CE4E5B9ULL;
	x ^= x >> 27;
	x *= 0x94D049BB133111EBULL;
	x ^= x >> 31;
	snprintf(r->rid, sizeof(r->rid), "%016llx", (unsigned long long)x);
}

/* ---- lifecycle ---- */

struct px_req *px_req_new(struct px_conn *c)
{
	struct px_req *r = sh_calloc(1, sizeof(*r));

	r->conn = c;
	r->msg = &c->msg;
	r->body = evbuffer_new();
	r->t_start_us = sh_now_us();
	r->state = PX_REQ_READING;
	return r;
}

int px_req_headers(struct px_req *r)
{
	struct sh_http_msg *m = r->msg;
	const char *rid, *te;
	size_t n;
	int method;

	r->method = sh_http_method(m);
	r->route = route_of(sh_http_url(m), &method);
	rid = sh_http_header(m, "x-request-id", &n);
	if (rid && rid_ok(rid, n))
		memcpy(r->rid, rid, n + 1);
	else
		rid_make(r);
	/* A coding other than chunked (gzip, ...) would reach the engine undecoded under another name */
	te = sh_http_header(m, "transfer-encoding", NULL);
	if (te && strcasecmp(te, "chunked") != 0) {
		m->err_status = 501;
		m->err_msg = "a Transfer-Encoding other than chunked is not supported";
		return -1;
	}
	/* Expect: 100-continue: the body is welcome (its size was checked against the cap before
	 * this callback) where there is a route for it; say so, so the client sends it. */
	if (r->route != PX_ROUTE_NOT_FOUND && sh_http_header_is(m, "expect", "100-continue") &&
	    sh_http_version_minor(m) >= 1)
		bufferevent_write(r->conn->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
	return 0;
}

void px_req_cleanup_add(struct px_req *r, void (*fn)(void *), void *arg)
{
	struct px_cleanup *cl = sh_malloc(sizeof(*cl));

	cl->fn = fn;
	cl->arg = arg;
	cl->next = r->cleanups;
	r->cleanups = cl;
}

static void req_free(struct px_req *r)
{
	struct px_cleanup *cl;

	while ((cl = r->cleanups)) {
		r->cleanups = cl->next;
		cl->fn(cl->arg);
		free(cl);
	}
	if (r->uc)
		px_upconn_abort(r->uc);
	if (r->json)
		cJSON_Delete(r->json);
	free(r->hashes);
	evbuffer_free(r->body);
	free(r);
}

static void req_account(struct px_req *r)
{
	struct px_server *srv = r->conn->srv;

	r->t_end_us = sh_now_us();
	if (r->state == PX_REQ_RUNNING)
		sh_series_add(srv->met.in_flight, -1);
	r->state = PX_REQ_DONE;
	px_metrics_request(&srv->met, r);
	px_log_access(srv, r);
}

void px_req_finish(struct px_req *r, int keep)
{
	struct px_conn *c = r->conn;

	req_account(r);
	c->req = NULL;
	req_free(r);
	if (!keep) {
		px_conn_close_after_write(c);
		return;
	}
	px_conn_next(c);
}

void px_req_abort(struct px_req *r)
{
	struct px_conn *c = r->conn;

	r->client_gone = 1;
	if (!r->status)
		r->status = 499;  /* nginx's "client closed request", for logs and metrics */
	if (r->state != PX_REQ_READING || c->msg.state != SH_HTTP_IDLE)
		req_account(r);
	c->req = NULL;
	req_free(r);
}

/* ---- answers ---- */

void px_req_reply(struct px_req *r, int status, const char *ctype, const char *body, size_t len,
		  const char *extra)
{
	struct px_conn *c = r->conn;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	int keep = !c->close_after && r->state != PX_REQ_READING && sh_http_keep_alive(&c->msg) &&
		   !c->srv->draining;

	/* An answer before the request was read whole (an error while reading): the rest of the
	 * request is unread, so the connection cannot be reused. */
	r->status = status;
	evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			    "x-request-id: %s\r\n%s%s\r\n",
			    status, sh_http_reason(status), ctype, len, r->rid[0] ? r->rid : "-",
			    extra ? extra : "", keep ? "" : "Connection: close\r\n");
	if (r->method != HTTP_HEAD)
		evbuffer_add(out, body, len);
	r->bytes_out = len;
	px_req_finish(r, keep);
}

void px_req_error(struct px_req *r, int status, const char *message, const char *code, const char *param)
{
	char *body = sh_http_error_json(message, sh_http_error_type(status), param, code);
	char extra[sizeof(r->err_hdrs)];

	r->err_msg = message;
	snprintf(extra, sizeof(extra), "%s", r->err_hdrs);
	if (!extra[0] && (status == 503 || status == 429))
		snprintf(extra, sizeof(extra), "Retry-After: 1\r\n");
	if (status == 405) {
		int method;
		route_of(sh_http_url(r->msg), &method);
		snprintf(extra, sizeof(extra), "Allow: %s\r\n", method >= 0 ? llhttp_method_name(method) : "GET");
	}
	px_req_reply(r, status, "application/json", body, strlen(body), extra);
	free(body);
}

void px_req_parse_error(struct px_conn *c)
{
	struct px_req *r = c->req;
	int status = c->msg.err_status ? c->msg.err_status : 400;

	if (!r)
		c->req = r = px_req_new(c);  /* garbage before anything parsed as a request */
	if (!r->rid[0])
		rid_make(r);
	r->route = r->route ? r->route : PX_ROUTE_NOT_FOUND;
	px_req_error(r, status, c->msg.err_msg ? c->msg.err_msg : "bad request",
		     status == 413 ? "request_too_large" : status == 431 ? "headers_too_large" : "bad_request",
		     NULL);
}

/* ---- stages ---- */

static int stage_check(struct px_req *r)
{
	int method;

	if (r->conn->over_cap) {
		r->conn->close_after = 1;
		snprintf(r->err_buf, sizeof(r->err_buf), "too many connections (max_connections %lld)",
			 (long long)r->conn->srv->conf.max_connections);
		r->err_msg = r->err_buf;
		r->err_code = "too_many_connections";
		return 503;
	}
	route_of(sh_http_url(r->msg), &method);
	if (r->route == PX_ROUTE_NOT_FOUND) {
		snprintf(r->err_buf, sizeof(r->err_buf), "no route for %.120s", sh_http_url(r->msg));
		r->err_msg = r->err_buf;
		r->err_code = "not_found";
		return 404;
	}
	if (method >= 0 && r->method != method && !(method == HTTP_GET && r->method == HTTP_HEAD)) {
		snprintf(r->err_buf, sizeof(r->err_buf), "%s is not allowed on %.120s (use %s)",
			 llhttp_method_name(r->method), sh_http_url(r->msg), llhttp_method_name(method));
		r->err_msg = r->err_buf;
		r->err_code = "method_not_allowed";
		return 405;
	}
	return PX_NEXT;
}

/* After auth and the limits: a client without a key, or over its rate, costs no JSON parse. */
static int stage_body(struct px_req *r)
{
	if (r->route != PX_ROUTE_CHAT && r->route != PX_ROUTE_COMPLETIONS && r->route != PX_ROUTE_RESPONSES)
		return PX_NEXT;
	/* kvgate reads a body only when it needs something in it: the model (pools with a configured
	 * model) or the prompt (pools with a tokenizer). Otherwise it is a plain proxy and the engine
	 * judges the body (its own 400s are relayed). */
	if (!r->conn->srv->reads_bodies)
		return PX_NEXT;
	return px_req_read_json(r);
}

static int key_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first key of o that appears twice, or NULL. kvgate reads the first of two (cJSON) and a
 * last-wins engine (Python's json: vLLM) the second: a clamp or a count could be steered past. */
static const char *dup_key(const cJSON *o)
{
	const cJSON *e;
	const char **k, *dup = NULL;
	size_t n = 0, i;

	cJSON_ArrayForEach(e, o)
		n++;
	if (n < 2)
		return NULL;
	k = sh_malloc(n * sizeof(*k));
	n = 0;
	cJSON_ArrayForEach(e, o)
		k[n++] = e->string;
	qsort(k, n, sizeof(*k), key_cmp);
	for (i = 1; i < n && !dup; i++)
		if (strcmp(k[i - 1], k[i]) == 0)
			dup = k[i];
	free(k);
	return dup;
}

int px_req_read_json(struct px_req *r)
{
	const cJSON *stream;
	const char *end = NULL, *dup;
	size_t len = evbuffer_get_length(r->body);
	char *text = (char *)evbuffer_pullup(r->body, -1);

	r->json = text ? cJSON_ParseWithLengthOpts(text, len, &end, 0) : NULL;
	while (r->json && end < text + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
		end++;
	if (!r->json || !cJSON_IsObject(r->json) || end != text + len) {
		r->err_msg = len ? "the request body is not a valid JSON object" : "the request body is empty; "
									       "expected a JSON object";
		r->err_code = "invalid_json";
		return 400;
	}
	if ((dup = dup_key(r->json))) {
		snprintf(r->err_buf, sizeof(r->err_buf), "the request body has the key '%.60s' twice", dup);
		r->err_msg = r->err_buf;
		r->err_code = "invalid_json";
		return 400;
	}
	stream = cJSON_GetObjectItemCaseSensitive(r->json, "stream");
	if (stream && !cJSON_IsBool(stream) && !cJSON_IsNull(stream)) {
		r->err_msg = "'stream' must be a boolean";
		r->err_param = "stream";
		r->err_code = "invalid_type";
		return 400;
	}
	r->stream = cJSON_IsTrue(stream);
	return PX_NEXT;
}

/* GET /v1/models (and /v1/models/ID): what the pools serve, with the largest context any pool
 * gives each model (vLLM's max_model_len, which Continue reads). Returns PX_NEXT (forward it) while
 * no pool knows its model yet. */
static int models_local(struct px_req *r)
{
	struct px_server *srv = r->conn->srv;
	const char *url = sh_http_url(r->msg), *want = NULL;
	char id[256];
	cJSON *root, *data, *one = NULL;
	size_t i, j;
	char *text;

	if (strncmp(url, "/v1/models/", 11) == 0) {
		/* the id percent-decoded, without the query: the openai SDK sends org/m as org%2Fm */
		size_t k = 0;
		for (want = url + 11; *want && *want != '?' && k + 1 < sizeof(id); want++) {
			int hi, lo;
			if (*want == '%' && (hi = sh_hexval(want[1])) >= 0 && (lo = sh_hexval(want[2])) >= 0) {
				id[k++] = (char)(hi * 16 + lo);
				want += 2;
			} else {
				id[k++] = *want;
			}
		}
		id[k] = 0;
		want = id;
	}
	for (i = 0; i < srv->n_pools && !*px_pool_model(&srv->pools[i]); i++)
		;
	if (i == srv->n_pools)
		return PX_NEXT;
	root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "object", "list");
	data = cJSON_AddArrayToObject(root, "data");
	for (i = 0; i < srv->n_pools; i++) {
		const char *name = px_pool_model(&srv->pools[i]);
		int64_t len = 0;
		cJSON *m;

		for (j = 0; j < i && strcmp(px_pool_model(&srv->pools[j]), name) != 0; j++)
			;
		if (!*name || j < i)
			continue;  /* unknown, or listed already */
		for (j = i; j < srv->n_pools; j++)
			if (strcmp(px_pool_model(&srv->pools[j]), name) == 0 && px_pool_max_len(&srv->pools[j]) > len)
				len = px_pool_max_len(&srv->pools[j]);
		m = cJSON_CreateObject();
		cJSON_AddStringToObject(m, "id", name);
		cJSON_AddStringToObject(m, "object", "model");
		cJSON_AddNumberToObject(m, "created", (double)srv->t_start_s);
		cJSON_AddStringToObject(m, "owned_by", "kvgate");
		if (len)
			cJSON_AddNumberToObject(m, "max_model_len", (double)len);
		if (want && strcmp(want, name) == 0)
			one = cJSON_Duplicate(m, 1);
		cJSON_AddItemToArray(data, m);
	}
	if (want && !one) {
		cJSON_Delete(root);
		snprintf(r->err_buf, sizeof(r->err_buf), "The model `%.100s` does not exist.", want);
		r->err_msg = r->err_buf;
		r->err_code = "model_not_found";
		r->err_param = "model";
		return 404;
	}
	text = cJSON_PrintUnformatted(one ? one : root);
	cJSON_Delete(one);
	cJSON_Delete(root);
	px_req_reply(r, 200, "application/json", text, strlen(text), NULL);
	free(text);
	return PX_DONE;
}

static int stage_models(struct px_req *r)
{
	return r->route == PX_ROUTE_MODELS && r->method == HTTP_GET ? models_local(r) : PX_NEXT;
}

static int stage_local(struct px_req *r)
{
	struct px_server *srv = r->conn->srv;
	struct evbuffer *b;
	int status;

	if (r->route != PX_ROUTE_HEALTH && r->route != PX_ROUTE_METRICS)
		return PX_NEXT;
	b = evbuffer_new();
	if (r->route == PX_ROUTE_METRICS) {
		px_metrics_render(&srv->met, srv, b);
		status = 200;
	} else {
		status = px_upstream_health_json(srv, b) ? 200 : 503;
	}
	px_req_reply(r, status, r->route == PX_ROUTE_METRICS ? "text/plain; version=0.0.4" : "application/json",
		     (const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b), NULL);
	evbuffer_free(b);
	return PX_DONE;
}

static const struct {
	const char *name;
	int (*run)(struct px_req *r);
} stages[] = {
	{ "check", stage_check },
	{ "local", stage_local },
	{ "auth", px_auth_stage },
	{ "models", stage_models },   /* answered here: no slot, no rate token */
	{ "limit", px_limit_stage },
	{ "body", stage_body },
	{ "count", px_count_stage },
	{ "route", px_route_stage },
	{ "forward", px_forward_stage },
};

void px_req_resume(struct px_req *r, int rc)
{
	while (rc == PX_NEXT && r->stage < SH_ARRAY_LEN(stages))
		rc = stages[r->stage++].run(r);
	if (rc == PX_NEXT) {
		/* the last stage always answers; reaching here is a bug in the table */
		rc = 500;
		r->err_msg = "no stage answered the request";
	}
	if (rc >= 400)
		px_req_error(r, rc, r->err_msg ? r->err_msg : sh_http_reason(rc), r->err_code, r->err_param);
}

void px_req_run(struct px_req *r)
{
	r->state = PX_REQ_RUNNING;
	sh_series_add(r->conn->srv->met.in_flight, 1);
	px_req_resume(r, PX_NEXT);
}
