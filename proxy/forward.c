/* forward.c: relay to and from the engines (see forward.h).
 *
 * Framing to the client: an engine response with Content-Length keeps it; anything else goes out
 * chunked (HTTP/1.1 clients) or close-delimited (HTTP/1.0), one chunk per piece received, so an
 * SSE event is never held back waiting for more. */
#include "forward.h"

#include <cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>

#include "conn.h"
#include "pxmetrics.h"
#include "req.h"
#include "upstream.h"

/* Hop-by-hop headers (RFC 9110 7.6.1) and those kvgate sets itself: never copied across. Looked
 * up by length first: this runs for every header of every request and response. */
static int skip_header(const char *name, size_t len)
{
	static const char *const by_len[][4] = {
		[2] = { "te" },
		[4] = { "host" },
		[6] = { "expect" },
		[7] = { "trailer", "upgrade" },
		[10] = { "connection", "keep-alive" },
		[12] = { "x-request-id" },
		[13] = { "authorization", "x-kvgate-user" },
		[14] = { "content-length" },
		[15] = { "x-forwarded-for" },
		[16] = { "proxy-connection" },
		[17] = { "transfer-encoding" },
	};
	size_t i;

	if (len >= SH_ARRAY_LEN(by_len))
		return 0;
	for (i = 0; i < 4 && by_len[len][i]; i++)
		if (strncasecmp(name, by_len[len][i], len) == 0)
			return 1;
	return 0;
}

/* "name: value\r\n" for every header of m that is not hop-by-hop, lengths known: no printf. */
static void copy_headers(struct evbuffer *out, const struct sh_http_msg *m)
{
	size_t i;

	for (i = 0; i < m->n_hdrs; i++) {
		const struct sh_http_header *h = &m->hdrs[i];
		if (skip_header(m->buf + h->name, h->name_len))
			continue;
		evbuffer_add(out, m->buf + h->name, h->name_len);
		evbuffer_add(out, ": ", 2);
		evbuffer_add(out, m->buf + h->value, h->value_len);
		evbuffer_add(out, "\r\n", 2);
	}
}

static struct evbuffer *client_out(struct px_req *r)
{
	return bufferevent_get_output(r->conn->bev);
}

/* ---- sending ---- */

static void send_request(struct px_req *r, struct px_upconn *uc)
{
	struct evbuffer *out = bufferevent_get_output(uc->bev);
	struct sh_http_msg *m = r->msg;
	size_t len = evbuffer_get_length(r->body);
	const char *url = sh_http_url(m);

	evbuffer_add_printf(out, "%s %s HTTP/1.1\r\nHost: %s\r\n", llhttp_method_name(r->method), url,
			    uc->up->addr);
	copy_headers(out, m);
	/* The user's key stays here; the engine learns who it is for (fairness) by name. */
	evbuffer_add_printf(out, "x-request-id: %s\r\nX-Forwarded-For: %s\r\n", r->rid, r->conn->peer);
	if (r->user)
		evbuffer_add_printf(out, "x-kvgate-user: %s\r\n", r->user->name);
	if (len || (r->method != HTTP_GET && r->method != HTTP_HEAD))
		evbuffer_add_printf(out, "Content-Length: %zu\r\n", len);
	evbuffer_add(out, "\r\n", 2);
	/* The body by reference, not copied (it stays with the request for a retry); a copy only if
	 * libevent refuses the reference. */
	if (len && evbuffer_add_buffer_reference(out, r->body) != 0)
		evbuffer_add(out, evbuffer_pullup(r->body, -1), len);
	sh_series_add(r->conn->srv->met.bytes_to_upstream, (double)len);
	uc->t_sent_us = sh_now_us();
}

static void set_first_byte_timeout(struct px_upconn *uc)
{
	int64_t ms = uc->srv->conf.upstream_first_byte_timeout_ms;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	bufferevent_set_timeouts(uc->bev, &tv, NULL);
}

