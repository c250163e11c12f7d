/* limit.c: per-user rates, slots and queues (see limit.h). */
#include "limit.h"

#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "pxmetrics.h"
#include "req.h"

enum wait_state { WAIT_QUEUED, WAIT_GRANTED, WAIT_HOLDING, WAIT_DONE };

struct px_wait {
	struct px_req *r;
	struct px_user *u;
	enum wait_state state;
	struct event *ev;               /* queue timeout; also fired when a slot is granted */
	int64_t t_queued_us;
	struct px_wait *prev, *next;
};

static void refill(struct px_user *u, int64_t now)
{
	double dt = (double)(now - u->bucket_at_us) / 60e6;  /* minutes */

	u->bucket_at_us = now;
	if (u->lim.requests_per_minute)
		u->rpm_bucket = fmin((double)u->lim.requests_per_minute,
				     u->rpm_bucket + dt * (double)u->lim.requests_per_minute);
	if (u->lim.tokens_per_minute)
		u->tpm_bucket = fmin((double)u->lim.tokens_per_minute,
				     u->tpm_bucket + dt * (double)u->lim.tokens_per_minute);
}

/* 429 for a condition that passes, with the message already in r->err_buf: Retry-After in whole
 * seconds (at least 1), and the x-ratelimit-* headers clients understand (CLIENTS.md). */
static int too_many(struct px_req *r, const char *reason, double wait_s)
{
	struct px_user *u = r->user;
	long long secs = (long long)ceil(wait_s < 1 ? 1 : wait_s);
	size_t o;

	/* refused after all (concurrency, queue, tokens): the request does not count against the
	 * requests per minute; a client that retries as told would otherwise spend them all on 429s */
	if (r->rpm_charged) {
		u->rpm_bucket = fmin((double)u->lim.requests_per_minute, u->rpm_bucket + 1);
		r->rpm_charged = 0;
	}
	r->err_msg = r->err_buf;
	r->err_code = "rate_limit_exceeded";
	o = (size_t)snprintf(r->err_hdrs, sizeof(r->err_hdrs),
			     "Retry-After: %lld\r\nretry-after-ms: %lld\r\nx-should-retry: true\r\n", secs,
			     (long long)(wait_s * 1000 + 0.5));
	if (u->lim.requests_per_minute && o < sizeof(r->err_hdrs))
		snprintf(r->err_hdrs + o, sizeof(r->err_hdrs) - o,
			 "x-ratelimit-limit-requests: %lld\r\nx-ratelimit-remaining-requests: %lld\r\n"
			 "x-ratelimit-reset-requests: %.3fs\r\n",
			 (long long)u->lim.requests_per_minute, (long long)floor(u->rpm_bucket),
			 u->rpm_bucket >= 1 ? 0.0 : (1 - u->rpm_bucket) * 60.0 / (double)u->lim.requests_per_minute);
	px_metrics_reject(&r->conn->srv->met, u, reason);
	return 429;
}

static void take_slot(struct px_user *u)
{
	u->in_flight++;
	sh_series_set(u->m_in_flight, u->in_flight);
}

static void unlink_wait(struct px_wait *w)
{
	struct px_user *u = w->u;

	if (w->prev)
		w->prev->next = w->next;
	else
		u->wait_head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		u->wait_tail = w->prev;
	w->prev = w->next = NULL;
	u->n_waiting--;
}

/* A slot came free: the oldest waiting request takes it (resumed from the event loop, not from
 * inside the releasing request's cleanup). */
static void release_slot(struct px_user *u)
{
	struct px_wait *w;

	u->in_flight--;
	sh_series_set(u->m_in_flight, u->in_flight);
	w = u->wait_head;
	if (w && (!u->lim.max_concurrent || u->in_flight < u->lim.max_concurrent)) {
		unlink_wait(w);
		take_slot(u);
		w->state = WAIT_GRANTED;
		evtimer_del(w->ev);
		event_active(w->ev, EV_TIMEOUT, 0);
	}
}

static void wait_cleanup(void *arg)
{
	struct px_wait *w = arg;

	if (w->state == WAIT_QUEUED)
		unlink_wait(w);
	else if (w->state == WAIT_GRANTED || w->state == WAIT_HOLDING)
		release_slot(w->u);
	w->r->wait = NULL;
	event_free(w->ev);
	free(w);
}

