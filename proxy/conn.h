/* conn.h: client connections: read and parse requests one at a time (pipelined requests wait in
 * the input buffer), timeouts, deferred free (STYLE.md rule 9). */
#ifndef PX_CONN_H
#define PX_CONN_H

#include "px.h"

/* Take an accepted socket. tls: wrap it in TLS with srv->ssl_ctx. */
void px_conn_accept(struct px_server *srv, int fd, const struct sockaddr *sa, int tls);

/* Close now: the request in progress (if any) is aborted, its cleanups run, the upstream
 * connection is closed; memory is freed later, outside callbacks. Safe to call twice. */
void px_conn_close(struct px_conn *c);

/* Close once the output is flushed; reads nothing more. */
void px_conn_close_after_write(struct px_conn *c);

/* A request finished: take the next pipelined one, or wait idle. */
void px_conn_next(struct px_conn *c);

/* Free connections and upstream connections marked dead (called from srv->free_ev). */
void px_conn_reap(struct px_server *srv);

/* Drain (SIGTERM): close idle connections now; busy ones close after their response. */
void px_conn_drain_all(struct px_server *srv);

#endif
