/* test_ppl.c: the engine's held-out perplexity on the bundled model against transformers'
 * (models/kvgate-tiny-coder/eval/heldout_ppl.json, fp32 eager, windows of 1024 after a BOS).
 *
 * Tolerance, per window: |mean NLL (engine) - mean NLL (transformers)| <= 1e-3 nats per token.
 * Why that figure: both sides compute in fp32 from the same bf16 weights, so they differ only by
 * summation order (GEMM blocking, softmax, RMSNorm); measured on the first two windows the gap is
 * +0.16 and -0.17 nats per 1024 tokens (1.6e-4 per token), six times under the bound, and over the
 * whole file the perplexities agree to 5 digits. 1e-3 per token is a 0.1% perplexity difference, ten
 * times tighter than issue 8's 1% bound, and still wide enough for another CPU's FMA and vector
 * widths. It can fail: rounding the cache to 8 bits (fp8, e4m3 with per-token scales) already moves
 * the first window by 1.1e-2 per token, and the test asserts that it exceeds the tolerance (the
 * negative control), so a real fault in the model, the recipe or the tokenizer cannot pass.
 * Quantised caches (fp8, int8) are held to 2% of transformers' perplexity on the first window
 * (measured over the whole file: +0.63% fp8, +0.09% int8); a broken codec or scale is tens of percent.
 *
 * Under AddressSanitizer (make asan, -O1) a 1024-token window costs about 30 s, so there the suite
 * runs the same code on 64-token windows (two of them, the second short) and checks that the figures
 * are finite, plausible and reproducible: memory safety there, numerics in the optimised build. */
#include <check.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/backend.h"
#include "engine/model.h"
#include "engine/ppl.h"
#include "tok.h"

#define MODEL "models/kvgate-tiny-coder"
#define TOL_NLL_PER_TOKEN 1e-3
#define TOL_QUANT_PPL 0.02

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	ck_assert(fread(b, 1, (size_t)n, f) == (size_t)n);
	fclose(f);
	b[n] = 0;
	*len = (size_t)n;
	return b;
}

/* shared by the tests: model, ids and reference, loaded once */
static struct eng_backend *g_be;
static struct eng_model *g_m;
static struct sh_tok_ids g_ids;
static cJSON *g_ref;

static void setup(void)
{
	struct sh_err err = {{0}};
	size_t len;
	char *txt = slurp(MODEL "/eval/heldout_ppl.json", &len);
	g_ref = cJSON_Parse(txt);
	free(txt);
	ck_assert(g_ref != NULL);
	struct sh_tok *tok = sh_tok_new(MODEL, &err);
	ck_assert_msg(tok != NULL, "%s", err.msg);
	txt = slurp(MODEL "/eval/heldout.txt", &len);
	sh_tok_ids_init(&g_ids);
	ck_assert_msg(sh_tok_encode(tok, txt, len, 0, &g_ids, &err) == SH_OK, "%s", err.msg);
	free(txt);
	sh_tok_free(tok);
	g_be = eng_cpu_new(0);
	struct eng_model_opts mo = {.dtype = -1, .max_tokens = SANITIZED ? 64 : 1024, .mla_prefill = 0, .progress = 0};
	ck_assert_msg(eng_model_load(MODEL, &mo, g_be, &g_m, &err) == SH_OK, "%s", err.msg);
}

static void teardown(void)
{
	eng_model_free(g_m);
	g_be->free(g_be);
	sh_tok_ids_release(&g_ids);
	cJSON_Delete(g_ref);
}

static double ref_window_nll(int i, int *start, int *n)
{
	const cJSON *w = cJSON_GetArrayItem(cJSON_GetObjectItem(g_ref, "windows_fp32"), i);
	ck_assert(w != NULL);
	*start = cJSON_GetObjectItem(w, "start")->valueint;
	*n = cJSON_GetObjectItem(w, "n")->valueint;
	return cJSON_GetObjectItem(w, "nll")->valuedouble;
}

static void run(enum eng_kv_fmt fmt, int bos, int n_windows, struct eng_ppl_window *w)
{
	struct sh_err err = {{0}};
	struct eng_ppl_opts o = {.window = 1024, .bos = bos, .max_windows = n_windows};
	ck_assert_int_eq(eng_ppl_n_windows((int)g_ids.n, &o), n_windows);
	ck_assert_msg(eng_ppl_run(g_m, fmt, g_ids.ids, (int)g_ids.n, &o, w, &err) == SH_OK, "%s", err.msg);
}

/* the same ids as transformers: count and SHA-256 as little-endian int32 */
START_TEST(tokens_match)
{
	ck_assert_int_eq((int)g_ids.n, cJSON_GetObjectItem(g_ref, "tokens")->valueint);
	unsigned char md[32];
	unsigned int mdlen = 0;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	for (size_t i = 0; i < g_ids.n; i++) {
		uint32_t u = (uint32_t)g_ids.ids[i];
		unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
				      (unsigned char)(u >> 24)};
		EVP_DigestUpdate(c, b, 4);
	}
	EVP_DigestFinal_ex(c, md, &mdlen);
	EVP_MD_CTX_free(c);
	char hex[65];
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	ck_assert_str_eq(hex, cJSON_GetObjectItem(g_ref, "token_ids_sha256_le_int32")->valuestring);
}
END_TEST

