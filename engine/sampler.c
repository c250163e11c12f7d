/* sampler.c: see sampler.h. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sh.h"

void eng_sampling_defaults(struct eng_sampling *p)
{
	memset(p, 0, sizeof(*p));
	p->temperature = 1.0f;
	p->top_p = 1.0f;
	p->repetition_penalty = 1.0f;
}

void eng_sampler_setup(struct eng_sampler *s, const struct eng_sampling *p, uint64_t seed)
{
	memset(s, 0, sizeof(*s));
	s->p = *p;
	s->state = seed * 0x9E3779B97F4A7C15ull + 1;
}

void eng_sampler_init(struct eng_sampler *s, float temperature, uint64_t seed)
{
	struct eng_sampling p;
	eng_sampling_defaults(&p);
	p.temperature = temperature;
	eng_sampler_setup(s, &p, seed);
}

void eng_sampler_release(struct eng_sampler *s)
{
	free(s->prob);
	free(s->idx);
	free(s->count);
	s->prob = NULL;
	s->idx = NULL;
	s->count = NULL;
	s->cap = 0;
}

static double uniform(struct eng_sampler *s)
{
	s->state ^= s->state >> 12;
	s->state ^= s->state << 25;
	s->state ^= s->state >> 27;
	return (double)((s->state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

static int argmax(const float *x, int V)
{
	int best = 0;
	for (int i = 1; i < V; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

int32_t eng_sampler_pick(struct eng_sampler *s, const float *logits, int V)
{
	int best = argmax(logits, V);
	if (s->p.temperature <= 0)
		return best;
	double sum = 0, mx = logits[best];
	for (int i = 0; i < V; i++)
		sum += exp((logits[i] - mx) / s->p.temperature);
	double r = uniform(s) * sum, acc = 0;
	for (int i = 0; i < V; i++) {
		acc += exp((logits[i] - mx) / s->p.temperature);
		if (acc >= r)
			return i;
	}
	return best;
}

static void reserve(struct eng_sampler *s, int V)
{
	if (s->cap >= V)
		return;
	s->prob = sh_realloc(s->prob, sizeof(float) * (size_t)V);
	s->idx = sh_realloc(s->idx, sizeof(int32_t) * (size_t)V);
	s->count = sh_realloc(s->count, sizeof(int32_t) * (size_t)V);
	s->cap = V;
}

static const float *sort_prob;
static int by_prob_desc(const void *a, const void *b)
{
	float x = sort_prob[*(const int32_t *)a], y = sort_prob[*(const int32_t *)b];
	if (x != y)
		return x < y ? 1 : -1;
	return *(const int32_t *)a - *(const int32_t *)b;  /* ties by id: a total order, reproducible */
}

/* qsort's comparator has no context argument; sorts run on the scheduler thread only, but a lock
 * keeps this correct if two threads ever sample at once. */
#include <pthread.h>
static pthread_mutex_t sort_mu = PTHREAD_MUTEX_INITIALIZER;

int32_t eng_sampler_sample(struct eng_sampler *s, float *logits, int V, const int32_t *prompt, int n_prompt,
			   const int32_t *out, int n_out)
{
	const struct eng_sampling *p = &s->p;
	int penal = p->repetition_penalty != 1.0f || p->presence_penalty != 0 || p->frequency_penalty != 0;
	int cut = p->temperature > 0 && ((p->top_k > 0 && p->top_k < V) || p->top_p < 1.0f || p->min_p > 0);

	if (penal || cut || p->temperature > 0)
		reserve(s, V);
	/* 0. logit_bias (ids checked against the vocabulary when parsed) */
	for (int i = 0; i < p->n_bias; i++)
		if (p->bias_ids[i] >= 0 && p->bias_ids[i] < V)
			logits[p->bias_ids[i]] += p->bias[i];
	/* 1. penalties */
	if (penal) {
		int32_t *cnt = s->count;
		memset(cnt, 0, sizeof(int32_t) * (size_t)V);
		for (int i = 0; i < n_out; i++)
			if (out[i] >= 0 && out[i] < V)
				cnt[out[i]]++;
		if (p->repetition_penalty != 1.0f) {
			float rp = p->repetition_penalty;
			/* mark prompt tokens with -1 (not seen in the output) so that each token is hit once */
			for (int i = 0; i < n_prompt; i++)
				if (prompt[i] >= 0 && prompt[i] < V && cnt[prompt[i]] == 0)
					cnt[prompt[i]] = -1;
			for (int i = 0; i < V; i++)
				if (cnt[i])
					logits[i] = logits[i] > 0 ? logits[i] / rp : logits[i] * rp;
		}
		for (int i = 0; i < V; i++)
			if (cnt[i] > 0)
				logits[i] -= p->frequency_penalty * (float)cnt[i] + p->presence_penalty;
	}
	/* 2. greedy */
	int best = argmax(logits, V);
	if (p->temperature <= 0)
		return best;
	/* 3. softmax at temperature */
	float *pr = s->prob;
	double sum = 0, mx = logits[best];
	for (int i = 0; i < V; i++) {
		pr[i] = (float)exp((logits[i] - mx) / p->temperature);
		sum += pr[i];
	}
	for (int i = 0; i < V; i++)
		pr[i] = (float)(pr[i] / sum);
	if (!cut) {
		double r = uniform(s), acc = 0;
		for (int i = 0; i < V; i++) {
			acc += pr[i];
			if (acc > r)
				return i;
		}
		return best;
	}
	/* 4. candidates: min_p, then top_k, then top_p over the sorted survivors */
	int32_t *idx = s->idx;
	int n = 0;
	float floor_p = p->min_p > 0 ? p->min_p * pr[best] : 0;
	for (int i = 0; i < V; i++)
		if (pr[i] >= floor_p)
			idx[n++] = i;
	pthread_mutex_lock(&sort_mu);
	sort_prob = pr;
	qsort(idx, (size_t)n, sizeof(int32_t), by_prob_desc);
	pthread_mutex_unlock(&sort_mu);
	if (p->top_k > 0 && p->top_k < n)
		n = p->top_k;
	if (p->top_p < 1.0f) {
		double acc = 0;
		int k = 0;
		while (k < n) {
			acc += pr[idx[k++]];
			if (acc >= p->top_p)
				break;
		}
		n = k;
	}
	double tot = 0;
	for (int i = 0; i < n; i++)
		tot += pr[idx[i]];
	double r = uniform(s) * tot, acc = 0;
	for (int i = 0; i < n; i++) {
		acc += pr[idx[i]];
		if (acc > r)
			return idx[i];
	}
	return idx[0];
}

int eng_logprobs(const float *logits, int V, int32_t chosen, float *lp, int k, int32_t *top_ids, float *top_lps)
{
	int best = argmax(logits, V);
	double sum = 0, mx = logits[best];
	for (int i = 0; i < V; i++)
		sum += exp(logits[i] - mx);
	double lse = mx + log(sum);
	*lp = (float)(logits[chosen] - lse);
	if (k > 20)
		k = 20;
	if (k > V)
		k = V;
	/* insertion into a short sorted list */
	int n = 0;
	for (int i = 0; i < V; i++) {
		float v = logits[i];
		if (n == k && (k == 0 || v <= logits[top_ids[n - 1]]))
			continue;
		int j = n < k ? n++ : n - 1;
		while (j > 0 && logits[top_ids[j - 1]] < v) {
			top_ids[j] = top_ids[j - 1];
			j--;
		}
		top_ids[j] = i;
	}
	for (int i = 0; i < n; i++)
		top_lps[i] = (float)(logits[top_ids[i]] - lse);
	return n;
}
