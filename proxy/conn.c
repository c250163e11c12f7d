/* conn.c: client connections (see conn.h). The connection owns the HTTP parser; a request object
 * lives from the first byte of a request to the end of its response (proxy/req.c). While a
 * request is being answered the parser is paused and later pipelined bytes wait in the input
 * buffer, so responses go out in order. */
#include "conn.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "net.h"
#include "req.h"
#include "upstream.h"

/* Input kept while a request is being answered: pipelined bytes beyond this stop reading. */
#define CONN_INPUT_HIGH (256 * 1024)
/* Bytes per read() or write() on a client connection. */
#define CONN_IO_MAX (128 * 1024)

static void conn_parse(struct px_conn *c);

static void arm_timer(struct px_conn *c, int64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
	evtimer_add(c->timer, &tv);
}

/* ---- parser callbacks ---- */

static void on_begin(struct sh_http_msg *m, void *ud)
{
	struct px_conn *c = ud;

	(void)m;
	c->req = px_req_new(c);
	arm_timer(c, c->srv->conf.header_timeout_ms);
}

static int on_headers(struct sh_http_msg *m, void *ud)
{
	struct px_conn *c = ud;

	(void)m;
	return px_req_headers(c->req);
}

static int on_body(struct sh_http_msg *m, void *ud, const char *at, size_t len)
{
	struct px_conn *c = ud;

	(void)m;
	return evbuffer_add(c->req->body, at, len);
}

static const struct sh_http_cbs conn_cbs = { on_headers, on_body, on_begin };

/* ---- reading ---- */

/* Feed buffered input to the parser until a request completes (then run it) or input runs out.
 * Loops rather than recursing when requests are answered at once (pipelined local answers). */
static void conn_parse(struct px_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer_iovec v[8];
	int i, n;
	long used;

	if (c->in_parse)
		return;
	c->in_parse = 1;
	while (!c->dead && !c->close_after && (!c->req || c->req->state == PX_REQ_READING)) {
		n = evbuffer_peek(in, -1, NULL, v, 8);
		if (n <= 0)
			break;
		used = 0;
		for (i = 0; i < n && c->msg.state != SH_HTTP_DONE; i++) {
			long k = sh_http_msg_feed(&c->msg, v[i].iov_base, v[i].iov_len);
			if (k < 0)
				break;
			used += k;
		}
		evbuffer_drain(in, (size_t)used);
		if (c->msg.state == SH_HTTP_ERROR) {
			px_req_parse_error(c);
			break;
		}
		if (c->msg.state == SH_HTTP_DONE) {
			evtimer_del(c->timer);
			px_req_run(c->req);
			continue;
		}
		break;  /* all input consumed, message incomplete */
	}
	c->in_parse = 0;
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	conn_parse(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct px_conn *c = arg;

	if (c->close_after && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		px_conn_close(c);
		return;
	}
	/* Below the low watermark again: let the upstream flow (STYLE.md rule 15). */
	if (c->up_paused) {
		c->up_paused = 0;
		bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
		if (c->req && c->req->uc)
			px_upconn_resume(c->req->uc);
	}
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct px_conn *c = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		/* TLS handshake done */
		c->handshaken = 1;
		sh_series_add(c->srv->met.tls_ok, 1);
		return;
	}
	if (c->tls && !c->handshaken && (what & BEV_EVENT_ERROR))
		sh_series_add(c->srv->met.tls_fail, 1);
	px_conn_close(c);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct px_conn *c = arg;

	(void)fd;
	(void)what;
	if (c->req && c->req->state == PX_REQ_READING && c->msg.state != SH_HTTP_IDLE) {
		px_req_error(c->req, 408, "timed out reading the request", "request_timeout", NULL);
		px_conn_close_after_write(c);
		return;
	}
	px_conn_close(c);  /* idle keep-alive */
}

/* ---- lifecycle ---- */

void px_conn_accept(struct px_server *srv, int fd, const struct sockaddr *sa, int tls)
{
	struct px_conn *c;
	struct px_conf *cf = &srv->conf;

	/* Far past the cap: refuse without spending anything on it. */
	if (srv->draining || srv->n_conns >= cf->max_connections + 64) {
		close(fd);
		return;
	}
	c = sh_calloc(1, sizeof(*c));
	c->srv = srv;
	c->tls = tls;
	c->t_accept_us = sh_now_us();
	c->over_cap = srv->n_conns >= cf->max_connections;
	sh_net_ntop(sa, c->peer, sizeof(c->peer));
	if (tls) {
		SSL *ssl = SSL_new(srv->ssl_ctx);
		if (!ssl) {
			close(fd);
			free(c);
			return;
		}
		c->bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
							BEV_OPT_CLOSE_ON_FREE);
		bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	} else {
		c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (!c->bev) {
		close(fd);
		free(c);
		return;
	}
	sh_http_msg_init(&c->msg, HTTP_REQUEST, &conn_cbs, c);
	c->msg.max_header_bytes = (size_t)cf->max_header_bytes;
	c->msg.max_headers = (size_t)cf->max_headers;
	c->msg.max_body = (size_t)cf->max_body_bytes;
	c->timer = evtimer_new(srv->base, conn_timer_cb, c);
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, CONN_INPUT_HIGH);
	/* libevent reads and writes at most 16 KB per call by default: a long prompt takes several
	 * trips through the loop. */
	bufferevent_set_max_single_read(c->bev, CONN_IO_MAX);
	bufferevent_set_max_single_write(c->bev, CONN_IO_MAX);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	/* The first request must start within the header timeout. */
	arm_timer(c, cf->header_timeout_ms);

	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
	srv->n_conns++;
	sh_series_set(srv->met.conns_open, srv->n_conns);
	sh_series_add(srv->met.conns_total, 1);
}

void px_conn_close(struct px_conn *c)
{
	struct px_server *srv = c->srv;

	if (c->dead)
		return;
	c->dead = 1;
	if (c->req)
		px_req_abort(c->req);
	bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	evtimer_del(c->timer);
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	srv->n_conns--;
	sh_series_set(srv->met.conns_open, srv->n_conns);
	c->next_dead = srv->dead;
	srv->dead = c;
	event_active(srv->free_ev, EV_TIMEOUT, 0);
	if (srv->draining && srv->n_conns == 0)
		event_base_loopexit(srv->base, NULL);
}

void px_conn_close_after_write(struct px_conn *c)
{
	if (c->dead)
		return;
	c->close_after = 1;
	bufferevent_disable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		px_conn_close(c);
	else
		bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
}

void px_conn_next(struct px_conn *c)
{
	if (c->dead)
		return;
	if (c->close_after || c->srv->draining) {
		px_conn_close_after_write(c);
		return;
	}
	sh_http_msg_next(&c->msg);
	arm_timer(c, c->srv->conf.idle_timeout_ms);
	if (!c->in_parse)
		conn_parse(c);
}

void px_conn_reap(struct px_server *srv)
{
	struct px_conn *c;

	while ((c = srv->dead)) {
		srv->dead = c->next_dead;
		bufferevent_free(c->bev);
		event_free(c->timer);
		sh_http_msg_release(&c->msg);
		free(c);
	}
	px_upconn_reap(srv);
}

void px_conn_drain_all(struct px_server *srv)
{
	struct px_conn *c, *next;

	for (c = srv->conns; c; c = next) {
		next = c->next;
		if (!c->req || (c->req->state == PX_REQ_READING && c->msg.state == SH_HTTP_IDLE))
			px_conn_close(c);
	}
}
