/* upstream.c: pools, instances, pooled connections (see upstream.h). The callbacks that read
 * responses live in forward.c; this file owns creation, pooling and freeing. */
#include "upstream.h"

#include <cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "forward.h"
#include "net.h"

#define UPSTREAM_BACKOFF_MS 2000

int px_upstreams_init(struct px_server *srv, struct sh_err *err)
{
	struct px_conf *cf = &srv->conf;
	size_t i, j;
	char labels[300];

	srv->n_pools = cf->n_pools;
	srv->pools = sh_calloc(cf->n_pools, sizeof(*srv->pools));
	for (i = 0; i < cf->n_pools; i++) {
		struct px_pool *p = &srv->pools[i];
		struct px_pool_conf *pc = &cf->pools[i];

		p->name = pc->name;
		p->srv = srv;
		p->max_model_len = pc->max_model_len;
		p->n_ups = pc->n_upstreams;
		p->ups = sh_calloc(p->n_ups, sizeof(*p->ups));
		for (j = 0; j < p->n_ups; j++) {
			struct px_upstream *u = &p->ups[j];
			u->addr = pc->upstreams[j];
			u->pool = p;
			u->healthy = 1;
			if (sh_net_addr(u->addr, &u->sa, &u->salen, err))
				return sh_errf(err, "pools[%zu].upstreams[%zu]: %s", i, j, err->msg);
			snprintf(labels, sizeof(labels), "pool=\"%.100s\",upstream=\"%.100s\"", p->name, u->addr);
			u->m_healthy = sh_series_get(srv->met.up_healthy, labels);
			sh_series_set(u->m_healthy, 1);
		}
	}
	return SH_OK;
}

void px_upstreams_release(struct px_server *srv)
{
	size_t i, j;

	for (i = 0; i < srv->n_pools; i++) {
		for (j = 0; j < srv->pools[i].n_ups; j++) {
			struct px_upconn *uc;
			while ((uc = srv->pools[i].ups[j].idle)) {
				srv->pools[i].ups[j].idle = uc->next;
				uc->next = NULL;
				px_upconn_abort(uc);
			}
		}
	}
	if (!srv->free_ev)
		px_upconn_reap(srv);  /* not serving: nothing to defer to */
	for (i = 0; i < srv->n_pools; i++)
		free(srv->pools[i].ups);
	free(srv->pools);
	srv->pools = NULL;
	srv->n_pools = 0;
}

static int usable(const struct px_upstream *u, int64_t now)
{
	return u->healthy || now >= u->retry_at_us;
}

struct px_upstream *px_pool_pick(struct px_pool *pool, const struct px_upstream *exclude)
{
	struct px_upstream *best = NULL, *fallback = NULL;
	int64_t now = sh_now_us();
	size_t k;

	for (k = 0; k < pool->n_ups; k++) {
		struct px_upstream *u = &pool->ups[(pool->rr + k) % pool->n_ups];
		if (u == exclude || u->draining)
			continue;
		if (!usable(u, now)) {
			if (!fallback || u->retry_at_us < fallback->retry_at_us)
				fallback = u;
			continue;
		}
		if (!best || u->in_flight < best->in_flight)
			best = u;
	}
	pool->rr++;
	/* Every other instance is down: try the one that failed longest ago, rather than refuse. */
	return best ? best : fallback;
}

void px_upstream_mark_down(struct px_upstream *u)
{
	u->healthy = 0;
	u->retry_at_us = sh_now_us() + UPSTREAM_BACKOFF_MS * 1000LL;
	sh_series_set(u->m_healthy, 0);
}

void px_upstream_mark_up(struct px_upstream *u)
{
	u->healthy = 1;
	sh_series_set(u->m_healthy, 1);
}

struct px_upconn *px_upconn_get(struct px_upstream *up)
{
	struct px_server *srv;
	struct px_upconn *uc = up->idle;

