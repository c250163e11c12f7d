/* sampler.c: see sampler.h. */
#include "sampler.h"

#include <math.h>

void eng_sampler_init(struct eng_sampler *s, float temperature, uint64_t seed)
{
	s->temperature = temperature;
	s->state = seed * 0x9E3779B97F4A7C15ull + 1;
}

static double uniform(struct eng_sampler *s)
{
	s->state ^= s->state >> 12;
	s->state ^= s->state << 25;
	s->state ^= s->state >> 27;
	return (double)((s->state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

int32_t eng_sampler_pick(struct eng_sampler *s, const float *logits, int V)
{
	int best = 0;
	for (int i = 1; i < V; i++)
		if (logits[i] > logits[best])
			best = i;
	if (s->temperature <= 0)
		return best;
	double sum = 0, mx = logits[best];
	for (int i = 0; i < V; i++)
		sum += exp((logits[i] - mx) / s->temperature);
	double r = uniform(s) * sum, acc = 0;
	for (int i = 0; i < V; i++) {
		acc += exp((logits[i] - mx) / s->temperature);
		if (acc >= r)
			return i;
	}
	return best;
}
