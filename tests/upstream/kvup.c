/* kvup.c: a small OpenAI-shaped engine simulator, the test upstream of the integration tests and the
 * "direct" baseline of the proxy benchmark. Single-threaded, libevent bufferevents + llhttp, so that
 * it controls every byte it sends (event-by-event chunks, an abrupt close mid-stream, a request it
 * never answers) and notices at once when its peer goes away (streams_cancelled).
 *
 *   kvup --port N [--host 127.0.0.1] [--name NAME] [--max-model-len N]
 *   kvup --port N --blackhole     listen, never accept, keep the accept queue full: a connect()
 *                                 to the port hangs (the upstream of connect-timeout tests)
 *
 * Endpoints (every response carries `x-kvup-name: NAME`):
 *   GET  /health                     200 {"status":"ok"}
 *   GET  /v1/models                  one model: id NAME (or "test-model"), max_model_len
 *   POST /v1/chat/completions        chat.completion, or an SSE stream when the body's "stream" is true
 *   POST /v1/completions, /v1/beta/completions    text_completion, same stream framing
 *   POST /v1/embeddings, /v1/responses            small fixed answers (non-stream only)
 *   ANY  /v1/echo                    {"method","path","version","headers":{lowercased: value},"body"}
 *   GET  /kvup/stats                 counters (see stats_json)
 * Per-request behaviour, from request headers:
 *   x-kvup-events: E      content tokens in the answer (default 5)
 *   x-kvup-delay-ms: D    stream: D ms between events; non-stream: D ms before the answer
 *   x-kvup-die-after: K   stream: send K events (data: lines) then close the TCP connection, with no
 *                         terminating chunk; non-stream: close without answering (K is ignored)
 *   x-kvup-hang: 1        never answer (the connection stays open until the peer closes it)
 *   x-kvup-status: S      answer status S with an OpenAI-shaped error body
 *   x-kvup-pad: N         non-stream: N bytes of padding ('x') appended to the content
 * Malformed JSON in a completions body: 400 invalid_request_error. "requests" in the stats counts
 * every request except GET /health (counted as health_checks) and /kvup/...; requests_cancelled
 * counts non-stream requests (delayed or hanging) whose connection the peer closed before the answer,
 * streams_cancelled streams whose connection the peer closed before the end, streams_died the
 * streams cut by x-kvup-die-after. */
#include "sh.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <llhttp.h>

#define KVUP_MAX_URL       8192            /* bytes of request target */
#define KVUP_MAX_HDR_BYTES (256 * 1024)    /* bytes of header names and values of one request */
#define KVUP_MAX_HDRS      512             /* header lines of one request */
#define KVUP_MAX_BODY      (64u << 20)     /* bytes of one request body */
#define KVUP_MAX_INPUT     (64u << 20)     /* bytes of unparsed input kept while a stream runs */
#define KVUP_STREAM_HWM    (256 * 1024)    /* stop writing stream events past this much output */
#define KVUP_MAX_PAD       (64 << 20)      /* bytes of x-kvup-pad */
#define KVUP_MAX_EVENTS    10000000        /* x-kvup-events */

/* A growable byte buffer, capped by its users. */
struct buf {
	char *p;
	size_t len, cap;
};

