/* test_prefix_cache.c: the prefix cache (engine/pcache.h) over a real KV pool: insert takes a
 * reference, blocks still used by a sequence are never evicted, eviction is least recently used,
 * and the routing report (contract 2) gives the events since a number, or a reset. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/kv.h"
#include "engine/pcache.h"

static struct eng_backend *be;
static struct eng_kv *kv;

static void setup(void)
{
	struct eng_kv_shape sh = {.n_layers = 1, .row_elems = 8, .n_parts = 1, .part_off = {0, 8}};
	be = eng_cpu_new(1);
	kv = eng_kv_new(be, ENG_KV_F32, &sh, 8, NULL);
	ck_assert_ptr_nonnull(kv);
}

static void teardown(void)
{
	eng_kv_free(kv);
	be->free(be);
}

/* A sequence that owns n fresh blocks. */
static void seq_with(struct eng_kv_seq *s, int n)
{
	eng_kv_seq_init(s);
	ck_assert_int_eq(eng_kv_seq_prepare(kv, s, 0, n * kv->block_tokens, NULL), SH_OK);
	s->n_tokens = n * kv->block_tokens;
}

struct rep {
	uint64_t h[64];
	int added[64];
	int n;
};

static void rep_fn(void *ud, uint64_t hash, int added)
{
	struct rep *r = ud;
	r->h[r->n] = hash;
	r->added[r->n++] = added;
}

START_TEST(insert_lookup_evict)
{
	struct eng_pcache *c = eng_pcache_new(kv, 16);
	struct eng_kv_seq a, b;
	seq_with(&a, 3);
	for (int i = 0; i < 3; i++)
		eng_pcache_insert(c, 100 + i, a.blocks[i]);
	eng_pcache_insert(c, 100, a.blocks[0]);  /* already there: no second reference */
	ck_assert_int_eq(c->n, 3);
	ck_assert_int_eq(kv->ref[a.blocks[0]], 2);
	ck_assert_int_eq(eng_pcache_evictable(c), 0);  /* a still uses them */
	ck_assert_int_eq(eng_pcache_make_free(c, 8), 5);
	ck_assert_int_eq(c->n, 3);

	int32_t blk[3] = {a.blocks[0], a.blocks[1], a.blocks[2]};
	eng_kv_seq_release(kv, &a);
	ck_assert_int_eq(kv->n_free, 5);              /* the cache keeps them */
	ck_assert_int_eq(eng_pcache_evictable(c), 3);
	ck_assert_int_eq(eng_pcache_lookup(c, 100), blk[0]);  /* 100 is now the most recent */
	ck_assert_int_eq(eng_pcache_lookup(c, 999), -1);

	/* another sequence takes 6 blocks: 1 must come from the cache, the least recent (101) */
	ck_assert_int_eq(eng_pcache_make_free(c, 6), 6);
	ck_assert(!eng_pcache_has(c, 101));
	ck_assert(eng_pcache_has(c, 100) && eng_pcache_has(c, 102));
	seq_with(&b, 6);
	ck_assert_int_eq(kv->n_free, 0);
	eng_kv_seq_release(kv, &b);

	/* routing report: 3 added, 1 evicted */
	struct rep r = {0};
	int reset = -1;
	uint64_t now = eng_pcache_report(c, 0, &reset, rep_fn, &r);
	ck_assert_int_eq(reset, 0);
	ck_assert_int_eq((int)now, 4);
	ck_assert_int_eq(r.n, 4);
	ck_assert(r.h[3] == 101 && r.added[3] == 0);
	memset(&r, 0, sizeof(r));
	eng_pcache_report(c, now, &reset, rep_fn, &r);
	ck_assert_int_eq(r.n, 0);
	eng_pcache_clear(c);
	ck_assert_int_eq(kv->n_free, 8);
	ck_assert_int_eq(c->n, 0);
	eng_pcache_free(c);
}
END_TEST

START_TEST(report_reset)
{
	/* a log of 16 events: 40 events later, since=1 is too old: reset with the live set */
	struct eng_pcache *c = eng_pcache_new(kv, 16);
	struct eng_kv_seq a;
	seq_with(&a, 1);
	for (int i = 0; i < 20; i++) {
		eng_pcache_insert(c, 500 + i, a.blocks[0]);
		eng_kv_seq_release(kv, &a);
		eng_pcache_clear(c);
		seq_with(&a, 1);
	}
	eng_pcache_insert(c, 7, a.blocks[0]);
	struct rep r = {0};
	int reset = 0;
	uint64_t now = eng_pcache_report(c, 1, &reset, rep_fn, &r);
	ck_assert_int_eq((int)now, 41);
	ck_assert_int_eq(reset, 1);
	ck_assert_int_eq(r.n, 1);
	ck_assert(r.h[0] == 7 && r.added[0] == 1);
	/* a number from the future (another run) is a reset too */
	memset(&r, 0, sizeof(r));
	eng_pcache_report(c, 1000, &reset, rep_fn, &r);
	ck_assert_int_eq(reset, 1);
	eng_kv_seq_release(kv, &a);
	eng_pcache_free(c);
}
END_TEST

static Suite *pc_suite(void)
{
	Suite *s = suite_create("prefix_cache");
	TCase *tc = tcase_create("core");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, insert_lookup_evict);
	tcase_add_test(tc, report_reset);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(pc_suite());
	srunner_run_all(sr, CK_NORMAL);
	int nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf ? 1 : 0;
}
