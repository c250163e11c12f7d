/* req.h: the request object and its stages (STYLE.md rule 2). A request is created at its first
 * byte, runs the stage table once complete, and is freed in one go when its response ends, fails
 * or the client goes away; external resources are released by cleanup hooks (rule 8). */
#ifndef PX_REQ_H
#define PX_REQ_H

#include "px.h"

struct px_req *px_req_new(struct px_conn *c);

/* Headers complete (from the parser): classify the route, answer Expect: 100-continue. Returns
 * 0, or -1 with msg->err_status set. */
int px_req_headers(struct px_req *r);

/* The request is complete: run the stages from r->stage. */
void px_req_run(struct px_req *r);

/* A stage that returned PX_AGAIN calls this when its I/O is done, with PX_NEXT to go on, PX_DONE
 * if it answered, or an HTTP status (r->err_* set) to answer an error. */
void px_req_resume(struct px_req *r, int rc);

/* The parser refused the input (bad framing, over a cap): answer and close. */
void px_req_parse_error(struct px_conn *c);

/* Answer with an OpenAI-shaped error. message is copied. code/param may be NULL. */
void px_req_error(struct px_req *r, int status, const char *message, const char *code, const char *param);

/* Answer with a whole body. extra: more header lines, each ending in \r\n, or NULL. */
void px_req_reply(struct px_req *r, int status, const char *ctype, const char *body, size_t len,
		  const char *extra);

/* The response is complete (or failed): log, count, run cleanups, free; the connection takes the
 * next request. keep: 0 closes the client connection (a truncated response). */
void px_req_finish(struct px_req *r, int keep);

/* The client went away (or the connection is closing): stop everything, free. */
void px_req_abort(struct px_req *r);

/* Register fn(arg) to run when the request ends, however it ends. Runs in reverse order. */
void px_req_cleanup_add(struct px_req *r, void (*fn)(void *), void *arg);

/* Parse the body as a JSON object into r->json (and r->stream). PX_NEXT, or 400 with r->err_*. */
int px_req_read_json(struct px_req *r);

/* The route's label for metrics and logs. */
const char *px_route_name(enum px_route route);

#endif
