/* sampler.h: next-token choice from one sequence's logits.
 *
 * Order, as vLLM applies it: logit_bias, repetition penalty (prompt and output tokens: positive logits divided,
 * negative multiplied), presence and frequency penalties (output tokens only), then greedy at
 * temperature 0, else softmax(logits / T) cut by top_k, top_p and min_p and sampled with the
 * sequence's own generator (xorshift64*). The generator belongs to the sequence, never to the
 * batch, so the same seed and prompt give the same tokens alone or batched with others. */
#ifndef ENG_SAMPLER_H
#define ENG_SAMPLER_H

#include <stdint.h>

/* A request's sampling parameters (OpenAI / vLLM meanings). */
struct eng_sampling {
	float temperature;          /* 0: greedy */
	float top_p;                /* (0, 1]; 1: off */
	int top_k;                  /* <= 0: off */
	float min_p;                /* [0, 1]; 0: off */
	float presence_penalty;     /* [-2, 2] */
	float frequency_penalty;    /* [-2, 2] */
	float repetition_penalty;   /* > 0; 1: off */
	/* logit_bias: bias[i] added to token bias_ids[i]'s logit before everything else; the arrays
	 * belong to whoever holds this (eng_seq_params: eng_seq_params_release frees them) */
	int32_t *bias_ids;
	float *bias;
	int n_bias;
};

void eng_sampling_defaults(struct eng_sampling *p);

struct eng_sampler {
	struct eng_sampling p;
	uint64_t state;
	/* scratch, grown to the vocabulary on first use; owned (eng_sampler_release) */
	float *prob;
	int32_t *idx;
	int32_t *count;
	int cap;
};

/* Part 1's call: temperature only. No scratch is needed (eng_sampler_release is still fine). */
void eng_sampler_init(struct eng_sampler *s, float temperature, uint64_t seed);
void eng_sampler_setup(struct eng_sampler *s, const struct eng_sampling *p, uint64_t seed);
void eng_sampler_release(struct eng_sampler *s);

/* logits (V) are left as they were. */
int32_t eng_sampler_pick(struct eng_sampler *s, const float *logits, int V);

/* The full pipeline: penalties from the history (prompt: n_prompt ids, then output: n_out ids),
 * then the pick. logits (V) are modified in place. */
int32_t eng_sampler_sample(struct eng_sampler *s, float *logits, int V, const int32_t *prompt, int n_prompt,
			   const int32_t *out, int n_out);

/* Log-probabilities of the raw logits (V): the chosen token's into *lp, and the k most likely
 * tokens (k <= 20) into top_ids/top_lps, best first. Returns how many were written (<= k). */
int eng_logprobs(const float *logits, int V, int32_t chosen, float *lp, int k, int32_t *top_ids, float *top_lps);

#endif
