/* http.c: llhttp glue with caps (see http.h). */
#include "http.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MSG(p) ((struct sh_http_msg *)(p))

static int over_headers(struct sh_http_msg *m)
{
	m->err_status = 431;
	m->err_msg = "request header fields too large";
	return HPE_USER;
}

/* Append header bytes to buf, counting them against max_header_bytes. */
static int append(struct sh_http_msg *m, const char *at, size_t n)
{
	m->header_bytes += n;
	if (m->header_bytes > m->max_header_bytes)
		return over_headers(m);
	if (m->len + n + 1 > m->cap) {
		size_t cap = m->cap ? m->cap : 512;
		while (cap < m->len + n + 1)
			cap *= 2;
		m->buf = sh_realloc(m->buf, cap);
		m->cap = cap;
	}
	memcpy(m->buf + m->len, at, n);
	m->len += n;
	return 0;
}

/* Each field and value is NUL-terminated in buf once complete, so accessors return C strings. */
static int terminate(struct sh_http_msg *m)
{
	if (m->len + 1 > m->cap) {
		m->cap = m->cap ? m->cap * 2 : 512;
		m->buf = sh_realloc(m->buf, m->cap);
	}
	m->buf[m->len++] = '\0';
	return 0;
}

static int on_message_begin(llhttp_t *p)
{
	struct sh_http_msg *m = MSG(p);

	m->state = SH_HTTP_HEADERS;
	if (m->cbs && m->cbs->on_begin)
		m->cbs->on_begin(m, m->ud);
	return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
	return append(MSG(p), at, n);
}

static int on_url_complete(llhttp_t *p)
{
	struct sh_http_msg *m = MSG(p);
	const char *u = m->buf + m->url, *path;
	size_t n, s;

	m->url_len = (uint32_t)(m->len - m->url);
	n = m->url_len;
	/* absolute-form (RFC 9112 3.2.2: a server accepts it): the path from here on */
	s = n > 7 && strncasecmp(u, "http://", 7) == 0 ? 7 : n > 8 && strncasecmp(u, "https://", 8) == 0 ? 8 : 0;
	if (s && (path = memchr(u + s, '/', n - s)) != NULL) {
		m->url += (uint32_t)(path - u);
		m->url_len -= (uint32_t)(path - u);
	}
	return terminate(m);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
	struct sh_http_msg *m = MSG(p);

	if (!m->in_value && (m->n_hdrs == 0 || m->hdrs[m->n_hdrs - 1].value_len != UINT32_MAX)) {
		/* the first piece of a new field */
		if (m->n_hdrs >= m->max_headers)
			return over_headers(m);
		if (m->n_hdrs == m->hdrs_cap) {
			m->hdrs_cap = m->hdrs_cap ? m->hdrs_cap * 2 : 16;
			m->hdrs = sh_realloc(m->hdrs, m->hdrs_cap * sizeof(*m->hdrs));
		}
		m->hdrs[m->n_hdrs].name = (uint32_t)m->len;
		m->hdrs[m->n_hdrs].name_len = 0;
		m->hdrs[m->n_hdrs].value = 0;
		m->hdrs[m->n_hdrs].value_len = UINT32_MAX;  /* "field in progress" */
		m->n_hdrs++;
	}
	m->in_value = 0;
	m->hdrs[m->n_hdrs - 1].name_len += (uint32_t)n;
	return append(m, at, n);
}

static int on_header_field_complete(llhttp_t *p)
{
	struct sh_http_msg *m = MSG(p);

	terminate(m);
	m->hdrs[m->n_hdrs - 1].value = (uint32_t)m->len;
	m->hdrs[m->n_hdrs - 1].value_len = UINT32_MAX;
	m->in_value = 1;
	return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
	return append(MSG(p), at, n);
}

static int on_header_value_complete(llhttp_t *p)
{
	struct sh_http_msg *m = MSG(p);
	struct sh_http_header *h = &m->hdrs[m->n_hdrs - 1];

	/* A header with an empty value gets no on_header_value call: value was set at field end. */
	h->value_len = (uint32_t)(m->len - h->value);
	m->in_value = 0;
	return terminate(m);
}

static int on_headers_complete(llhttp_t *p)
{
	struct sh_http_msg *m = MSG(p);
	int rc = 0;

	m->state = SH_HTTP_BODY;
	m->n_head_hdrs = m->n_hdrs;
	if (p->upgrade) {
		m->err_status = 400;
		m->err_msg = "protocol upgrades are not supported";
		return -1;
	}
	if (m->max_body && p->content_length > m->max_body && (p->flags & F_CONTENT_LENGTH)) {
		m->err_status = 413;
		m->err_msg = "request body too large";
		return -1;
	}
	if (m->cbs && m->cbs->on_headers)
		rc = m->cbs->on_headers(m, m->ud);
	if (rc < 0 && !m->err_status) {
		m->err_status = 400;
		m->err_msg = "bad request";
	}
	return rc;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
	struct sh_http_msg *m = MSG(p);

	m->body_len += n;
	if (m->max_body && m->body_len > m->max_body) {
		m->err_status = 413;
		m->err_msg = "request body too large";
		return HPE_USER;
	}
	if (m->cbs && m->cbs->on_body && m->cbs->on_body(m, m->ud, at, n))
		return HPE_USER;
	return 0;
}

