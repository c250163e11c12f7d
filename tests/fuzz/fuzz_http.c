/* fuzz_http.c: libFuzzer target for the HTTP parsing both programs use (shared/http.c): the input
 * is fed as a request stream (or, if its first byte is odd, a response stream) in pieces whose
 * sizes come from the input itself, taking pipelined messages one after another as kvgate does,
 * with small caps so that every cap is reached. Besides the sanitizers it checks the invariants
 * the proxy relies on: a feed never consumes more than it was given, a completed message has a
 * NUL-terminated URL and headers inside the buffer, and the caps hold. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shared/http.h"

static int on_body(struct sh_http_msg *m, void *ud, const char *at, size_t len)
{
	(void)ud;
	(void)at;
	if (m->max_body && m->body_len > m->max_body)
		abort();  /* the cap is checked before the callback */
	(void)len;
	return 0;
}

static const struct sh_http_cbs cbs = { NULL, on_body, NULL };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sh_http_msg m;
	size_t off, step, i;
	int response;

	if (size < 2)
		return 0;
	response = data[0] & 1;
	step = 1 + data[1] % 64;
	data += 2;
	size -= 2;
	sh_http_msg_init(&m, response ? HTTP_RESPONSE : HTTP_REQUEST, &cbs, NULL);
	m.max_header_bytes = 512;
	m.max_headers = 8;
	m.max_body = 1024;
	off = 0;
	while (off < size && m.state != SH_HTTP_ERROR) {
		size_t n = size - off < step ? size - off : step;
		long k = sh_http_msg_feed(&m, (const char *)data + off, n);
		if (k < 0)
			break;
		if ((size_t)k > n)
			abort();
		off += (size_t)k;
		if (m.state == SH_HTTP_DONE) {
			if (!response && (m.url + m.url_len >= m.len + 1 || m.buf[m.url + m.url_len] != '\0'))
				abort();
			for (i = 0; i < m.n_hdrs; i++) {
				if (m.hdrs[i].value + m.hdrs[i].value_len >= m.len + 1 ||
				    m.buf[m.hdrs[i].value + m.hdrs[i].value_len] != '\0')
					abort();
				(void)sh_http_header(&m, sh_http_hname(&m, i), NULL);
			}
			if (m.n_hdrs > m.max_headers || m.header_bytes > m.max_header_bytes)
				abort();
			(void)sh_http_keep_alive(&m);
			sh_http_msg_next(&m);
		} else if ((size_t)k < n) {
			abort();  /* only a completed message stops short */
		}
	}
	if (m.state != SH_HTTP_ERROR)
		(void)sh_http_msg_eof(&m);
	sh_http_msg_release(&m);
	return 0;
}