/* KV auto (f32 on the CPU): the first two windows, each within the per-token tolerance */
START_TEST(auto_matches_transformers)
{
	struct eng_ppl_window w[2];
	int bos = cJSON_GetObjectItem(g_ref, "bos_id")->valueint;
	run(ENG_KV_F32, bos, 2, w);
	for (int i = 0; i < 2; i++) {
		int start, n;
		double ref = ref_window_nll(i, &start, &n);
		ck_assert_int_eq(w[i].start, start);
		ck_assert_int_eq(w[i].n, n);
		double d = (w[i].nll - ref) / n;
		ck_assert_msg(fabs(d) <= TOL_NLL_PER_TOKEN, "window %d: engine %.4f, transformers %.4f: %+.2e nats/token",
			      i, w[i].nll, ref, d);
	}
}
END_TEST

/* fp8 and int8 caches: within 2% of transformers' perplexity on the first window; fp8's rounding
 * must also exceed the auto tolerance (the negative control: that tolerance detects a change this
 * small, so it would detect a fault) */
START_TEST(quantised_within_bound)
{
	static const enum eng_kv_fmt fmts[] = {ENG_KV_FP8, ENG_KV_INT8};
	int bos = cJSON_GetObjectItem(g_ref, "bos_id")->valueint;
	for (size_t f = 0; f < 2; f++) {
		struct eng_ppl_window w[1];
		int start, n;
		double ref = ref_window_nll(0, &start, &n);
		run(fmts[f], bos, 1, w);
		double d = (w[0].nll - ref) / n, r = exp(d) - 1; /* ppl ratio - 1 */
		ck_assert_msg(fabs(r) <= TOL_QUANT_PPL, "kv %s: perplexity %+.2f%% from transformers'",
			      eng_kv_fmt_name(fmts[f]), 100 * r);
		if (fmts[f] == ENG_KV_FP8)
			ck_assert_msg(fabs(d) > TOL_NLL_PER_TOKEN, "fp8 moved the NLL by only %+.2e nats/token: the "
				      "auto tolerance could not tell a fault from rounding", d);
	}
}
END_TEST

/* sanitizer build: short windows, finite and plausible figures, the same on a second run */
START_TEST(short_windows)
{
	struct sh_err err = {{0}};
	struct eng_ppl_window w[2], w2[2];
	struct eng_ppl_opts o = {.window = 64, .bos = cJSON_GetObjectItem(g_ref, "bos_id")->valueint};
	ck_assert_int_eq(eng_ppl_n_windows(100, &o), 2);
	for (int k = 0; k < 2; k++) {
		enum eng_kv_fmt fmt = k ? ENG_KV_INT8 : ENG_KV_F32;
		ck_assert_msg(eng_ppl_run(g_m, fmt, g_ids.ids, 100, &o, w, &err) == SH_OK, "%s", err.msg);
		ck_assert_msg(eng_ppl_run(g_m, fmt, g_ids.ids, 100, &o, w2, &err) == SH_OK, "%s", err.msg);
		ck_assert_int_eq(w[1].start, 64);
		ck_assert_int_eq(w[1].n, 36);
		for (int i = 0; i < 2; i++) {
			double mean = w[i].nll / w[i].n;
			ck_assert_msg(isfinite(mean) && mean > 0 && mean < log((double)g_m->cfg.vocab), "window %d: mean NLL %g", i,
				      mean);
			ck_assert(w[i].nll == w2[i].nll);
		}
	}
}
END_TEST

/* refusals */
START_TEST(bad_input)
{
	struct sh_err err = {{0}};
	struct eng_ppl_window w[1];
	int32_t ids[2] = {1, 1 << 30};
	struct eng_ppl_opts o = {.window = 16, .bos = 0, .max_windows = 0};
	ck_assert_int_eq(eng_ppl_run(g_m, ENG_KV_F32, ids, 2, &o, w, &err), SH_ERR);
	ck_assert(strstr(err.msg, "outside the vocabulary") != NULL);
	o.window = g_m->cfg.max_pos;
	ck_assert_int_eq(eng_ppl_run(g_m, ENG_KV_F32, ids, 1, &o, w, &err), SH_ERR);
	ck_assert_int_eq(eng_ppl_n_windows(2049, &(struct eng_ppl_opts){.window = 1024}), 3);
	ck_assert_int_eq(eng_ppl_n_windows(2049, &(struct eng_ppl_opts){.window = 1024, .max_windows = 2}), 2);
}
END_TEST

static Suite *ppl_suite(void)
{
	Suite *s = suite_create("ppl");
	TCase *tc = tcase_create("heldout");
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, tokens_match);
	if (SANITIZED) {
		tcase_add_test(tc, short_windows);
	} else {
		tcase_add_test(tc, auto_matches_transformers);
		tcase_add_test(tc, quantised_within_bound);
	}
	tcase_add_test(tc, bad_input);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(ppl_suite());
	/* one process: the model and ids are loaded once (an unchecked fixture runs in the parent) */
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	int nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf ? 1 : 0;
}
