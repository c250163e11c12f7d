/* pxmetrics.h: kvgate's Prometheus metrics (names documented in README). */
#ifndef PX_PXMETRICS_H
#define PX_PXMETRICS_H

#include "px.h"

void px_metrics_init(struct px_metrics *m);
void px_metrics_release(struct px_metrics *m);
/* A request ended: count it by route and status, observe its duration and bytes. */
void px_metrics_request(struct px_metrics *m, const struct px_req *r);
/* A request refused by a limit or the key check; u NULL when the user is unknown. */
void px_metrics_reject(struct px_metrics *m, const struct px_user *u, const char *reason);
void px_metrics_ttfb(struct px_metrics *m, double seconds);
void px_metrics_render(struct px_metrics *m, struct px_server *srv, struct evbuffer *out);

#endif