/* One attempt on an instance other than `exclude`. Returns PX_AGAIN, or an error status. */
static int attempt(struct px_req *r, const struct px_upstream *exclude)
{
	struct px_upstream *up;
	struct px_upconn *uc;

	for (;;) {
		/* the route stage's choice first; retries take the least loaded of the others */
		up = r->route_up && r->attempts == 0 ? r->route_up : px_pool_pick(r->pool, exclude);
		if (!up) {
			snprintf(r->err_buf, sizeof(r->err_buf), "no engine instance of pool '%s' is reachable",
				 r->pool->name);
			r->err_msg = r->err_buf;
			r->err_code = "upstream_unavailable";
			return 503;
		}
		r->up = up;
		r->attempts++;
		uc = px_upconn_get(up);
		if (uc)
			break;
		px_upstream_mark_down(up);
		if (r->attempts >= 2) {
			r->err_msg = "could not open a connection to an engine";
			r->err_code = "upstream_unavailable";
			return 503;
		}
		exclude = up;
	}
	uc->req = r;
	r->uc = uc;
	up->in_flight++;
	if (r->outstanding_on)
		r->outstanding_on->outstanding -= r->tokens_est;
	up->outstanding += r->tokens_est;
	r->outstanding_on = up;
	send_request(r, uc);
	if (uc->reused) {
		set_first_byte_timeout(uc);
	} else {
		int64_t ms = uc->srv->conf.upstream_connect_timeout_ms;
		struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
		bufferevent_set_timeouts(uc->bev, NULL, &tv);
	}
	bufferevent_enable(uc->bev, EV_READ | EV_WRITE);
	return PX_AGAIN;
}

static void outstanding_cleanup(void *arg)
{
	struct px_req *r = arg;

	if (r->outstanding_on)
		r->outstanding_on->outstanding -= r->tokens_est;
	r->outstanding_on = NULL;
}

int px_forward_stage(struct px_req *r)
{
	/* the count stage chose the pool for the routes it reads; others take the first */
	if (!r->pool)
		r->pool = &r->conn->srv->pools[0];
	px_req_cleanup_add(r, outstanding_cleanup, r);
	return attempt(r, NULL);
}

/* ---- failures ---- */

/* The engine failed before sending anything: retry once on another instance, else answer. */
static void retry_or_fail(struct px_upconn *uc, int status, const char *msg, const char *code)
{
	struct px_req *r = uc->req;
	struct px_upstream *failed = uc->up;
	int stale = uc->reused && uc->connected;
	int rc;

	px_upconn_abort(uc);
	sh_series_add(r->conn->srv->met.upstream_errors, 1);
	/* An engine that was connected may have read the request (and died of it): at most two
	 * engines' worth of deliveries, whatever the reason for the retry. */
	if (uc->connected)
		r->deliveries++;
	/* A pooled connection the engine had closed meanwhile is not a failed attempt: try again on
	 * a fresh connection (to any instance). */
	if (r->deliveries >= 2) {
		rc = status;
		r->err_msg = msg;
		r->err_code = code;
	} else if (stale && !(r->stale_retried)) {
		r->stale_retried = 1;
		r->attempts--;
		rc = attempt(r, NULL);
	} else if (r->attempts < 2 && r->pool->n_ups > 1) {
		sh_series_add(r->conn->srv->met.retries, 1);
		rc = attempt(r, failed);
	} else {
		rc = status;
		r->err_msg = msg;
		r->err_code = code;
	}
	if (rc != PX_AGAIN)
		px_req_resume(r, rc);
}

static void fail_mid_response(struct px_upconn *uc, const char *why)
{
	struct px_req *r = uc->req;
	struct evbuffer *out = client_out(r);

	px_upconn_abort(uc);
	sh_series_add(r->conn->srv->met.upstream_errors, 1);
	r->err_msg = why;
	if (!r->head_sent) {
		px_req_error(r, 502, why, "upstream_error", NULL);
		return;
	}
	if (r->sse && r->chunked) {
		/* End the stream with an OpenAI error event the SDKs raise (CLIENTS.md 8). */
		char *err = sh_http_error_json(why, "server_error", NULL, "upstream_error");
		int mid_event = r->bytes_out && !(r->tail[0] == '\n' && r->tail[1] == '\n');
		size_t n = strlen(err) + 8 + (mid_event ? 2 : 0);

		evbuffer_add_printf(out, "%zx\r\n%sdata: %s\n\n\r\n0\r\n\r\n", n, mid_event ? "\n\n" : "", err);
		free(err);
		px_req_finish(r, sh_http_keep_alive(r->msg));
		return;
	}
	/* Anything else cannot signal an error after its head: the client sees the truncation. */
	px_req_finish(r, 0);
}