static int buf_add(struct buf *b, const char *s, size_t n, size_t max)
{
	if (b->len + n > max)
		return -1;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = sh_realloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

struct hdr {
	size_t name_off, name_len;   /* in req.hbuf */
	size_t val_off, val_len;
};

enum kind { K_CHAT, K_COMPL };

/* A stream in progress: events are numbered from 0; see stream_event(). */
struct stream {
	enum kind kind;
	int tokens;          /* content events */
	int next;            /* next event to write */
	int n_events;        /* data: lines in all, [DONE] included */
	int die_after;       /* close after this many events; -1: never */
	int delay_ms;        /* between events */
	int include_usage;
	int prompt_tokens;
	long long created;
	char id[48];
	char model[128];     /* JSON-safe (see safe_model) */
};

enum cstate {
	C_READ,       /* parsing requests; none is being answered */
	C_DELAYED,    /* a non-stream answer waits for its delay timer */
	C_STREAM,     /* an SSE answer is being written */
	C_HANG,       /* a request that is never answered */
	C_CLOSING,    /* flush the output, then close */
};

struct conn {
	struct bufferevent *bev;
	llhttp_t parser;
	enum cstate state;
	struct event *timer;         /* delay between events; created on first use */
	int keep_alive;              /* of the request being answered */
	int die_on_flush;            /* close with no terminating chunk once the output is written */
	int have_req;                /* a complete request waits for handle_request */
	int parse_error;
	int too_big;
	/* the request being parsed, then answered */
	struct buf url;
	struct buf hbuf;
	struct hdr hdrs[KVUP_MAX_HDRS];
	int n_hdrs;
	int in_field;
	struct buf body;
	llhttp_method_t method;
	int http_minor;
	struct stream st;
	struct evbuffer *delayed;    /* C_DELAYED: the whole answer, written when the timer fires */
};

static struct {
	const char *name;            /* x-kvup-name and the model id */
	int max_model_len;
	long long requests, health_checks, streams_started, streams_completed, streams_cancelled;
	long long requests_cancelled, streams_died, open_connections, connections_total;
	long long seq;               /* for response ids */
	struct event_base *base;
	llhttp_settings_t settings;
} g;

static void conn_process(struct conn *c);
static void stream_pump(struct conn *c);

static void conn_free(struct conn *c)
{
	if (!c)
		return;
	if (c->state == C_STREAM)
		g.streams_cancelled++;
	else if (c->state == C_DELAYED || c->state == C_HANG)
		g.requests_cancelled++;
	bufferevent_free(c->bev);
	if (c->timer)
		event_free(c->timer);
	if (c->delayed)
		evbuffer_free(c->delayed);
	free(c->url.p);
	free(c->hbuf.p);
	free(c->body.p);
	free(c);
	g.open_connections--;
}

/* The value of request header NAME (case-insensitive), NUL-terminated in place, or NULL. */
static const char *req_header(struct conn *c, const char *name)
{
	size_t n = strlen(name);

	for (int i = 0; i < c->n_hdrs; i++) {
		struct hdr *h = &c->hdrs[i];
		if (h->name_len == n && strncasecmp(c->hbuf.p + h->name_off, name, n) == 0)
			return c->hbuf.p + h->val_off;   /* NUL-terminated by on_header_value_complete */
	}
	return NULL;
}

/* Integer header value in [lo, hi], else dflt. */
static long header_long(struct conn *c, const char *name, long dflt, long lo, long hi)
{
	const char *v = req_header(c, name);
	char *end;
	long x;

	if (!v || !*v)
		return dflt;
	errno = 0;
	x = strtol(v, &end, 10);
	if (errno || end == v || x < lo || x > hi)
		return dflt;
	return x;
}

/* ---- llhttp callbacks: collect one request ---- */

static int on_message_begin(llhttp_t *p)
{
	struct conn *c = p->data;

	c->url.len = 0;
	c->hbuf.len = 0;
	c->body.len = 0;
	c->n_hdrs = 0;
	c->in_field = 0;
	return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
	struct conn *c = p->data;

	if (buf_add(&c->url, at, n, KVUP_MAX_URL) < 0) {
		c->too_big = 1;
		return -1;
	}
	return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
	struct conn *c = p->data;

	if (!c->in_field) {
		if (c->n_hdrs == KVUP_MAX_HDRS) {
			c->too_big = 1;
			return -1;
		}
		c->hdrs[c->n_hdrs].name_off = c->hbuf.len;
		c->in_field = 1;
	}
	if (buf_add(&c->hbuf, at, n, KVUP_MAX_HDR_BYTES) < 0) {
		c->too_big = 1;
		return -1;
	}
	return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
	struct conn *c = p->data;
	struct hdr *h = &c->hdrs[c->n_hdrs];

	h->name_len = c->hbuf.len - h->name_off;
	/* a NUL between name and value, so that names can be read as C strings too */
	if (buf_add(&c->hbuf, "", 1, KVUP_MAX_HDR_BYTES) < 0) {
		c->too_big = 1;
		return -1;
	}
	h->val_off = c->hbuf.len;
	c->in_field = 0;
	return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
	struct conn *c = p->data;

	if (buf_add(&c->hbuf, at, n, KVUP_MAX_HDR_BYTES) < 0) {
		c->too_big = 1;
		return -1;
	}
	return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
	struct conn *c = p->data;
	struct hdr *h = &c->hdrs[c->n_hdrs];

	h->val_len = c->hbuf.len - h->val_off;
	if (buf_add(&c->hbuf, "", 1, KVUP_MAX_HDR_BYTES) < 0) {   /* values as C strings */
		c->too_big = 1;
		return -1;
	}
	c->n_hdrs++;
	return 0;
}

static int on_headers_complete(llhttp_t *p)
{
	struct conn *c = p->data;
	const char *e = req_header(c, "expect");

	c->method = llhttp_get_method(p);
	c->http_minor = llhttp_get_http_minor(p);
	if (e && strcasecmp(e, "100-continue") == 0)
		bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
	return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
	struct conn *c = p->data;

	if (buf_add(&c->body, at, n, KVUP_MAX_BODY) < 0) {
		c->too_big = 1;
		return -1;
	}
	return 0;
}

static int on_message_complete(llhttp_t *p)
{
	struct conn *c = p->data;

	c->keep_alive = llhttp_should_keep_alive(p);
	c->have_req = 1;
	return HPE_PAUSED;   /* answer it before parsing the next (pipelined) one */
}

/* ---- responses ---- */

static const char *reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 413: return "Payload Too Large";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Status";
	}
}

