/* test_prefix.c: prefix-block hashes, DESIGN.md contract 1. */
#include <check.h>
#include <stdint.h>
#include <string.h>
#include <xxhash.h>

#include "shared/prefix.h"

START_TEST(known_answer)
{
	/* XXH3_64 of nothing with seed 0, the library's published value */
	ck_assert_uint_eq(sh_prefix_seed("", 0), 0x2D06800538D394C2ull);
}
END_TEST

START_TEST(chain)
{
	int32_t ids[50];
	uint64_t h[8], seed = sh_prefix_seed("deepseek-coder", 14), want;
	uint8_t le[16 * 4];
	size_t n;

	for (int i = 0; i < 50; i++)
		ids[i] = i * 7919 - 3;   /* one negative id: hashed as its 32-bit pattern */
	n = sh_prefix_hashes(seed, ids, 50, 16, h);
	ck_assert_uint_eq(n, 3);   /* 50 = 3 full blocks + 2: the partial block has no hash */
	ck_assert_uint_eq(seed, XXH3_64bits("deepseek-coder", 14));
	/* h[i] = XXH3_64(block i as little-endian u32, seed = h[i-1]) */
	for (int b = 0; b < 3; b++) {
		for (int k = 0; k < 16; k++) {
			uint32_t v = (uint32_t)ids[b * 16 + k];
			le[4 * k] = (uint8_t)v;
			le[4 * k + 1] = (uint8_t)(v >> 8);
			le[4 * k + 2] = (uint8_t)(v >> 16);
			le[4 * k + 3] = (uint8_t)(v >> 24);
		}
		want = XXH3_64bits_withSeed(le, sizeof(le), b ? h[b - 1] : seed);
		ck_assert_uint_eq(h[b], want);
		ck_assert_uint_eq(sh_prefix_block(b ? h[b - 1] : seed, ids + 16 * b, 16), want);
	}
	/* a prefix shares its hashes; a change in block 1 changes blocks 1.. only */
	{
		uint64_t g[8];
		ck_assert_uint_eq(sh_prefix_hashes(seed, ids, 32, 16, g), 2);
		ck_assert(!memcmp(g, h, 2 * 8));
		ids[20]++;
		sh_prefix_hashes(seed, ids, 50, 16, g);
		ck_assert_uint_eq(g[0], h[0]);
		ck_assert(g[1] != h[1] && g[2] != h[2]);
	}
	ck_assert_uint_eq(sh_prefix_hashes(seed, ids, 15, 16, h), 0);
	ck_assert_uint_eq(sh_prefix_hashes(seed, ids, 0, 16, h), 0);
}
END_TEST

START_TEST(pinned)
{
	/* regression pin: ids 0..31, block 16, model "m" (computed with libxxhash 0.8.1) */
	int32_t ids[32];
	uint64_t h[2];
	for (int i = 0; i < 32; i++)
		ids[i] = i;
	sh_prefix_hashes(sh_prefix_seed("m", 1), ids, 32, 16, h);
	ck_assert_uint_eq(h[0], 0xDC5C2DD9C73E77E2ull);
	ck_assert_uint_eq(h[1], 0xB42B051BA07811C9ull);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("prefix");
	TCase *tc = tcase_create("prefix");
	SRunner *sr;
	int nf;
	tcase_add_test(tc, known_answer);
	tcase_add_test(tc, chain);
	tcase_add_test(tc, pinned);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf ? 1 : 0;
}
