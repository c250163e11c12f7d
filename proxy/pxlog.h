/* pxlog.h: the access log (one line per request) and the error log (standard error). */
#ifndef PX_PXLOG_H
#define PX_PXLOG_H

#include "px.h"

/* Open (or reopen, on SIGHUP) the access log named by srv->conf.access_log. */
int px_log_open(struct px_server *srv, struct sh_err *err);
void px_log_close(struct px_server *srv);
void px_log_access(struct px_server *srv, const struct px_req *r);
/* "kvgate: ..." on standard error, with a timestamp. */
void px_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
