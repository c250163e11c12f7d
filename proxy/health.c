/* health.c: active checks of the engines (see health.h). */
#include "health.h"

#include <cJSON.h>
#include <event2/buffer.h>
#include <inttypes.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "pindex.h"
#include "pxlog.h"
#include "upstream.h"

/* A state report lists up to a whole cache of block hashes (18 bytes each). */
#define CHECK_MAX_BODY (16 << 20)

enum check_step { CHECK_IDLE, CHECK_HEALTH, CHECK_MODELS, CHECK_STATE };

struct px_check {
	struct px_server *srv;
	struct px_upstream *up;
	struct event *timer;
	struct bufferevent *bev;        /* NULL between checks */
	struct sh_http_msg msg;
	struct evbuffer *body;
	enum check_step step;
};

static int on_body(struct sh_http_msg *m, void *ud, const char *at, size_t len)
{
	struct px_check *ck = ud;

	(void)m;
	return evbuffer_add(ck->body, at, len);
}

static const struct sh_http_cbs check_cbs = { NULL, on_body, NULL };

static void check_end(struct px_check *ck)
{
	if (ck->bev) {
		bufferevent_free(ck->bev);
		ck->bev = NULL;
	}
	sh_http_msg_release(&ck->msg);
	evbuffer_drain(ck->body, evbuffer_get_length(ck->body));
	ck->step = CHECK_IDLE;
}

static void failed(struct px_check *ck, const char *why)
{
	struct px_upstream *up = ck->up;

	check_end(ck);
	up->check_fails++;
	if (up->check_fails >= ck->srv->conf.health_fails && (up->healthy || up->retry_at_us != INT64_MAX)) {
		px_log("engine %s ejected after %d failed checks (%s)", up->addr, up->check_fails, why);
		px_upstream_mark_down(up);
		up->retry_at_us = INT64_MAX;  /* only a passing check brings it back */
	}
}

static void passed(struct px_check *ck)
{
	struct px_upstream *up = ck->up;

	if (!up->healthy || up->draining)
		px_log("engine %s %s", up->addr, up->draining ? "is taking requests again" : "re-admitted");
	up->check_fails = 0;
	up->draining = 0;
	px_upstream_mark_up(up);
}

/* /v1/models: {"data":[{"id":..,"max_model_len":..}, ...]} */
static void read_models(struct px_check *ck)
{
	size_t len = evbuffer_get_length(ck->body);
	cJSON *j = cJSON_ParseWithLength((const char *)evbuffer_pullup(ck->body, -1), len);
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "data"), *m0 = cJSON_GetArrayItem(d, 0);
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(m0, "id");
	const cJSON *mml = cJSON_GetObjectItemCaseSensitive(m0, "max_model_len");

	if (cJSON_IsString(id)) {
		snprintf(ck->up->model, sizeof(ck->up->model), "%s", id->valuestring);
		if (cJSON_IsNumber(mml) && mml->valuedouble >= 1 && mml->valuedouble <= 1e12)
			ck->up->max_model_len = (int64_t)mml->valuedouble;
		px_log("engine %s serves \"%s\" (max_model_len %lld)", ck->up->addr, ck->up->model,
		       (long long)ck->up->max_model_len);
	}
	cJSON_Delete(j);
}

/* DESIGN.md contract 2: {"seq", "reset", "added": [hex], "evicted": [hex], ...}: the blocks the
 * engine's prefix cache gained and lost since our last seq; the index becomes exact. */
static void read_state(struct px_check *ck)
{
	struct px_upstream *up = ck->up;
	size_t len = evbuffer_get_length(ck->body);
	cJSON *j = cJSON_ParseWithLength((const char *)evbuffer_pullup(ck->body, -1), len);
	const cJSON *seq = cJSON_GetObjectItemCaseSensitive(j, "seq");
	const cJSON *add = cJSON_GetObjectItemCaseSensitive(j, "added");
	const cJSON *ev = cJSON_GetObjectItemCaseSensitive(j, "evicted"), *h;
	uint64_t v;

	if (!cJSON_IsNumber(seq) || !cJSON_IsArray(add) || !cJSON_IsArray(ev)) {
		up->state_report = 0;
		cJSON_Delete(j);
		return;
	}
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "reset")))
		px_pindex_clear(up->index);
	cJSON_ArrayForEach(h, ev)
		if (cJSON_IsString(h) && sscanf(h->valuestring, "%16" SCNx64, &v) == 1)
			px_pindex_remove(up->index, v);
	cJSON_ArrayForEach(h, add)
		if (cJSON_IsString(h) && sscanf(h->valuestring, "%16" SCNx64, &v) == 1)
			px_pindex_add(up->index, &v, 1);
	up->state_seq = (uint64_t)seq->valuedouble;
	up->state_report = 1;
	cJSON_Delete(j);
}

static void send_get(struct px_check *ck, const char *path)
{
	sh_http_msg_next(&ck->msg);
	evbuffer_drain(ck->body, evbuffer_get_length(ck->body));
	evbuffer_add_printf(bufferevent_get_output(ck->bev),
			    "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kvgate-health\r\n\r\n", path, ck->up->addr);
}