	if (uc) {
		up->idle = uc->next;
		up->n_idle--;
		uc->next = NULL;
		uc->reused = 1;
		return uc;
	}
	srv = up->pool->srv;
	uc = sh_calloc(1, sizeof(*uc));
	uc->srv = srv;
	uc->up = up;
	uc->bev = bufferevent_socket_new(srv->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!uc->bev) {
		free(uc);
		return NULL;
	}
	px_forward_setup(uc);
	/* a long prompt in one write, a burst of events in one read (libevent's default is 16 KB) */
	bufferevent_set_max_single_read(uc->bev, 128 * 1024);
	bufferevent_set_max_single_write(uc->bev, 128 * 1024);
	if (bufferevent_socket_connect(uc->bev, (struct sockaddr *)&up->sa, up->salen) < 0) {
		bufferevent_free(uc->bev);
		sh_http_msg_release(&uc->msg);
		free(uc);
		return NULL;
	}
	/* Without it, a request over one segment (libevent writes at most 16 KB at a time) waits for
	 * the engine's delayed ACK: 40 ms per large prompt. */
	setsockopt(bufferevent_getfd(uc->bev), IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
	return uc;
}

static void close_uc(struct px_upconn *uc)
{
	struct px_server *srv = uc->srv;

	if (uc->dead)
		return;
	uc->dead = 1;
	bufferevent_disable(uc->bev, EV_READ | EV_WRITE);
	bufferevent_setcb(uc->bev, NULL, NULL, NULL, NULL);
	uc->next = srv->dead_up;
	srv->dead_up = uc;
	if (srv->free_ev)
		event_active(srv->free_ev, EV_TIMEOUT, 0);
}

void px_upconn_release(struct px_upconn *uc, int reusable)
{
	struct px_upstream *up = uc->up;

	if (uc->req) {
		uc->req->uc = NULL;
		uc->req = NULL;
		up->in_flight--;
	}
	if (!reusable || up->n_idle >= up->pool->srv->conf.upstream_keepalive || up->pool->srv->draining) {
		close_uc(uc);
		return;
	}
	sh_http_msg_next(&uc->msg);
	bufferevent_set_timeouts(uc->bev, NULL, NULL);
	bufferevent_enable(uc->bev, EV_READ);  /* to see the engine close it */
	uc->paused = 0;
	uc->got_bytes = 0;
	uc->next = up->idle;
	up->idle = uc;
	up->n_idle++;
}

void px_upconn_abort(struct px_upconn *uc)
{
	if (uc->req) {
		uc->req->uc = NULL;
		uc->req = NULL;
		uc->up->in_flight--;
	} else if (!uc->dead) {
		/* idle: unlink from the pool */
		struct px_upconn **p = &uc->up->idle;
		while (*p && *p != uc)
			p = &(*p)->next;
		if (*p) {
			*p = uc->next;
			uc->up->n_idle--;
		}
	}
	close_uc(uc);
}

void px_upconn_resume(struct px_upconn *uc)
{
	if (uc->paused && !uc->dead) {
		uc->paused = 0;
		bufferevent_enable(uc->bev, EV_READ);
	}
}

void px_upconn_reap(struct px_server *srv)
{
	struct px_upconn *uc;

	while ((uc = srv->dead_up)) {
		srv->dead_up = uc->next;
		bufferevent_free(uc->bev);
		sh_http_msg_release(&uc->msg);
		free(uc);
	}
}

int px_upstream_health_json(struct px_server *srv, struct evbuffer *out)
{
	cJSON *root = cJSON_CreateObject(), *arr;
	int64_t now = sh_now_us();
	int any = 0;
	size_t i, j;
	char *s;

	arr = cJSON_CreateArray();
	for (i = 0; i < srv->n_pools; i++) {
		for (j = 0; j < srv->pools[i].n_ups; j++) {
			struct px_upstream *u = &srv->pools[i].ups[j];
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "address", u->addr);
			cJSON_AddStringToObject(o, "pool", srv->pools[i].name);
			cJSON_AddBoolToObject(o, "healthy", u->healthy);
			cJSON_AddNumberToObject(o, "in_flight", u->in_flight);
			cJSON_AddNumberToObject(o, "idle_connections", u->n_idle);
			cJSON_AddItemToArray(arr, o);
			any |= usable(u, now);
		}
	}
	cJSON_AddStringToObject(root, "status", any ? "ok" : "unavailable");
	cJSON_AddItemToObject(root, "upstreams", arr);
	s = cJSON_PrintUnformatted(root);
	evbuffer_add(out, s, strlen(s));
	free(s);
	cJSON_Delete(root);
	return any;
}
