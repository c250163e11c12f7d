/* http.h: HTTP/1.1 message parsing over llhttp, with caps, for both sides of a proxy and for the
 * engine's server. A struct sh_http_msg parses one message at a time (request or response) from
 * bytes fed in any pieces; it collects the URL and headers into its own buffer (bounded by
 * max_header_bytes and max_headers) and hands body bytes to a callback (bounded by max_body).
 * After a message completes the parser pauses, so pipelined requests are taken one at a time:
 * the caller answers, then calls sh_http_msg_next() and feeds the rest.
 *
 * Also: status reason phrases, and the OpenAI-shaped error body of DESIGN.md contract 4. */
#ifndef SH_HTTP_H
#define SH_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <llhttp.h>

#include "sh.h"

struct sh_http_header {
	uint32_t name, name_len;   /* offsets into msg->buf */
	uint32_t value, value_len;
};

enum sh_http_state {
	SH_HTTP_IDLE,      /* no byte of a message yet */
	SH_HTTP_HEADERS,   /* reading the start line and headers */
	SH_HTTP_BODY,      /* headers done, body in progress */
	SH_HTTP_DONE,      /* message complete; parser paused until sh_http_msg_next() */
	SH_HTTP_ERROR,     /* malformed or over a cap: see err_status/err_msg; the stream is unusable */
};

struct sh_http_msg;

/* Callbacks; each may be NULL. Return 0 to go on. on_headers may return 1 to say "this message
 * has no body" (responses to HEAD) or -1 to stop with err_status already set by the callee. */
struct sh_http_cbs {
	int (*on_headers)(struct sh_http_msg *m, void *ud);
	int (*on_body)(struct sh_http_msg *m, void *ud, const char *at, size_t len);
	void (*on_begin)(struct sh_http_msg *m, void *ud);
};

struct sh_http_msg {
	llhttp_t parser;                  /* first: callbacks find the msg from the parser */
	const struct sh_http_cbs *cbs;
	void *ud;
	size_t max_header_bytes;          /* URL + header names and values, bytes */
	size_t max_headers;               /* header lines */
	size_t max_body;                  /* body bytes (decoded), 0 = no cap */
	enum sh_http_state state;
	char *buf;                        /* url and header bytes: len used of cap */
	size_t len, cap;
	uint32_t url, url_len;
	struct sh_http_header *hdrs;
	size_t n_hdrs, hdrs_cap;
	size_t n_head_hdrs;               /* the header section's: trailers after it are dropped */
	size_t header_bytes;              /* URL + header bytes stored so far */
	uint64_t body_len;                /* decoded body bytes so far */
	int in_value;                     /* the last header callback was a value */
	int err_status;                   /* on SH_HTTP_ERROR: 400, 413, 431, 502 */
	const char *err_msg;              /* static text */
};

/* type: HTTP_REQUEST or HTTP_RESPONSE. */
void sh_http_msg_init(struct sh_http_msg *m, llhttp_type_t type, const struct sh_http_cbs *cbs, void *ud);
void sh_http_msg_release(struct sh_http_msg *m);

/* Feed bytes. Returns the number consumed (less than len when a message completed: the rest
 * belongs to the next one), or -1 on error (state SH_HTTP_ERROR). */
long sh_http_msg_feed(struct sh_http_msg *m, const char *data, size_t len);

/* The peer closed the stream: completes a close-delimited response body. Returns SH_OK if the
 * message is now complete, SH_ERR if the stream ended inside a message. */
int sh_http_msg_eof(struct sh_http_msg *m);

/* Forget the completed message and get ready for the next one on the same stream. */
void sh_http_msg_next(struct sh_http_msg *m);

/* Accessors for a message whose headers are complete. Header lookup is case-insensitive and
 * returns the first match; the returned pointer lives until sh_http_msg_next(). */
const char *sh_http_header(const struct sh_http_msg *m, const char *name, size_t *len);
int sh_http_header_is(const struct sh_http_msg *m, const char *name, const char *value);
static inline const char *sh_http_url(const struct sh_http_msg *m) { return m->buf + m->url; }
static inline const char *sh_http_hname(const struct sh_http_msg *m, size_t i) { return m->buf + m->hdrs[i].name; }
static inline const char *sh_http_hvalue(const struct sh_http_msg *m, size_t i) { return m->buf + m->hdrs[i].value; }
int sh_http_method(const struct sh_http_msg *m);      /* llhttp_method_t */
int sh_http_status(const struct sh_http_msg *m);      /* response status code */
int sh_http_keep_alive(const struct sh_http_msg *m);  /* after the message completed */
int sh_http_chunked(const struct sh_http_msg *m);
int sh_http_version_minor(const struct sh_http_msg *m);

/* "OK", "Not Found", ... ("Unknown" for codes we do not use). */
const char *sh_http_reason(int status);

/* The OpenAI error body: {"error":{"message":..,"type":..,"param":..,"code":..}}. param and code
 * may be NULL (JSON null). Returns a malloc'd NUL-terminated string; the caller frees it. */
char *sh_http_error_json(const char *message, const char *type, const char *param, const char *code);

/* The OpenAI error type for an HTTP status (invalid_request_error, authentication_error, ...). */
const char *sh_http_error_type(int status);

#endif
