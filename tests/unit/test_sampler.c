/* test_sampler.c: the sampler (engine/sampler.h): greedy, seeded reproducibility, top_k / top_p /
 * min_p cut the candidates, penalties move the right logits, logprobs are normalised and sorted. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"

#define V 64

static void logits_init(float *l)
{
	for (int i = 0; i < V; i++)
		l[i] = (float)((i * 37) % V) / 8.0f;  /* a permutation: all distinct */
}

static int argmax(const float *l)
{
	int b = 0;
	for (int i = 1; i < V; i++)
		if (l[i] > l[b])
			b = i;
	return b;
}

START_TEST(greedy)
{
	float l[V];
	struct eng_sampling p;
	struct eng_sampler s;
	logits_init(l);
	eng_sampling_defaults(&p);
	p.temperature = 0;
	eng_sampler_setup(&s, &p, 1);
	ck_assert_int_eq(eng_sampler_sample(&s, l, V, NULL, 0, NULL, 0), argmax(l));
	eng_sampler_release(&s);
}
END_TEST

START_TEST(same_seed_same_tokens)
{
	struct eng_sampling p;
	eng_sampling_defaults(&p);
	p.temperature = 1.3f;
	p.top_p = 0.9f;
	p.top_k = 20;
	int a[50], b[50], c[50];
	struct eng_sampler s1, s2, s3;
	eng_sampler_setup(&s1, &p, 42);
	eng_sampler_setup(&s2, &p, 42);
	eng_sampler_setup(&s3, &p, 43);
	for (int i = 0; i < 50; i++) {
		float l[V];
		logits_init(l);
		a[i] = eng_sampler_sample(&s1, l, V, NULL, 0, NULL, 0);
		logits_init(l);
		b[i] = eng_sampler_sample(&s2, l, V, NULL, 0, NULL, 0);
		logits_init(l);
		c[i] = eng_sampler_sample(&s3, l, V, NULL, 0, NULL, 0);
	}
	ck_assert(!memcmp(a, b, sizeof(a)));
	ck_assert(memcmp(a, c, sizeof(a)) != 0);
	eng_sampler_release(&s1);
	eng_sampler_release(&s2);
	eng_sampler_release(&s3);
}
END_TEST

/* The sampled ids stay within the k best / the nucleus / above min_p x the best. */
START_TEST(cuts)
{
	float l[V];
	logits_init(l);
	int order[V];
	for (int i = 0; i < V; i++)
		order[i] = i;
	for (int i = 0; i < V; i++)  /* sort ids by logit, descending */
		for (int j = i + 1; j < V; j++)
			if (l[order[j]] > l[order[i]]) {
				int t = order[i];
				order[i] = order[j];
				order[j] = t;
			}
	struct {
		int top_k;
		float top_p, min_p;
		int allowed;  /* how many of the best ids may come out */
	} rows[] = {
		{3, 1.0f, 0, 3},
		{1, 1.0f, 0, 1},
		{0, 1e-6f, 0, 1},          /* a tiny nucleus keeps only the best */
		{0, 1.0f, 0.99f, 1},       /* min_p close to 1: only the best */
	};
	for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
		struct eng_sampling p;
		struct eng_sampler s;
		eng_sampling_defaults(&p);
		p.temperature = 2.0f;
		p.top_k = rows[r].top_k;
		p.top_p = rows[r].top_p;
		p.min_p = rows[r].min_p;
		eng_sampler_setup(&s, &p, 7);
		for (int i = 0; i < 200; i++) {
			float x[V];
			logits_init(x);
			int t = eng_sampler_sample(&s, x, V, NULL, 0, NULL, 0);
			int ok = 0;
			for (int k = 0; k < rows[r].allowed; k++)
				ok |= order[k] == t;
			ck_assert_msg(ok, "row %zu: token %d is not among the %d best", r, t, rows[r].allowed);
		}
		eng_sampler_release(&s);
	}
}
END_TEST

START_TEST(penalties)
{
	float l[V];
	struct eng_sampling p;
	struct eng_sampler s;
	logits_init(l);
	int best = argmax(l);
	int32_t out[3] = {best, best, 5};
	eng_sampling_defaults(&p);
	p.temperature = 0;
	p.frequency_penalty = 2.0f;
	p.presence_penalty = 1.0f;
	eng_sampler_setup(&s, &p, 1);
	float before5 = l[5], beforeb = l[best];
	eng_sampler_sample(&s, l, V, NULL, 0, out, 3);
	ck_assert_float_eq_tol(l[best], beforeb - 2 * 2.0f - 1.0f, 1e-6);
	ck_assert_float_eq_tol(l[5], before5 - 2.0f - 1.0f, 1e-6);
	eng_sampler_release(&s);

	/* repetition: prompt tokens too, positive divided, negative multiplied */
	float r[V];
	for (int i = 0; i < V; i++)
		r[i] = i % 2 ? 2.0f : -2.0f;
	int32_t prompt[2] = {1, 2};
	eng_sampling_defaults(&p);
	p.temperature = 0;
	p.repetition_penalty = 2.0f;
	eng_sampler_setup(&s, &p, 1);
	eng_sampler_sample(&s, r, V, prompt, 2, NULL, 0);
	ck_assert_float_eq(r[1], 1.0f);
	ck_assert_float_eq(r[2], -4.0f);
	ck_assert_float_eq(r[3], 2.0f);
	eng_sampler_release(&s);
}
END_TEST

START_TEST(logprobs)
{
	float l[V];
	logits_init(l);
	int32_t ids[20];
	float lps[20], lp;
	int n = eng_logprobs(l, V, 3, &lp, 5, ids, lps);
	ck_assert_int_eq(n, 5);
	ck_assert_int_eq(ids[0], argmax(l));
	for (int i = 1; i < n; i++)
		ck_assert(lps[i] <= lps[i - 1]);
	double sum = 0;
	for (int i = 0; i < V; i++)
		sum += exp(l[i] - l[ids[0]] + lps[0]);
	ck_assert_float_eq_tol(sum, 1.0, 1e-4);
	ck_assert(lp <= 0);
	ck_assert_int_eq(eng_logprobs(l, V, 3, &lp, 0, ids, lps), 0);
}
END_TEST

static Suite *sampler_suite(void)
{
	Suite *s = suite_create("sampler");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, greedy);
	tcase_add_test(tc, same_seed_same_tokens);
	tcase_add_test(tc, cuts);
	tcase_add_test(tc, penalties);
	tcase_add_test(tc, logprobs);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(sampler_suite());
	srunner_run_all(sr, CK_NORMAL);
	int nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf ? 1 : 0;
}