static const char *error_type(int status)
{
	switch (status) {
	case 400: case 404: case 405: case 413: case 431: return "invalid_request_error";
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 429: return "rate_limit_error";
	default: return status >= 500 ? "server_error" : "invalid_request_error";
	}
}

/* Queue a complete answer (status line, headers, body) into out. */
static void put_response(struct conn *c, struct evbuffer *out, int status, const char *ctype,
			 struct evbuffer *body)
{
	evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			    "x-kvup-name: %s\r\n%s\r\n", status, reason(status), ctype,
			    evbuffer_get_length(body), g.name, c->keep_alive ? "" : "Connection: close\r\n");
	evbuffer_add_buffer(out, body);
}

/* The answer goes out now, or after the request's x-kvup-delay-ms. Takes body. */
static void send_response(struct conn *c, int status, const char *ctype, struct evbuffer *body,
			  int delay_ms)
{
	if (delay_ms > 0) {
		struct timeval tv = { delay_ms / 1000, (delay_ms % 1000) * 1000 };
		c->delayed = evbuffer_new();
		put_response(c, c->delayed, status, ctype, body);
		evbuffer_free(body);
		c->state = C_DELAYED;
		evtimer_add(c->timer, &tv);
		return;
	}
	put_response(c, bufferevent_get_output(c->bev), status, ctype, body);
	evbuffer_free(body);
	if (!c->keep_alive)
		c->state = C_CLOSING;
}

static void send_json(struct conn *c, int status, const char *json, int delay_ms)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add(b, json, strlen(json));
	send_response(c, status, "application/json", b, delay_ms);
}

static void send_error(struct conn *c, int status, const char *msg, const char *code)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *err = cJSON_AddObjectToObject(root, "error");
	char *s;

	cJSON_AddStringToObject(err, "message", msg);
	cJSON_AddStringToObject(err, "type", error_type(status));
	cJSON_AddNullToObject(err, "param");
	if (code)
		cJSON_AddStringToObject(err, "code", code);
	else
		cJSON_AddNullToObject(err, "code");
	s = cJSON_PrintUnformatted(root);
	send_json(c, status, s, 0);
	free(s);
	cJSON_Delete(root);
}

/* Copy the body's model into dst as a string safe to paste into JSON. */
static void safe_model(char *dst, size_t cap, const cJSON *req)
{
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(req, "model");
	const char *s = cJSON_IsString(m) && m->valuestring[0] ? m->valuestring : g.name;
	size_t i;

	for (i = 0; s[i] && i + 1 < cap; i++)
		dst[i] = (isalnum((unsigned char)s[i]) || strchr("._:/-@+", s[i])) ? s[i] : '_';
	dst[i] = '\0';
}

/* ---- streams ---- */