static void wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct px_wait *w = arg;
	struct px_req *r = w->r;
	struct px_server *srv = r->conn->srv;

	(void)fd;
	(void)what;
	sh_series_observe(srv->met.queue_time, srv->met.queue_time_all,
			  (double)(sh_now_us() - w->t_queued_us) / 1e6);
	if (w->state == WAIT_GRANTED) {
		w->state = WAIT_HOLDING;
		px_req_resume(r, PX_NEXT);
		return;
	}
	/* timed out in the queue */
	unlink_wait(w);
	w->state = WAIT_DONE;
	snprintf(r->err_buf, sizeof(r->err_buf), "waited %lld ms for one of your %lld request slots; retry later",
		 (long long)w->u->lim.queue_timeout_ms, (long long)w->u->lim.max_concurrent);
	px_req_resume(r, too_many(r, "queue_timeout", 1.0));
}

int px_limit_stage(struct px_req *r)
{
	struct px_user *u = r->user;
	struct px_server *srv = r->conn->srv;
	struct px_wait *w;
	int64_t now = sh_now_us();

	if (!u)
		return PX_NEXT;  /* /health, /metrics */
	refill(u, now);
	if (u->lim.requests_per_minute) {
		if (u->rpm_bucket < 1) {
			snprintf(r->err_buf, sizeof(r->err_buf), "rate limit reached: %lld requests per minute",
				 (long long)u->lim.requests_per_minute);
			return too_many(r, "requests_per_minute",
					(1 - u->rpm_bucket) * 60.0 / (double)u->lim.requests_per_minute);
		}
		u->rpm_bucket -= 1;
		r->rpm_charged = 1;
	}
	w = sh_calloc(1, sizeof(*w));
	w->r = r;
	w->u = u;
	w->ev = evtimer_new(srv->base, wait_cb, w);
	w->t_queued_us = now;
	r->wait = w;
	px_req_cleanup_add(r, wait_cleanup, w);
	if (!u->lim.max_concurrent || (u->in_flight < u->lim.max_concurrent && !u->wait_head)) {
		take_slot(u);
		w->state = WAIT_HOLDING;
		return PX_NEXT;
	}
	if (u->n_waiting >= u->lim.queue) {
		w->state = WAIT_DONE;
		snprintf(r->err_buf, sizeof(r->err_buf), "too many requests in flight: your limit is %lld at once",
			 (long long)u->lim.max_concurrent);
		return too_many(r, "concurrency", 1.0);
	}
	/* wait in line */
	{
		int64_t ms = u->lim.queue_timeout_ms;
		struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
		w->state = WAIT_QUEUED;
		w->prev = u->wait_tail;
		if (u->wait_tail)
			u->wait_tail->next = w;
		else
			u->wait_head = w;
		u->wait_tail = w;
		u->n_waiting++;
		evtimer_add(w->ev, &tv);
	}
	return PX_AGAIN;
}

int px_limit_tokens(struct px_req *r, int64_t tokens)
{
	struct px_user *u = r->user;

	if (!u || !u->lim.tokens_per_minute)
		return PX_NEXT;
	refill(u, sh_now_us());
	if (tokens > u->lim.tokens_per_minute) {
		/* can never pass: not a 429 */
		snprintf(r->err_buf, sizeof(r->err_buf),
			 "this request needs %lld tokens (prompt + max_tokens) but your limit is %lld tokens per minute",
			 (long long)tokens, (long long)u->lim.tokens_per_minute);
		r->err_msg = r->err_buf;
		r->err_code = "tokens_per_minute_exceeded";
		px_metrics_reject(&r->conn->srv->met, u, "tokens_too_large");
		return 400;
	}
	if (u->tpm_bucket < (double)tokens) {
		snprintf(r->err_buf, sizeof(r->err_buf), "rate limit reached: %lld tokens per minute (this request: %lld)",
			 (long long)u->lim.tokens_per_minute, (long long)tokens);
		return too_many(r, "tokens_per_minute",
				((double)tokens - u->tpm_bucket) * 60.0 / (double)u->lim.tokens_per_minute);
	}
	u->tpm_bucket -= (double)tokens;
	return PX_NEXT;
}
