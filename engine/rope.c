/* rope.c: rotary tables (see rope.h). Formulas follow transformers' modeling_rope_utils. */
#include "rope.h"

#include <math.h>
#include <string.h>

static double yarn_mscale(double scale, double m)
{
	return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

static double yarn_correction_dim(double rot, int dim, double base, int max_pos)
{
	return dim * log(max_pos / (rot * 2 * M_PI)) / (2 * log(base));
}

int eng_rope_init(struct eng_rope *r, const struct eng_rope_cfg *c, struct sh_err *err)
{
	int dim = c->dim, half = dim / 2;

	memset(r, 0, sizeof(*r));
	if (dim <= 0 || dim % 2 || half > (int)(sizeof(r->inv_freq) / sizeof(r->inv_freq[0])))
		return sh_errf(err, "rope: rotated dimension %d not supported (even, at most 512)", dim);
	r->dim = dim;
	r->interleaved = c->interleaved;
	r->mscale = 1.0f;
	for (int i = 0; i < half; i++) {
		/* transformers: base ** (arange(0, dim, 2).float() / dim), in fp32 */
		float expo = (float)(2 * i) / (float)dim;
		float pos_freq = powf((float)c->theta, expo);
		float inv = 1.0f / pos_freq;
		switch (c->type) {
		case ENG_ROPE_DEFAULT:
			break;
		case ENG_ROPE_LINEAR:
			inv = inv / (float)c->factor;
			break;
		case ENG_ROPE_LLAMA3: {
			double lo_wl = c->orig_max_pos / c->low_freq_factor, hi_wl = c->orig_max_pos / c->high_freq_factor;
			double wl = 2 * M_PI / inv;
			double v = inv;
			if (wl > lo_wl)
				v = inv / c->factor;
			if (!(wl < hi_wl) && !(wl > lo_wl)) {
				double s = (c->orig_max_pos / wl - c->low_freq_factor) /
					   (c->high_freq_factor - c->low_freq_factor);
				v = (1 - s) * inv / c->factor + s * inv;
			}
			inv = (float)v;
			break;
		}
		case ENG_ROPE_YARN: {
			double low = floor(yarn_correction_dim(c->beta_fast, dim, c->theta, c->orig_max_pos));
			double high = ceil(yarn_correction_dim(c->beta_slow, dim, c->theta, c->orig_max_pos));
			if (low < 0)
				low = 0;
			if (high > dim - 1)
				high = dim - 1;
			if (low == high)
				high += 0.001;
			float ramp = ((float)i - (float)low) / (float)(high - low);
			ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
			float extra = 1.0f - ramp; /* weight of the extrapolated (unscaled) frequency */
			float interp = 1.0f / ((float)c->factor * pos_freq);
			inv = interp * (1 - extra) + inv * extra;
			break;
		}
		}
		r->inv_freq[i] = inv;
	}
	if (c->type == ENG_ROPE_YARN) {
		if (c->attention_factor >= 0)
			r->mscale = (float)c->attention_factor;
		else if (c->mscale && c->mscale_all_dim)
			r->mscale = (float)(yarn_mscale(c->factor, c->mscale) / yarn_mscale(c->factor, c->mscale_all_dim));
		else
			r->mscale = (float)yarn_mscale(c->factor, 1.0);
	}
	return SH_OK;
}