/* Write event i of the stream as one chunk of the chunked body. */
static void stream_event(struct conn *c, int i)
{
	struct stream *st = &c->st;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	char ev[1024], head[512];
	const char *obj = st->kind == K_CHAT ? "chat.completion.chunk" : "text_completion";
	int first = st->kind == K_CHAT ? 1 : 0;    /* events before the content tokens */
	int n;

	/* sizes: id < 48, model < 128: head and ev never truncate */
	snprintf(head, sizeof(head), "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,"
		 "\"model\":\"%s\",\"system_fingerprint\":null,", st->id, obj, st->created, st->model);
	if (i == st->n_events - 1) {
		n = snprintf(ev, sizeof(ev), "data: [DONE]\n\n");
	} else if (st->kind == K_CHAT && i == 0) {
		n = snprintf(ev, sizeof(ev), "data: %s\"choices\":[{\"index\":0,\"delta\":{\"role\":"
			     "\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],"
			     "\"usage\":null}\n\n", head);
	} else if (i < first + st->tokens) {
		int t = i - first;
		if (st->kind == K_CHAT)
			n = snprintf(ev, sizeof(ev), "data: %s\"choices\":[{\"index\":0,\"delta\":{\"content\":"
				     "\"tok%d \"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
				     head, t);
		else
			n = snprintf(ev, sizeof(ev), "data: %s\"choices\":[{\"index\":0,\"text\":\"tok%d \","
				     "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n", head, t);
	} else if (i == first + st->tokens) {
		if (st->kind == K_CHAT)
			n = snprintf(ev, sizeof(ev), "data: %s\"choices\":[{\"index\":0,\"delta\":{},"
				     "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n", head);
		else
			n = snprintf(ev, sizeof(ev), "data: %s\"choices\":[{\"index\":0,\"text\":\"\","
				     "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n", head);
	} else {   /* the usage chunk */
		n = snprintf(ev, sizeof(ev), "data: %s\"choices\":[],\"usage\":{\"prompt_tokens\":%d,"
			     "\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", head, st->prompt_tokens,
			     st->tokens, st->prompt_tokens + st->tokens);
	}
	evbuffer_add_printf(out, "%x\r\n", n);
	evbuffer_add(out, ev, (size_t)n);
	evbuffer_add(out, "\r\n", 2);
}

/* Write what the stream may write now: one event per timer tick with a delay, else up to the
 * high watermark (the write callback calls again as the output drains). */
static void stream_pump(struct conn *c)
{
	struct stream *st = &c->st;
	struct evbuffer *out = bufferevent_get_output(c->bev);

	while (c->state == C_STREAM) {
		if (st->die_after >= 0 && st->next >= st->die_after) {
			c->die_on_flush = 1;
			c->state = C_CLOSING;
			g.streams_died++;
			return;
		}
		if (st->next == st->n_events) {
			evbuffer_add(out, "0\r\n\r\n", 5);
			g.streams_completed++;
			c->state = c->keep_alive ? C_READ : C_CLOSING;
			return;
		}
		if (st->delay_ms <= 0 && evbuffer_get_length(out) >= KVUP_STREAM_HWM)
			return;
		stream_event(c, st->next++);
		if (st->delay_ms > 0) {
			struct timeval tv = { st->delay_ms / 1000, (st->delay_ms % 1000) * 1000 };
			evtimer_add(c->timer, &tv);
			return;
		}
	}
}

static void start_stream(struct conn *c, enum kind kind, const cJSON *req)
{
	struct stream *st = &c->st;
	const cJSON *so = cJSON_GetObjectItemCaseSensitive(req, "stream_options");

	memset(st, 0, sizeof(*st));
	st->kind = kind;
	st->tokens = (int)header_long(c, "x-kvup-events", 5, 0, KVUP_MAX_EVENTS);
	st->delay_ms = (int)header_long(c, "x-kvup-delay-ms", 0, 0, 3600000);
	st->die_after = (int)header_long(c, "x-kvup-die-after", -1, 0, INT_MAX);
	st->include_usage = cJSON_IsObject(so) &&
		cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
	st->n_events = (kind == K_CHAT ? 1 : 0) + st->tokens + 1 + st->include_usage + 1;
	st->prompt_tokens = (int)(c->body.len / 4 + 1);
	st->created = sh_wall_s();
	snprintf(st->id, sizeof(st->id), "%s-kvup-%lld", kind == K_CHAT ? "chatcmpl" : "cmpl", ++g.seq);
	safe_model(st->model, sizeof(st->model), req);
	g.streams_started++;
	c->state = C_STREAM;
	evbuffer_add_printf(bufferevent_get_output(c->bev), "HTTP/1.1 200 OK\r\nContent-Type: "
			    "text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
			    "x-kvup-name: %s\r\n%s\r\n", g.name, c->keep_alive ? "" : "Connection: close\r\n");
	stream_pump(c);
}

