/* sh.c: status helpers, checked allocation, clocks (see sh.h). */
#include "sh.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int sh_errf(struct sh_err *err, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return SH_ERR;
}

static void *oom(size_t n)
{
	fprintf(stderr, "out of memory allocating %zu bytes\n", n);
	abort();
}

void *sh_malloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	return p ? p : oom(n);
}

void *sh_calloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	return p ? p : oom(n * size);
}

void *sh_realloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	return q ? q : oom(n);
}

char *sh_strdup(const char *s)
{
	return sh_strndup(s, strlen(s));
}

char *sh_strndup(const char *s, size_t n)
{
	char *d = sh_malloc(n + 1);
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

void sh_buf_reserve(struct sh_buf *b, size_t extra)
{
	size_t c;

	if (b->n + extra + 1 <= b->cap)
		return;
	c = b->cap ? b->cap : 128;
	while (c < b->n + extra + 1)
		c *= 2;
	b->p = sh_realloc(b->p, c);
	b->cap = c;
}

void sh_buf_add(struct sh_buf *b, const void *p, size_t n)
{
	sh_buf_reserve(b, n);
	memcpy(b->p + b->n, p, n);
	b->n += n;
	b->p[b->n] = '\0';
}

int64_t sh_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t sh_wall_s(void)
{
	return (int64_t)time(NULL);
}

void sh_bug(const char *what, const char *file, int line)
{
	fprintf(stderr, "BUG at %s:%d: %s\n", file, line, what);
	abort();
}

char *sh_read_file(const char *path, size_t cap, size_t *len, struct sh_err *err)
{
	FILE *f = fopen(path, "rb");
	struct sh_buf b = {0};
	char tmp[65536];
	size_t n;

	if (!f) {
		sh_errf(err, "%s: %s", path, strerror(errno));
		return NULL;
	}
	while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0) {
		if (b.n + n > cap) {
			sh_errf(err, "%s: larger than %zu bytes", path, cap);
			fclose(f);
			free(b.p);
			return NULL;
		}
		sh_buf_add(&b, tmp, n);
	}
	if (ferror(f)) {
		sh_errf(err, "%s: read error", path);
		fclose(f);
		free(b.p);
		return NULL;
	}
	fclose(f);
	sh_buf_add(&b, "", 1); /* a NUL after the bytes, not counted */
	*len = b.n - 1;
	return b.p;
}

int sh_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}
