/* upstream.h: engine instances, their pools and pooled keep-alive connections to them.
 * Health is passive: a failed connect marks an instance down for UPSTREAM_BACKOFF_MS, during
 * which it is chosen only when nothing else is left. */
#ifndef PX_UPSTREAM_H
#define PX_UPSTREAM_H

#include "px.h"

struct px_upconn {
	struct px_server *srv;
	struct px_upstream *up;
	struct bufferevent *bev;
	struct sh_http_msg msg;          /* the response being read */
	struct px_req *req;              /* NULL while idle in the pool */
	struct px_upconn *next;          /* idle list, or srv->dead_up */
	int64_t t_sent_us;
	unsigned reused:1, connected:1, got_bytes:1, dead:1, paused:1;
};

/* Build srv->pools from the configuration. */
int px_upstreams_init(struct px_server *srv, struct sh_err *err);
void px_upstreams_release(struct px_server *srv);

/* The instance to use: least in flight among healthy ones (round-robin among equals), never
 * `exclude`. NULL when there is none. */
struct px_upstream *px_pool_pick(struct px_pool *pool, const struct px_upstream *exclude);

/* A connection to up: a pooled idle one, or a new one connecting. NULL if no socket. */
struct px_upconn *px_upconn_get(struct px_upstream *up);

/* The response ended cleanly: back to the idle pool if it may be reused, else closed. */
void px_upconn_release(struct px_upconn *uc, int reusable);

/* Close now (error, client gone); its request, if any, is detached first. */
void px_upconn_abort(struct px_upconn *uc);

/* Reading was paused for backpressure: go on. */
void px_upconn_resume(struct px_upconn *uc);

void px_upstream_mark_down(struct px_upstream *up);
void px_upstream_mark_up(struct px_upstream *up);

/* Free closed upstream connections (outside their callbacks). */
void px_upconn_reap(struct px_server *srv);

/* /health body; returns 1 if at least one instance is usable. */
int px_upstream_health_json(struct px_server *srv, struct evbuffer *out);

#endif