/* ---- endpoints ---- */

static void answer_completion(struct conn *c, enum kind kind)
{
	cJSON *req = cJSON_ParseWithLength(c->body.p ? c->body.p : "", c->body.len);
	struct evbuffer *b;
	const cJSON *mt;
	char model[128];
	int tokens, pad, prompt;
	long long max_tokens;

	if (!cJSON_IsObject(req)) {
		cJSON_Delete(req);
		send_error(c, 400, "kvup: the request body is not a JSON object", NULL);
		return;
	}
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "stream"))) {
		start_stream(c, kind, req);
		cJSON_Delete(req);
		return;
	}
	tokens = (int)header_long(c, "x-kvup-events", 5, 0, KVUP_MAX_EVENTS);
	pad = (int)header_long(c, "x-kvup-pad", 0, 0, KVUP_MAX_PAD);
	prompt = (int)(c->body.len / 4 + 1);
	safe_model(model, sizeof(model), req);
	mt = cJSON_GetObjectItemCaseSensitive(req, "max_tokens");
	max_tokens = cJSON_IsNumber(mt) ? (long long)mt->valuedouble : -1;
	cJSON_Delete(req);
	b = evbuffer_new();
	evbuffer_add_printf(b, "{\"id\":\"%s-kvup-%lld\",\"object\":\"%s\",\"created\":%lld,\"model\":"
			    "\"%s\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,",
			    kind == K_CHAT ? "chatcmpl" : "cmpl", ++g.seq,
			    kind == K_CHAT ? "chat.completion" : "text_completion", (long long)sh_wall_s(),
			    model);
	evbuffer_add_printf(b, kind == K_CHAT ? "\"message\":{\"role\":\"assistant\",\"content\":\""
			    : "\"text\":\"");
	for (int i = 0; i < tokens; i++)
		evbuffer_add_printf(b, "tok%d ", i);
	if (pad > 0) {
		char x[4096];
		memset(x, 'x', sizeof(x));
		for (int left = pad; left > 0; left -= (int)sizeof(x))
			evbuffer_add(b, x, (size_t)SH_MIN(left, (int)sizeof(x)));
	}
	/* kvup_max_tokens: the max_tokens it was sent (-1: none), so tests see what a proxy forwarded */
	evbuffer_add_printf(b, "\"%s,\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{"
			    "\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d},"
			    "\"kvup_max_tokens\":%lld}",
			    kind == K_CHAT ? "}" : "", prompt, tokens, prompt + tokens, max_tokens);
	send_response(c, 200, "application/json", b,
		      (int)header_long(c, "x-kvup-delay-ms", 0, 0, 3600000));
}

static void answer_echo(struct conn *c)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *h = cJSON_AddObjectToObject(root, "headers");
	char ver[8];
	char *s;

	cJSON_AddStringToObject(root, "method", llhttp_method_name(c->method));
	cJSON_AddStringToObject(root, "path", c->url.p ? c->url.p : "");
	snprintf(ver, sizeof(ver), "1.%d", c->http_minor);
	cJSON_AddStringToObject(root, "version", ver);
	for (int i = 0; i < c->n_hdrs; i++) {
		struct hdr *hd = &c->hdrs[i];
		char *name = c->hbuf.p + hd->name_off;
		const char *val = c->hbuf.p + hd->val_off;
		cJSON *old;

		for (size_t k = 0; k < hd->name_len; k++)
			name[k] = (char)tolower((unsigned char)name[k]);
		old = cJSON_GetObjectItemCaseSensitive(h, name);
		if (old) {   /* repeated header: joined with ", " */
			size_t n = strlen(old->valuestring) + 2 + hd->val_len + 1;
			char *j = sh_malloc(n);
			snprintf(j, n, "%s, %s", old->valuestring, val);
			cJSON_ReplaceItemInObjectCaseSensitive(h, name, cJSON_CreateString(j));
			free(j);
		} else {
			cJSON_AddStringToObject(h, name, val);
		}
	}
	cJSON_AddStringToObject(root, "body", c->body.p ? c->body.p : "");
	s = cJSON_PrintUnformatted(root);
	send_json(c, 200, s, (int)header_long(c, "x-kvup-delay-ms", 0, 0, 3600000));
	free(s);
	cJSON_Delete(root);
}

