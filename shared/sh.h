/* sh.h: the few things every module of both programs uses: status codes, the caller's error
 * buffer, a checked allocation, time. shared/ never logs and never exits (STYLE.md rule 12): a
 * function that can fail returns an sh_status (or a count, or NULL) and, where the caller passes
 * one, writes a one-line reason into a struct sh_err. */
#ifndef SH_H
#define SH_H

#include <stddef.h>
#include <stdint.h>

enum sh_status {
	SH_OK = 0,
	SH_ERR = -1,       /* failed; the reason is in the sh_err */
	SH_AGAIN = -2,     /* needs more input or I/O; call again */
	SH_DECLINED = -3,  /* not mine: let the next handler try */
	SH_TOOBIG = -4,    /* input over a named cap */
	SH_PARSE = -5,     /* malformed input */
};

/* A caller-owned error message. Functions fill it on failure only. */
struct sh_err {
	char msg[256];
};

/* printf into err (if err is not NULL); returns SH_ERR so that callers can `return sh_errf(...)`. */
int sh_errf(struct sh_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* malloc/calloc/realloc that abort on exhaustion: used for small fixed structures only; anything
 * sized by network input is bounded by a cap first (STYLE.md rule 10). */
void *sh_malloc(size_t n);
void *sh_calloc(size_t n, size_t size);
void *sh_realloc(void *p, size_t n);
char *sh_strdup(const char *s);
char *sh_strndup(const char *s, size_t n);

/* A growable byte string, always NUL-terminated after its n bytes; zero-initialise it, free(p). */
struct sh_buf {
	char *p;
	size_t n, cap;
};
void sh_buf_reserve(struct sh_buf *b, size_t extra);
void sh_buf_add(struct sh_buf *b, const void *p, size_t n);

/* The value of a hex digit, or -1. */
int sh_hexval(char c);

/* The whole file at path (malloc'd, a NUL after its *len bytes); NULL with err when it cannot be
 * read or is over cap bytes. */
char *sh_read_file(const char *path, size_t cap, size_t *len, struct sh_err *err);

/* Monotonic clock in microseconds, and wall clock in seconds (for `created` fields and logs). */
int64_t sh_now_us(void);
int64_t sh_wall_s(void);

/* Release-build check for corruption (STYLE.md rule 14): prints file:line and aborts. */
#define SH_BUG_ON(cond) do { if (__builtin_expect(!!(cond), 0)) sh_bug(#cond, __FILE__, __LINE__); } while (0)
void sh_bug(const char *what, const char *file, int line) __attribute__((noreturn));

#define SH_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SH_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SH_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