static void check_read_cb(struct bufferevent *bev, void *arg)
{
	struct px_check *ck = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_iovec v[4];
	int i, n, status;
	long k;

	while ((n = evbuffer_peek(in, -1, NULL, v, 4)) > 0 && ck->msg.state != SH_HTTP_DONE) {
		size_t used = 0;
		for (i = 0; i < n; i++) {
			k = sh_http_msg_feed(&ck->msg, v[i].iov_base, v[i].iov_len);
			if (k < 0) {
				failed(ck, "malformed response");
				return;
			}
			used += (size_t)k;
			if (ck->msg.state == SH_HTTP_DONE)
				break;
		}
		evbuffer_drain(in, used);
		if (used == 0)
			break;
	}
	if (ck->msg.state != SH_HTTP_DONE)
		return;
	status = sh_http_status(&ck->msg);
	if (ck->step == CHECK_STATE) {
		if (status == 200 && ck->up->index)
			read_state(ck);
		else
			ck->up->state_report = 0;  /* not an engine of ours (vLLM, a test engine) */
		check_end(ck);
		return;
	}
	if (ck->step == CHECK_MODELS && status == 200)
		read_models(ck);
	if (ck->step == CHECK_HEALTH && status == 200)
		passed(ck);
	if (status == 200 || ck->step == CHECK_MODELS) {
		/* then, on the same connection: the models until known, the cache report while it works */
		if (!sh_http_keep_alive(&ck->msg)) {
			check_end(ck);
		} else if (ck->step == CHECK_HEALTH && !ck->up->model[0]) {
			ck->step = CHECK_MODELS;
			send_get(ck, "/v1/models");
		} else if (ck->up->state_report != 0) {
			char path[64];
			snprintf(path, sizeof(path), "/kvgate/state?since=%llu", (unsigned long long)ck->up->state_seq);
			ck->step = CHECK_STATE;
			send_get(ck, path);
		} else {
			check_end(ck);
		}
		return;
	}
	if (status == 503 && evbuffer_search(ck->body, "draining", 8, NULL).pos >= 0) {
		if (!ck->up->draining)
			px_log("engine %s is draining: no new requests go to it", ck->up->addr);
		ck->up->draining = 1;
		ck->up->check_fails = 0;
		check_end(ck);
		return;
	}
	failed(ck, status == 503 ? "503" : "unexpected status");
}

static void check_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct px_check *ck = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED)
		return;
	if (ck->step == CHECK_MODELS || ck->step == CHECK_STATE) {
		check_end(ck);  /* the health part passed; the rest is asked again next time */
		return;
	}
	failed(ck, what & BEV_EVENT_TIMEOUT ? "timed out" : "connection failed");
}

static void check_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct px_check *ck = arg;
	struct px_conf *cf = &ck->srv->conf;
	struct timeval to = { (time_t)(cf->health_timeout_ms / 1000), (suseconds_t)(cf->health_timeout_ms % 1000) * 1000 };
	struct timeval every = { (time_t)(cf->health_interval_ms / 1000),
				 (suseconds_t)(cf->health_interval_ms % 1000) * 1000 };

	(void)fd;
	(void)what;
	evtimer_add(ck->timer, &every);
	if (ck->step != CHECK_IDLE) {
		failed(ck, "still running at the next interval");
		return;
	}
	ck->bev = bufferevent_socket_new(ck->srv->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!ck->bev)
		return;
	sh_http_msg_init(&ck->msg, HTTP_RESPONSE, &check_cbs, ck);
	ck->msg.max_body = CHECK_MAX_BODY;
	bufferevent_setcb(ck->bev, check_read_cb, NULL, check_event_cb, ck);
	bufferevent_set_timeouts(ck->bev, &to, &to);
	ck->step = CHECK_HEALTH;
	if (bufferevent_socket_connect(ck->bev, (struct sockaddr *)&ck->up->sa, ck->up->salen) < 0) {
		failed(ck, "connect failed");
		return;
	}
	send_get(ck, "/health");
	bufferevent_enable(ck->bev, EV_READ | EV_WRITE);
}

void px_health_start(struct px_server *srv)
{
	size_t i, j;
	struct timeval now = { 0, 0 };

	if (!srv->conf.health_interval_ms)
		return;
	for (i = 0; i < srv->n_pools; i++) {
		for (j = 0; j < srv->pools[i].n_ups; j++) {
			struct px_check *ck = sh_calloc(1, sizeof(*ck));
			ck->srv = srv;
			ck->up = &srv->pools[i].ups[j];
			ck->up->check = ck;
			ck->up->state_report = -1;
			ck->body = evbuffer_new();
			ck->timer = evtimer_new(srv->base, check_timer_cb, ck);
			evtimer_add(ck->timer, &now);  /* the first check at once: learn models early */
		}
	}
}

void px_health_stop(struct px_server *srv)
{
	size_t i, j;

	for (i = 0; i < srv->n_pools; i++) {
		for (j = 0; j < srv->pools[i].n_ups; j++) {
			struct px_check *ck = srv->pools[i].ups[j].check;
			if (!ck)
				continue;
			check_end(ck);
			event_free(ck->timer);
			evbuffer_free(ck->body);
			free(ck);
			srv->pools[i].ups[j].check = NULL;
		}
	}
}