static void answer_stats(struct conn *c)
{
	char s[640];

	snprintf(s, sizeof(s), "{\"name\":\"%s\",\"requests\":%lld,\"requests_cancelled\":%lld,"
		 "\"health_checks\":%lld,\"streams_started\":%lld,\"streams_completed\":%lld,"
		 "\"streams_cancelled\":%lld,\"streams_died\":%lld,\"open_connections\":%lld,"
		 "\"connections_total\":%lld}", g.name, g.requests, g.requests_cancelled,
		 g.health_checks, g.streams_started, g.streams_completed, g.streams_cancelled,
		 g.streams_died, g.open_connections, g.connections_total);
	send_json(c, 200, s, 0);
}

static void answer_models(struct conn *c)
{
	char s[512];

	snprintf(s, sizeof(s), "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"model\","
		 "\"created\":1700000000,\"owned_by\":\"kvup\",\"max_model_len\":%d}]}",
		 g.name, g.max_model_len);
	send_json(c, 200, s, (int)header_long(c, "x-kvup-delay-ms", 0, 0, 3600000));
}

static void answer_fixed(struct conn *c, const char *json)
{
	cJSON *req = cJSON_ParseWithLength(c->body.p ? c->body.p : "", c->body.len);

	if (!cJSON_IsObject(req))
		send_error(c, 400, "kvup: the request body is not a JSON object", NULL);
	else
		send_json(c, 200, json, (int)header_long(c, "x-kvup-delay-ms", 0, 0, 3600000));
	cJSON_Delete(req);
}

static int path_is(struct conn *c, const char *path)
{
	size_t n = strlen(path);
	const char *u = c->url.p ? c->url.p : "";

	return strncmp(u, path, n) == 0 && (u[n] == '\0' || u[n] == '?');
}

static void handle_request(struct conn *c)
{
	int post = c->method == HTTP_POST, get = c->method == HTTP_GET || c->method == HTTP_HEAD;
	long status;

	if (path_is(c, "/kvup/stats")) {
		answer_stats(c);
		return;
	}
	if (path_is(c, "/health") && get) {
		g.health_checks++;
		send_json(c, 200, "{\"status\":\"ok\"}", 0);
		return;
	}
	g.requests++;
	if (header_long(c, "x-kvup-hang", 0, 0, 1)) {
		c->state = C_HANG;
		return;
	}
	status = header_long(c, "x-kvup-status", 0, 100, 599);
	if (status >= 200) {
		char msg[96];
		snprintf(msg, sizeof(msg), "kvup: status %ld on request (x-kvup-status)", status);
		send_error(c, (int)status, msg, "kvup_forced");
		return;
	}
	if (header_long(c, "x-kvup-die-after", -1, 0, INT_MAX) >= 0 && !path_is(c, "/v1/chat/completions")
	    && !path_is(c, "/v1/completions") && !path_is(c, "/v1/beta/completions")) {
		c->die_on_flush = 1;
		c->state = C_CLOSING;
		return;
	}
	if (path_is(c, "/v1/echo")) {
		answer_echo(c);
	} else if (path_is(c, "/v1/models")) {
		if (get)
			answer_models(c);
		else
			send_error(c, 405, "kvup: method not allowed", NULL);
	} else if (path_is(c, "/v1/chat/completions") || path_is(c, "/v1/completions") ||
		   path_is(c, "/v1/beta/completions")) {
		if (!post) {
			send_error(c, 405, "kvup: method not allowed", NULL);
			return;
		}
		if (header_long(c, "x-kvup-die-after", -1, 0, INT_MAX) >= 0) {
			/* a non-stream answer that dies: close without answering */
			cJSON *req = cJSON_ParseWithLength(c->body.p ? c->body.p : "", c->body.len);
			int stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "stream"));
			cJSON_Delete(req);
			if (!stream) {
				c->die_on_flush = 1;
				c->state = C_CLOSING;
				return;
			}
		}
		answer_completion(c, path_is(c, "/v1/chat/completions") ? K_CHAT : K_COMPL);
	} else if (path_is(c, "/v1/embeddings") && post) {
		answer_fixed(c, "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,"
			     "\"embedding\":[0.0,0.5,1.0]}],\"model\":\"kvup\",\"usage\":{\"prompt_tokens\":1,"
			     "\"total_tokens\":1}}");
	} else if (path_is(c, "/v1/responses") && post) {
		answer_fixed(c, "{\"id\":\"resp-kvup\",\"object\":\"response\",\"status\":\"completed\","
			     "\"model\":\"kvup\",\"output\":[{\"type\":\"message\",\"role\":\"assistant\","
			     "\"content\":[{\"type\":\"output_text\",\"text\":\"tok0 \"}]}],\"usage\":{"
			     "\"input_tokens\":1,\"output_tokens\":1,\"total_tokens\":2}}");
	} else {
		send_error(c, 404, "kvup: unknown path", NULL);
	}
}

