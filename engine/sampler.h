/* sampler.h: next-token choice from logits: greedy at temperature 0, else softmax(logits / T)
 * sampled with a seeded generator (xorshift64*), reproducible for a seed. */
#ifndef ENG_SAMPLER_H
#define ENG_SAMPLER_H

#include <stdint.h>

struct eng_sampler {
	float temperature;
	uint64_t state;
};

void eng_sampler_init(struct eng_sampler *s, float temperature, uint64_t seed);
/* logits (V) are left as they were. */
int32_t eng_sampler_pick(struct eng_sampler *s, const float *logits, int V);

#endif
