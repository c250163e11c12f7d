/* test_http.c: shared/http.c: requests and responses fed whole, byte by byte and at a page end;
 * pipelining; chunked bodies; every cap; the OpenAI error body. */
#include <check.h>
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "http.h"

struct sink {
	char body[65536];
	size_t len;
	int headers_seen;
};

static int on_headers(struct sh_http_msg *m, void *ud)
{
	(void)m;
	((struct sink *)ud)->headers_seen++;
	return 0;
}

static int on_body(struct sh_http_msg *m, void *ud, const char *at, size_t len)
{
	struct sink *s = ud;

	(void)m;
	ck_assert_uint_le(s->len + len, sizeof(s->body));
	memcpy(s->body + s->len, at, len);
	s->len += len;
	return 0;
}

static const struct sh_http_cbs cbs = { on_headers, on_body, NULL };

/* Feed text in pieces of `step` bytes (0: whole) until a message completes or an error. Returns
 * bytes consumed. */
static long feed(struct sh_http_msg *m, const char *text, size_t len, size_t step)
{
	size_t off = 0;

	while (off < len && m->state != SH_HTTP_DONE) {
		size_t n = step ? (len - off < step ? len - off : step) : len - off;
		long k = sh_http_msg_feed(m, text + off, n);
		if (k < 0)
			return -1;
		off += (size_t)k;
		if ((size_t)k < n)
			break;
	}
	return (long)off;
}

static const char simple[] = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\n"
			     "Content-Type: application/json\r\nX-Empty:\r\nContent-Length: 5\r\n\r\nhello";

START_TEST(request_whole_and_bytewise)
{
	size_t steps[] = { 0, 1, 2, 7 };
	size_t i;

	for (i = 0; i < 4; i++) {
		struct sh_http_msg m;
		struct sink s = { 0 };
		size_t n;

		sh_http_msg_init(&m, HTTP_REQUEST, &cbs, &s);
		ck_assert_int_eq(feed(&m, simple, strlen(simple), steps[i]), (long)strlen(simple));
		ck_assert_int_eq(m.state, SH_HTTP_DONE);
		ck_assert_str_eq(sh_http_url(&m), "/v1/chat/completions?x=1");
		ck_assert_int_eq(sh_http_method(&m), HTTP_POST);
		ck_assert_str_eq(sh_http_header(&m, "content-type", &n), "application/json");
		ck_assert_uint_eq(n, 16);
		ck_assert_str_eq(sh_http_header(&m, "X-EMPTY", &n), "");
		ck_assert_uint_eq(n, 0);
		ck_assert_ptr_null(sh_http_header(&m, "missing", NULL));
		ck_assert_uint_eq(s.len, 5);
		ck_assert(memcmp(s.body, "hello", 5) == 0);
		ck_assert_int_eq(s.headers_seen, 1);
		ck_assert(sh_http_keep_alive(&m));
		sh_http_msg_release(&m);
	}
}
END_TEST