/* ---- connection I/O ---- */

/* Parse and answer buffered requests while no answer is in progress. */
static void conn_process(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);

	while (c->state == C_READ) {
		struct evbuffer_iovec v;
		llhttp_errno_t e;
		size_t used;

		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			return;
		e = llhttp_execute(&c->parser, v.iov_base, v.iov_len);
		if (e == HPE_OK) {
			used = v.iov_len;
		} else if (e == HPE_PAUSED) {
			used = (size_t)(llhttp_get_error_pos(&c->parser) - (const char *)v.iov_base);
			llhttp_resume(&c->parser);
		} else {
			c->keep_alive = 0;
			send_error(c, c->too_big ? 413 : 400, c->too_big ? "kvup: request too large"
				   : "kvup: malformed HTTP request", NULL);
			c->state = C_CLOSING;
			evbuffer_drain(in, evbuffer_get_length(in));
			return;
		}
		evbuffer_drain(in, used);
		if (c->have_req) {
			c->have_req = 0;
			handle_request(c);
		}
	}
}

/* Called last by each event callback (never inside a parse, STYLE.md rule 9): a connection that is
 * closing goes once its output is written. A dying stream's close is a plain close right after its
 * last event: the peer sees the end of the connection where the next chunk should be. */
static void conn_check_close(struct conn *c)
{
	if (c->state == C_CLOSING && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_free(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	(void)fd, (void)what;

	if (c->state == C_DELAYED) {
		evbuffer_add_buffer(bufferevent_get_output(c->bev), c->delayed);
		evbuffer_free(c->delayed);
		c->delayed = NULL;
		c->state = c->keep_alive ? C_READ : C_CLOSING;
		conn_process(c);
	} else if (c->state == C_STREAM) {
		stream_pump(c);
		if (c->state == C_READ)
			conn_process(c);
	}
	conn_check_close(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->state == C_READ) {
		conn_process(c);
	} else if (evbuffer_get_length(bufferevent_get_input(bev)) > KVUP_MAX_INPUT) {
		conn_free(c);
		return;
	}
	conn_check_close(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	(void)bev;

	if (c->state == C_STREAM && c->st.delay_ms <= 0) {
		stream_pump(c);
		if (c->state == C_READ)
			conn_process(c);
	}
	conn_check_close(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		/* the peer closed (or reset): an unfinished stream counts as cancelled in conn_free.
		 * A half-close with an answer still to write: flush it first. */
		if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) &&
		    (c->state == C_READ || c->state == C_CLOSING) &&
		    evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
			c->state = C_CLOSING;
			bufferevent_disable(c->bev, EV_READ);
			return;
		}
		conn_free(c);
	}
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
		      void *arg)
{
	struct conn *c = sh_calloc(1, sizeof(*c));
	int one = 1;
	(void)l, (void)sa, (void)len, (void)arg;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->bev = bufferevent_socket_new(g.base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->timer = evtimer_new(g.base, on_timer, c);
	llhttp_init(&c->parser, HTTP_REQUEST, &g.settings);
	c->parser.data = c;
	c->state = C_READ;
	g.open_connections++;
	g.connections_total++;
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig, (void)what, (void)arg;
	event_base_loopbreak(g.base);
}

static void usage(void)
{
	fprintf(stderr, "usage: kvup --port N [--host 127.0.0.1] [--name NAME] [--max-model-len N]"
		" [--blackhole]\n");
	exit(2);
}

/* --blackhole: a listener with a backlog of 0 that never accepts, filled by its own connections
 * (Linux then drops new SYNs: the peer's connect() hangs until its own timeout). Never returns. */
static int blackhole(const struct sockaddr_in *sin)
{
	int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);

	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (const struct sockaddr *)sin, sizeof(*sin)) < 0 || listen(lfd, 0) < 0) {
		fprintf(stderr, "kvup: cannot listen: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; i < 8; i++) {   /* the queue holds backlog+1; a few more in SYN_SENT is fine */
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		connect(fd, (const struct sockaddr *)sin, sizeof(*sin));
	}
	fprintf(stderr, "kvup: blackhole on port %d\n", ntohs(sin->sin_port));
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1";
	long port = -1;
	int hole = 0;
	struct sockaddr_in sin;
	struct evconnlistener *lst;
	struct event *sterm, *sint;
	socklen_t slen = sizeof(sin);

	g.name = "test-model";
	g.max_model_len = 4096;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--blackhole") == 0) {
			hole = 1;
			continue;
		}
		if (!v)
			usage();
		if (strcmp(a, "--port") == 0)
			port = strtol(v, NULL, 10);
		else if (strcmp(a, "--host") == 0)
			host = v;
		else if (strcmp(a, "--name") == 0)
			g.name = v;
		else if (strcmp(a, "--max-model-len") == 0)
			g.max_model_len = (int)strtol(v, NULL, 10);
		else
			usage();
		i++;
	}
	for (const char *s = g.name; *s; s++)   /* pasted into JSON and headers as is */
		if (!isalnum((unsigned char)*s) && !strchr("._:/-@+", *s)) {
			fprintf(stderr, "kvup: --name: only [A-Za-z0-9._:/-@+]\n");
			return 2;
		}
	if (port < 0 || port > 65535 || g.max_model_len <= 0)
		usage();
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
		fprintf(stderr, "kvup: --host: an IPv4 address, not %s\n", host);
		return 2;
	}
	if (hole)
		return blackhole(&sin);
	signal(SIGPIPE, SIG_IGN);
	llhttp_settings_init(&g.settings);
	g.settings.on_message_begin = on_message_begin;
	g.settings.on_url = on_url;
	g.settings.on_header_field = on_header_field;
	g.settings.on_header_field_complete = on_header_field_complete;
	g.settings.on_header_value = on_header_value;
	g.settings.on_header_value_complete = on_header_value_complete;
	g.settings.on_headers_complete = on_headers_complete;
	g.settings.on_body = on_body;
	g.settings.on_message_complete = on_message_complete;
	g.base = event_base_new();
	lst = evconnlistener_new_bind(g.base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE |
				      LEV_OPT_REUSEABLE, 1024, (struct sockaddr *)&sin, sizeof(sin));
	if (!lst) {
		fprintf(stderr, "kvup: cannot listen on %s:%ld: %s\n", host, port, strerror(errno));
		return 1;
	}
	getsockname(evconnlistener_get_fd(lst), (struct sockaddr *)&sin, &slen);
	fprintf(stderr, "kvup: %s listening on %s:%d\n", g.name, host, ntohs(sin.sin_port));
	sterm = evsignal_new(g.base, SIGTERM, on_signal, NULL);
	sint = evsignal_new(g.base, SIGINT, on_signal, NULL);
	evsignal_add(sterm, NULL);
	evsignal_add(sint, NULL);
	event_base_dispatch(g.base);
	event_free(sterm);
	event_free(sint);
	evconnlistener_free(lst);
	event_base_free(g.base);
	return 0;
}