static int on_message_complete(llhttp_t *p)
{
	struct sh_http_msg *m = MSG(p);

	/* trailer fields (after a chunked body) came through the header callbacks, under the same
	 * caps; they are not headers: a key or a content type there must not act as one */
	m->n_hdrs = m->n_head_hdrs;
	m->state = SH_HTTP_DONE;
	return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
	.on_message_begin = on_message_begin,
	.on_url = on_url,
	.on_url_complete = on_url_complete,
	.on_header_field = on_header_field,
	.on_header_field_complete = on_header_field_complete,
	.on_header_value = on_header_value,
	.on_header_value_complete = on_header_value_complete,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

void sh_http_msg_init(struct sh_http_msg *m, llhttp_type_t type, const struct sh_http_cbs *cbs, void *ud)
{
	memset(m, 0, sizeof(*m));
	llhttp_init(&m->parser, type, &settings);
	m->cbs = cbs;
	m->ud = ud;
	m->max_header_bytes = 16384;
	m->max_headers = 100;
	m->state = SH_HTTP_IDLE;
}

void sh_http_msg_release(struct sh_http_msg *m)
{
	free(m->buf);
	free(m->hdrs);
	m->buf = NULL;
	m->hdrs = NULL;
}

static void clear(struct sh_http_msg *m)
{
	m->len = 0;
	m->url = m->url_len = 0;
	m->n_hdrs = 0;
	m->header_bytes = 0;
	m->body_len = 0;
	m->in_value = 0;
	m->state = SH_HTTP_IDLE;
}

void sh_http_msg_next(struct sh_http_msg *m)
{
	clear(m);
	if (llhttp_get_errno(&m->parser) == HPE_PAUSED)
		llhttp_resume(&m->parser);
}

long sh_http_msg_feed(struct sh_http_msg *m, const char *data, size_t len)
{
	llhttp_errno_t e;

	if (m->state == SH_HTTP_ERROR)
		return -1;
	if (m->state == SH_HTTP_DONE)
		return 0;
	e = llhttp_execute(&m->parser, data, len);
	/* header_bytes counts what we store (URL, names, values): the memory the cap protects.
	 * Whitespace llhttp skips costs no memory; the header timeout bounds its time. */
	if (e == HPE_OK)
		return (long)len;
	if (e == HPE_PAUSED)
		return (long)(llhttp_get_error_pos(&m->parser) - data);
	if (e == HPE_PAUSED_UPGRADE) {
		m->err_status = 400;
		m->err_msg = "protocol upgrades are not supported";
	} else if (!m->err_status) {
		m->err_status = llhttp_get_type(&m->parser) == HTTP_REQUEST ? 400 : 502;
		m->err_msg = llhttp_get_error_reason(&m->parser);
		if (!m->err_msg)
			m->err_msg = "malformed HTTP";
	}
	m->state = SH_HTTP_ERROR;
	return -1;
}

int sh_http_msg_eof(struct sh_http_msg *m)
{
	if (m->state == SH_HTTP_DONE)
		return SH_OK;
	if (m->state == SH_HTTP_IDLE)
		return SH_ERR;
	if (llhttp_finish(&m->parser) == HPE_PAUSED || m->state == SH_HTTP_DONE) {
		m->state = SH_HTTP_DONE;
		return SH_OK;
	}
	return SH_ERR;
}

const char *sh_http_header(const struct sh_http_msg *m, const char *name, size_t *len)
{
	size_t i;

	for (i = 0; i < m->n_hdrs; i++) {
		if (strcasecmp(m->buf + m->hdrs[i].name, name) == 0) {
			if (len)
				*len = m->hdrs[i].value_len;
			return m->buf + m->hdrs[i].value;
		}
	}
	return NULL;
}

int sh_http_header_is(const struct sh_http_msg *m, const char *name, const char *value)
{
	const char *v = sh_http_header(m, name, NULL);

	return v && strcasecmp(v, value) == 0;
}

int sh_http_method(const struct sh_http_msg *m) { return llhttp_get_method((llhttp_t *)&m->parser); }
int sh_http_status(const struct sh_http_msg *m) { return llhttp_get_status_code((llhttp_t *)&m->parser); }
int sh_http_keep_alive(const struct sh_http_msg *m) { return llhttp_should_keep_alive(&m->parser); }
int sh_http_chunked(const struct sh_http_msg *m) { return (m->parser.flags & F_CHUNKED) != 0; }
int sh_http_version_minor(const struct sh_http_msg *m) { return llhttp_get_http_minor((llhttp_t *)&m->parser); }

const char *sh_http_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Payload Too Large";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	}
	return "Unknown";
}

/* As OpenAI's API answers: a bad key (401) is an invalid_request_error with code invalid_api_key. */
const char *sh_http_error_type(int status)
{
	switch (status) {
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 429: return "rate_limit_error";
	}
	if (status >= 500)
		return status == 503 ? "service_unavailable_error" : "server_error";
	return "invalid_request_error";
}

char *sh_http_error_json(const char *message, const char *type, const char *param, const char *code)
{
	cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
	char *s;

	cJSON_AddStringToObject(e, "message", message);
	cJSON_AddStringToObject(e, "type", type);
	if (param)
		cJSON_AddStringToObject(e, "param", param);
	else
		cJSON_AddNullToObject(e, "param");
	if (code)
		cJSON_AddStringToObject(e, "code", code);
	else
		cJSON_AddNullToObject(e, "code");
	s = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!s)
		s = sh_strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
	return s;
}