START_TEST(pipelined_in_one_buffer)
{
	const char two[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n";
	struct sh_http_msg m;
	struct sink s = { 0 };
	long k;

	sh_http_msg_init(&m, HTTP_REQUEST, &cbs, &s);
	k = sh_http_msg_feed(&m, two, strlen(two));
	ck_assert_int_eq(k, 28);
	ck_assert_str_eq(sh_http_url(&m), "/a");
	/* paused: nothing more is taken until the caller moves on */
	ck_assert_int_eq(sh_http_msg_feed(&m, two + k, strlen(two) - (size_t)k), 0);
	sh_http_msg_next(&m);
	ck_assert_int_eq(sh_http_msg_feed(&m, two + k, strlen(two) - (size_t)k), (long)(strlen(two) - (size_t)k));
	ck_assert_int_eq(m.state, SH_HTTP_DONE);
	ck_assert_str_eq(sh_http_url(&m), "/b");
	ck_assert_str_eq(sh_http_header(&m, "host", NULL), "y");
	ck_assert(!sh_http_keep_alive(&m));
	sh_http_msg_release(&m);
}
END_TEST

START_TEST(chunked_body_decoded)
{
	/* with trailer fields: parsed under the caps, then not headers (a key there is no key) */
	const char req[] = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
			   "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nAuthorization: Bearer k\r\nX-T: 1\r\n\r\n";
	size_t step;

	for (step = 0; step < 4; step++) {
		struct sh_http_msg m;
		struct sink s = { 0 };

		sh_http_msg_init(&m, HTTP_REQUEST, &cbs, &s);
		ck_assert_int_eq(feed(&m, req, strlen(req), step), (long)strlen(req));
		ck_assert_int_eq(m.state, SH_HTTP_DONE);
		ck_assert(sh_http_chunked(&m));
		ck_assert_uint_eq(s.len, 11);
		ck_assert(memcmp(s.body, "hello world", 11) == 0);
		ck_assert_ptr_nonnull(sh_http_header(&m, "host", NULL));
		ck_assert_ptr_null(sh_http_header(&m, "authorization", NULL));
		ck_assert_ptr_null(sh_http_header(&m, "x-t", NULL));
		sh_http_msg_release(&m);
	}
}
END_TEST

static void expect_error(const char *text, size_t max_hb, size_t max_h, size_t max_body, int status)
{
	struct sh_http_msg m;
	struct sink s = { 0 };

	sh_http_msg_init(&m, HTTP_REQUEST, &cbs, &s);
	if (max_hb)
		m.max_header_bytes = max_hb;
	if (max_h)
		m.max_headers = max_h;
	m.max_body = max_body;
	ck_assert_int_eq(feed(&m, text, strlen(text), 3), -1);
	ck_assert_int_eq(m.state, SH_HTTP_ERROR);
	ck_assert_int_eq(m.err_status, status);
	ck_assert_ptr_nonnull(m.err_msg);
	/* an errored stream stays errored */
	ck_assert_int_eq(sh_http_msg_feed(&m, "GET / HTTP/1.1\r\n\r\n", 18), -1);
	sh_http_msg_release(&m);
}

START_TEST(caps_and_errors)
{
	char big[4096];
	char many[4096];
	int i, o;

	/* header bytes */
	memset(big, 0, sizeof(big));
	o = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX-Long: ");
	memset(big + o, 'a', 2000);
	strcpy(big + o + 2000, "\r\n\r\n");
	expect_error(big, 1024, 0, 0, 431);
	/* header count */
	o = snprintf(many, sizeof(many), "GET / HTTP/1.1\r\n");
	for (i = 0; i < 20; i++)
		o += snprintf(many + o, sizeof(many) - (size_t)o, "X-%d: v\r\n", i);
	snprintf(many + o, sizeof(many) - (size_t)o, "\r\n");
	expect_error(many, 0, 10, 0, 431);
	/* body: declared, and chunked (no length known up front) */
	expect_error("POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 0, 0, 1000, 413);
	/* malformed */
	expect_error("GARBAGE\r\n\r\n", 0, 0, 0, 400);
	expect_error("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 0, 0, 0, 400);
	expect_error("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 0, 0, 0, 400);
}
END_TEST

START_TEST(chunked_body_over_cap)
{
	const char head[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
	char req[4096];
	struct sh_http_msg m;
	struct sink s = { 0 };
	int o;

	o = snprintf(req, sizeof(req), "%s400\r\n", head);
	memset(req + o, 'x', 0x400);
	strcpy(req + o + 0x400, "\r\n0\r\n\r\n");
	sh_http_msg_init(&m, HTTP_REQUEST, &cbs, &s);
	m.max_body = 1000;
	ck_assert_int_eq(feed(&m, req, strlen(req), 0), -1);
	ck_assert_int_eq(m.err_status, 413);
	sh_http_msg_release(&m);
}
END_TEST

/* The whole request ends exactly at a page boundary followed by an unreadable page: any read
 * past the end faults (picohttpparser's test idea). */
START_TEST(page_end)
{
	long page = sysconf(_SC_PAGESIZE);
	char *mem = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t len = strlen(simple), cut;

	ck_assert(mem != MAP_FAILED);
	ck_assert_int_eq(mprotect(mem + page, (size_t)page, PROT_NONE), 0);
	for (cut = 1; cut <= len; cut++) {
		struct sh_http_msg m;
		struct sink s = { 0 };
		char *at = mem + page - cut;

		memcpy(at, simple, cut);
		sh_http_msg_init(&m, HTTP_REQUEST, &cbs, &s);
		ck_assert_int_eq(sh_http_msg_feed(&m, at, cut), (long)cut);
		if (cut == len)
			ck_assert_int_eq(m.state, SH_HTTP_DONE);
		else
			ck_assert_int_ne(m.state, SH_HTTP_ERROR);
		sh_http_msg_release(&m);
	}
	munmap(mem, (size_t)page * 2);
}
END_TEST

START_TEST(response_close_delimited)
{
	const char resp[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n";
	struct sh_http_msg m;
	struct sink s = { 0 };

	sh_http_msg_init(&m, HTTP_RESPONSE, &cbs, &s);
	ck_assert_int_eq(sh_http_msg_feed(&m, resp, strlen(resp)), (long)strlen(resp));
	ck_assert_int_eq(m.state, SH_HTTP_BODY);
	ck_assert_int_eq(sh_http_status(&m), 200);
	ck_assert_int_eq(sh_http_msg_eof(&m), SH_OK);
	ck_assert_int_eq(m.state, SH_HTTP_DONE);
	ck_assert_uint_eq(s.len, 9);
	sh_http_msg_release(&m);

	/* a Content-Length body cut short is an error at EOF */
	sh_http_msg_init(&m, HTTP_RESPONSE, &cbs, &s);
	ck_assert_int_gt(sh_http_msg_feed(&m, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 42), 0);
	ck_assert_int_eq(sh_http_msg_eof(&m), SH_ERR);
	sh_http_msg_release(&m);
}
END_TEST

START_TEST(error_json_shape)
{
	char *s = sh_http_error_json("bad \"thing\"\n", "invalid_request_error", "messages", NULL);
	cJSON *j = cJSON_Parse(s), *e;

	ck_assert_ptr_nonnull(j);
	e = cJSON_GetObjectItem(j, "error");
	ck_assert_str_eq(cJSON_GetObjectItem(e, "message")->valuestring, "bad \"thing\"\n");
	ck_assert_str_eq(cJSON_GetObjectItem(e, "type")->valuestring, "invalid_request_error");
	ck_assert_str_eq(cJSON_GetObjectItem(e, "param")->valuestring, "messages");
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(e, "code")));
	cJSON_Delete(j);
	free(s);
	ck_assert_str_eq(sh_http_error_type(429), "rate_limit_error");
	ck_assert_str_eq(sh_http_error_type(401), "invalid_request_error");
	ck_assert_str_eq(sh_http_error_type(413), "invalid_request_error");
	ck_assert_str_eq(sh_http_error_type(504), "server_error");
	ck_assert_str_eq(sh_http_reason(431), "Request Header Fields Too Large");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("http");
	TCase *t = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(t, request_whole_and_bytewise);
	tcase_add_test(t, pipelined_in_one_buffer);
	tcase_add_test(t, chunked_body_decoded);
	tcase_add_test(t, caps_and_errors);
	tcase_add_test(t, chunked_body_over_cap);
	tcase_add_test(t, page_end);
	tcase_add_test(t, response_close_delimited);
	tcase_add_test(t, error_json_shape);
	suite_add_tcase(s, t);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
