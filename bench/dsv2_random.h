/* dsv2_random.h: the DeepSeek-Coder-V2-Lite shape with random bf16 weights (no download), built on
 * any backend, and the decode inputs the benches feed it: bench/cuda_decode.c times it on the GPU,
 * bench/experts.c runs the same steps on the CPU to count the experts its router touches.
 *
 *   struct eng_model *m = dsv2_build(be, fill, 27, 2048, &wbytes);
 *   dsv2_fill_kv(be, kv, m, sp, nseq, maxB, npos, &err);      the cache rows of every layer
 *   ids[s] = dsv2_token(&m->cfg, s, st);                         sequence s's token at step st
 *   dsv2_step_weight_bytes(&m->cfg, touched)                     bytes one step reads
 */
#ifndef DSV2_RANDOM_H
#define DSV2_RANDOM_H

#include <stddef.h>
#include <stdint.h>

#include "engine/kv.h"
#include "engine/model.h"

/* Fills n bf16 values at p (backend memory) with the hash of seed: uniform in [-scale, scale),
 * value i the same wherever it is made. Returns 0, or -1 when the device failed. */
typedef int (*dsv2_fill_fn)(void *p, size_t n, unsigned long long seed, float scale);

/* Value i of seed's sequence as bf16 bits (bench/cuda_fill.cu makes the same on the GPU), and the
 * fill for host memory (the CPU backend). */
uint16_t dsv2_hash_bf16(size_t i, unsigned long long seed, float scale);
int dsv2_fill_host(void *p, size_t n, unsigned long long seed, float scale);

/* The model's first n_layers layers (27: the whole shape; fewer: the same weights as the first
 * n_layers of the whole, since every tensor's seed comes in a fixed order), with workspace for
 * max_tokens tokens a forward call. Exits with a message when memory runs out. *wbytes (if not
 * NULL): bytes of weights made. */
struct eng_model *dsv2_build(struct eng_backend *be, dsv2_fill_fn fill, int n_layers, int max_tokens,
			     double *wbytes);

/* Routed experts a uniform router touches per MoE layer at batch B: E (1 - (1 - k / E)^B). */
double dsv2_uniform_touched(const struct eng_config *c, int B);

/* Bf16 weight bytes one decode step reads when each MoE layer touches `touched` routed experts:
 * attention (with the per-head absorptions), router, shared and routed experts, the dense first
 * layer and lm_head (the embedding's one row a token is left out). */
double dsv2_step_weight_bytes(const struct eng_config *c, double touched);

/* The bench's cache: every layer's rows of sequences 0 .. nseq - 1 at positions 0 .. npos - 1
 * (multiples of 512), from one fixed pattern, through the backend's kv_write. sp[0 .. maxB - 1]
 * are prepared for npos positions first. Returns SH_OK or the kv's error (pool too small). */
int dsv2_fill_kv(struct eng_backend *be, struct eng_kv *kv, const struct eng_model *m, struct eng_kv_seq **sp,
		 int nseq, int maxB, int npos, struct sh_err *err);

/* One decode step's batch on the bench's cache: sequence s < B (of sp[0 .. maxB - 1]) gets
 * dsv2_token(s, st) at position ctx + st, the logits of every token. */
#define DSV2_MAXB 32
struct dsv2_step {
	int32_t ids[DSV2_MAXB], pos[DSV2_MAXB], seq[DSV2_MAXB];
	uint8_t want[DSV2_MAXB];
	struct eng_batch b;
};
/* Fills t and prepares each sequence's block for its position; the kv's error when the pool is
 * too small. After the forward, dsv2_step_done records the new tokens in the sequences. */
int dsv2_step_make(struct dsv2_step *t, const struct eng_config *c, struct eng_kv *kv, struct eng_kv_seq **sp, int B,
		   int maxB, int ctx, int st, struct sh_err *err);
void dsv2_step_done(const struct dsv2_step *t);

/* Sequence s's token at decode step st. */
static inline int32_t dsv2_token(const struct eng_config *c, int s, int st)
{
	return (int32_t)(((int64_t)s * 7919 + (int64_t)st * 104729) % c->vocab);
}

#endif
