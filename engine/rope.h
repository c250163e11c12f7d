/* rope.h: rotary position tables from a config's rope fields (default, linear, llama3, yarn),
 * computed as transformers computes them (fp32 frequencies, cos/sin of pos * inv_freq in fp32,
 * scaled by the attention factor). */
#ifndef ENG_ROPE_H
#define ENG_ROPE_H

#include "config.h"

struct eng_rope {
	int dim;          /* rotated dims; dim/2 frequencies */
	int interleaved;  /* pairs (2i, 2i+1) vs halves (i, i + dim/2) */
	float mscale;     /* multiplies cos and sin (YaRN attention factor) */
	float inv_freq[256];
};

/* Fills r from cfg->rope. Refuses a rotated dimension over 512. */
int eng_rope_init(struct eng_rope *r, const struct eng_rope_cfg *cfg, struct sh_err *err);

#endif