/* ---- response relay ---- */

static int up_on_headers(struct sh_http_msg *m, void *ud)
{
	struct px_upconn *uc = ud;
	struct px_req *r = uc->req;
	struct evbuffer *out = client_out(r);
	int status = sh_http_status(m);
	const char *ct;

	if (status < 200)
		return 0;  /* interim response: dropped, the real one follows */
	r->status = status;
	ct = sh_http_header(m, "content-type", NULL);
	r->sse = ct && strncasecmp(ct, "text/event-stream", 17) == 0;
	r->stream |= r->sse;  /* for the log when the body was not read */
	evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", status, sh_http_reason(status));
	copy_headers(out, m);
	evbuffer_add_printf(out, "x-request-id: %s\r\n", r->rid);
	if ((m->parser.flags & F_CONTENT_LENGTH) && !sh_http_chunked(m)) {
		evbuffer_add_printf(out, "Content-Length: %llu\r\n", (unsigned long long)m->parser.content_length);
	} else if (status == 204 || status == 304 || r->method == HTTP_HEAD) {
		/* no body */
	} else if (sh_http_version_minor(r->msg) >= 1) {
		r->chunked = 1;
		evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
	} else {
		r->conn->close_after = 1;  /* HTTP/1.0: the end of the body is the end of the connection */
	}
	if (r->conn->close_after || !sh_http_keep_alive(r->msg) || r->conn->srv->draining)
		evbuffer_add(out, "Connection: close\r\n", 19);
	evbuffer_add(out, "\r\n", 2);
	r->head_sent = 1;
	return r->method == HTTP_HEAD ? 1 : 0;
}

static int up_on_body(struct sh_http_msg *m, void *ud, const char *at, size_t len)
{
	struct px_upconn *uc = ud;
	struct px_req *r = uc->req;
	struct evbuffer *out = client_out(r);

	(void)m;
	if (r->status < 200)
		return 0;
	if (r->chunked) {
		/* the chunk-size line by hand: this runs for every event of every stream */
		char hex[20];
		size_t n = sizeof(hex);
		size_t v = len;

		hex[--n] = '\n';
		hex[--n] = '\r';
		do {
			hex[--n] = "0123456789abcdef"[v & 15];
			v >>= 4;
		} while (v);
		evbuffer_add(out, hex + n, sizeof(hex) - n);
		evbuffer_add(out, at, len);
		evbuffer_add(out, "\r\n", 2);
	} else {
		evbuffer_add(out, at, len);
	}
	if (len >= 2) {
		r->tail[0] = at[len - 2];
		r->tail[1] = at[len - 1];
	} else {
		r->tail[0] = r->tail[1];
		r->tail[1] = at[0];
	}
	r->bytes_out += len;
	return 0;
}

static const struct sh_http_cbs up_cbs = { up_on_headers, up_on_body, NULL };

static void up_complete(struct px_upconn *uc)
{
	struct px_req *r = uc->req;
	int reusable = sh_http_keep_alive(&uc->msg) &&
		       evbuffer_get_length(bufferevent_get_input(uc->bev)) == 0;

	if (r->chunked)
		evbuffer_add(client_out(r), "0\r\n\r\n", 5);
	px_upconn_release(uc, reusable);
	px_req_finish(r, sh_http_keep_alive(r->msg));
}

