/* test_pindex.c: the prefix-block index against a plain model (an array in LRU order), over random
 * adds, removes and lookups that force eviction and probe-run deletion. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/pindex.h"

#define CAP 64

static uint64_t model[CAP];  /* model[0] most recent */
static size_t model_len;

static long model_find(uint64_t h)
{
	size_t i;

	for (i = 0; i < model_len; i++)
		if (model[i] == h)
			return (long)i;
	return -1;
}

static void model_touch(uint64_t h)
{
	long at = model_find(h);

	if (at >= 0) {
		memmove(model + 1, model, (size_t)at * sizeof(*model));
	} else {
		if (model_len == CAP)
			model_len--;
		memmove(model + 1, model, model_len * sizeof(*model));
		model_len++;
	}
	model[0] = h;
}

static void model_remove(uint64_t h)
{
	long at = model_find(h);

	if (at >= 0) {
		memmove(model + at, model + at + 1, (model_len - (size_t)at - 1) * sizeof(*model));
		model_len--;
	}
}

/* Few distinct values, some colliding in the low bits, so probe runs form and break. */
static uint64_t rnd_hash(unsigned *seed)
{
	uint64_t v = (uint64_t)(rand_r(seed) % 200);
	return v % 3 == 0 ? v << 40 : v * 0x9E3779B97F4A7C15ULL;
}

START_TEST(matches_model)
{
	struct px_pindex *ix = px_pindex_new(CAP);
	unsigned seed = 12345;
	int step;

	model_len = 0;
	for (step = 0; step < 20000; step++) {
		int op = rand_r(&seed) % 10;
		uint64_t hs[8];
		size_t n = 1 + (size_t)(rand_r(&seed) % 8), i, want;

		for (i = 0; i < n; i++)
			hs[i] = rnd_hash(&seed);
		if (op < 5) {
			px_pindex_add(ix, hs, n);
			for (i = n; i-- > 0;)
				model_touch(hs[i]);
		} else if (op < 7) {
			px_pindex_remove(ix, hs[0]);
			model_remove(hs[0]);
		} else {
			for (want = 0; want < n && model_find(hs[want]) >= 0; want++)
				;
			ck_assert_uint_eq(px_pindex_match(ix, hs, n), want);
		}
		ck_assert_uint_eq(px_pindex_len(ix), model_len);
	}
	px_pindex_free(ix);
}
END_TEST

START_TEST(prefix_outlives_tails)
{
	struct px_pindex *ix = px_pindex_new(16);
	uint64_t conv[12], other[12];
	size_t i;

	for (i = 0; i < 12; i++) {
		conv[i] = 1000 + i;
		other[i] = 5000 + i;
	}
	px_pindex_add(ix, conv, 12);
	ck_assert_uint_eq(px_pindex_match(ix, conv, 12), 12);
	/* 12 more blocks push out 8: the tail of the first prompt, not its head */
	px_pindex_add(ix, other, 12);
	ck_assert_uint_eq(px_pindex_match(ix, other, 12), 12);
	ck_assert_uint_eq(px_pindex_match(ix, conv, 12), 4);
	px_pindex_free(ix);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("pindex");
	TCase *t = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(t, matches_model);
	tcase_add_test(t, prefix_outlives_tails);
	suite_add_tcase(s, t);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
