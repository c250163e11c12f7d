/* pxlog.c: access and error logs (see pxlog.h). Access lines are logfmt:
 *   ts=2026-11-28T13:46:19.123Z rid=.. peer=.. user=- method=POST path=/v1/chat/completions
 *   route=chat pool=default upstream=127.0.0.1:8000 status=200 bytes=1234 ttfb_ms=1.2
 *   total_ms=3.4 stream=1 err="..."
 * Everything that came from the network is escaped, so no line can be forged or split. */
#include "pxlog.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "req.h"

static void timestamp(char *out, size_t n)
{
	struct timeval tv;
	struct tm tm;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
}

void px_log(const char *fmt, ...)
{
	char ts[64];
	va_list ap;

	timestamp(ts, sizeof(ts));
	fprintf(stderr, "%s kvgate: ", ts);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int px_log_open(struct px_server *srv, struct sh_err *err)
{
	const char *path = srv->conf.access_log;
	FILE *f;

	if (!*path) {
		px_log_close(srv);
		return SH_OK;
	}
	if (strcmp(path, "-") == 0) {
		px_log_close(srv);
		srv->access_log = stderr;
		return SH_OK;
	}
	f = fopen(path, "a");
	if (!f)
		return sh_errf(err, "access_log %s: %s", path, strerror(errno));
	setvbuf(f, NULL, _IOLBF, 0);
	px_log_close(srv);
	srv->access_log = f;
	return SH_OK;
}

void px_log_close(struct px_server *srv)
{
	if (srv->access_log && srv->access_log != stderr)
		fclose(srv->access_log);
	srv->access_log = NULL;
}

/* Copy s into out, escaping quotes, backslashes and anything not printable ASCII. */
static void escape(char *out, size_t n, const char *s)
{
	size_t o = 0;

	for (; *s && o + 5 < n; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = (char)ch;
		} else if (ch < 0x20 || ch >= 0x7f) {
			o += (size_t)snprintf(out + o, n - o, "\\x%02x", ch);
		} else {
			out[o++] = (char)ch;
		}
	}
	out[o] = '\0';
}

void px_log_access(struct px_server *srv, const struct px_req *r)
{
	FILE *f = srv->access_log;
	char ts[64], path[256], err[256];
	double ttfb = r->t_ttfb_us ? (double)(r->t_ttfb_us - r->t_start_us) / 1000.0 : -1;

	if (!f)
		return;
	timestamp(ts, sizeof(ts));
	escape(path, sizeof(path), r->msg->buf && r->msg->url_len ? sh_http_url(r->msg) : "");
	escape(err, sizeof(err), r->err_msg ? r->err_msg : "");
	fprintf(f, "ts=%s rid=%s peer=%s user=%s method=%s path=\"%s\" route=%s pool=%s upstream=%s "
		   "status=%d bytes=%llu ttfb_ms=%.3f total_ms=%.3f stream=%d%s%s%s\n",
		ts, r->rid[0] ? r->rid : "-", r->conn->peer, r->user ? r->user->name : "-", llhttp_method_name(r->method), path,
		px_route_name(r->route), r->pool ? r->pool->name : "-", r->up ? r->up->addr : "-", r->status,
		(unsigned long long)r->bytes_out, ttfb, (double)(r->t_end_us - r->t_start_us) / 1000.0,
		r->stream, *err ? " err=\"" : "", err, *err ? "\"" : "");
}