/* Feed what arrived to the response parser; relay; finish or fail. */
static void up_read_cb(struct bufferevent *bev, void *arg)
{
	struct px_upconn *uc = arg;
	struct px_req *r = uc->req;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_iovec v[8];
	int i, n;
	long used, k;

	if (!r) {
		px_upconn_abort(uc);  /* bytes on an idle connection: not a state we can trust */
		return;
	}
	if (!uc->got_bytes) {
		uc->got_bytes = 1;
		r->t_ttfb_us = sh_now_us();
		px_metrics_ttfb(&uc->srv->met, (double)(r->t_ttfb_us - uc->t_sent_us) / 1e6);
		/* from here the longest silence: libevent restarts it at every read and holds it while
		 * reading is off (backpressure) */
		int64_t ms = uc->srv->conf.upstream_read_timeout_ms;
		struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
		bufferevent_set_timeouts(bev, &tv, NULL);
	}
	while ((n = evbuffer_peek(in, -1, NULL, v, 8)) > 0) {
		used = 0;
		for (i = 0; i < n; i++) {
			k = sh_http_msg_feed(&uc->msg, v[i].iov_base, v[i].iov_len);
			if (k < 0)
				break;
			used += k;
			if (uc->msg.state == SH_HTTP_DONE)
				break;
		}
		evbuffer_drain(in, (size_t)used);
		if (uc->msg.state == SH_HTTP_ERROR) {
			fail_mid_response(uc, "the engine sent a malformed response");
			return;
		}
		if (uc->msg.state == SH_HTTP_DONE) {
			if (sh_http_status(&uc->msg) < 200) {
				sh_http_msg_next(&uc->msg);
				continue;
			}
			up_complete(uc);
			return;
		}
		if ((size_t)used == 0)
			break;
	}
	/* Backpressure: the client is not keeping up; stop reading the engine until it drains. */
	if (evbuffer_get_length(client_out(r)) > (size_t)uc->srv->conf.stream_buffer_bytes) {
		uc->paused = 1;
		bufferevent_disable(bev, EV_READ);
		r->conn->up_paused = 1;
		bufferevent_setwatermark(r->conn->bev, EV_WRITE, (size_t)uc->srv->conf.stream_buffer_bytes / 2, 0);
	}
}

static void up_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct px_upconn *uc = arg;
	struct px_req *r = uc->req;

	if (what & BEV_EVENT_CONNECTED) {
		uc->connected = 1;
		px_upstream_mark_up(uc->up);
		if (r)
			set_first_byte_timeout(uc);
		return;
	}
	if (!r) {
		px_upconn_abort(uc);  /* an idle pooled connection closed by the engine */
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (!uc->connected) {
			px_upstream_mark_down(uc->up);
			retry_or_fail(uc, 504, "timed out connecting to the engine", "upstream_timeout");
		} else if (!uc->got_bytes) {
			/* No retry: the engine may be working on it; a second one would double the load. */
			snprintf(r->err_buf, sizeof(r->err_buf), "the engine did not answer within %lld ms",
				 (long long)uc->srv->conf.upstream_first_byte_timeout_ms);
			px_upconn_abort(uc);
			sh_series_add(r->conn->srv->met.upstream_errors, 1);
			r->err_msg = r->err_buf;
			r->err_code = "upstream_timeout";
			px_req_resume(r, 504);
		} else {
			fail_mid_response(uc, "timed out reading from the engine");
		}
		return;
	}
	/* EOF or error */
	if (uc->got_bytes && (what & BEV_EVENT_EOF) && sh_http_msg_eof(&uc->msg) == SH_OK &&
	    sh_http_status(&uc->msg) >= 200) {
		up_complete(uc);  /* a close-delimited body ends here */
		return;
	}
	if (!uc->got_bytes) {
		if (!uc->connected)
			px_upstream_mark_down(uc->up);
		retry_or_fail(uc, 503,
			      uc->connected ? "the engine closed the connection without answering"
					    : "could not connect to any engine instance",
			      "upstream_unavailable");
		return;
	}
	(void)bev;
	fail_mid_response(uc, "the engine closed the connection mid-response");
}

void px_forward_setup(struct px_upconn *uc)
{
	sh_http_msg_init(&uc->msg, HTTP_RESPONSE, &up_cbs, uc);
	uc->msg.max_header_bytes = 65536;
	uc->msg.max_headers = 200;
	bufferevent_setcb(uc->bev, up_read_cb, NULL, up_event_cb, uc);
}
