/* kv_write.cu: row i of rows goes to position b->pos[i] of its sequence, encoded in the cache's
 * format with the host codec's arithmetic (kv_layout.h's conversions, the same scale rule: per
 * token per part, amax / 448 for fp8, amax / 127 for int8), so CPU and CUDA caches hold the same
 * bytes for the same rows. One block per token, one warp per part. */
#include "engine/backend/cuda/cu.h"

struct kvw_parts {
	int off[ENG_KV_MAX_PARTS + 1];
};

__global__ void kv_write_kernel(uint8_t *pool, size_t lbb, int n_layers, int layer, const int32_t *bp, int n,
				int maxb, cu_kvfmt f, kvw_parts parts, const float *rows, int ld)
{
	cu_pdl_wait();
	int i = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	int pos = bp[i], seq = bp[n + i];
	const int32_t *tab = bp + 2 * n + (size_t)seq * maxb;
	uint8_t *lb = (uint8_t *)cu_kv_lb(pool, lbb, n_layers, layer, tab, pos);
	int slot = pos % ENG_KV_BLOCK_TOKENS;
	const float *row = rows + (size_t)i * ld;
	switch (f.fmt) {
	case ENG_KV_F32:
		for (int e = threadIdx.x; e < f.E; e += blockDim.x)
			((float *)lb)[(size_t)slot * f.E + e] = row[e];
		return;
	case ENG_KV_BF16:
		for (int e = threadIdx.x; e < f.E; e += blockDim.x)
			((uint16_t *)lb)[(size_t)slot * f.E + e] = eng_f32_to_bf16(row[e]);
		return;
	case ENG_KV_FP8_TENSOR: {
		float inv = 1.0f / f.tscale;
		for (int e = threadIdx.x; e < f.E; e += blockDim.x)
			lb[(size_t)slot * f.E + e] = eng_f32_to_fp8(row[e] * inv);
		return;
	}
	default:
		break;
	}
	uint8_t *d = lb + (size_t)slot * f.E;
	float *sc = (float *)(lb + f.scales_off) + (size_t)slot * f.P;
	float qmax = f.fmt == ENG_KV_FP8 ? ENG_FP8_MAX : ENG_INT8_MAX;
	for (int p = warp; p < f.P; p += nw) {
		int e0 = parts.off[p], e1 = parts.off[p + 1];
		float amax = 0;
		for (int e = e0 + lane; e < e1; e += 32)
			amax = fmaxf(amax, fabsf(row[e]));
		amax = cu_warp_max(amax);
		float s = amax > 0 ? amax / qmax : 1.0f;
		float inv = 1.0f / s;
		if (lane == 0)
			sc[p] = s;
		if (f.fmt == ENG_KV_FP8) {
			for (int e = e0 + lane; e < e1; e += 32)
				d[e] = eng_f32_to_fp8(row[e] * inv);
		} else {
			for (int e = e0 + lane; e < e1; e += 32) {
				float q = rintf(row[e] * inv);
				q = q > 127 ? 127 : q < -127 ? -127 : q;
				d[e] = (uint8_t)(int8_t)q;
			}
		}
	}
}

void cu_kv_write(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b, const float *rows,
		 int ld)
{
	struct cu *c = CU(be);
	if (b->n <= 0)
		return;
	int maxb;
	const int32_t *bp = cu_batch(c, b, &maxb);
	kvw_parts parts;
	memcpy(parts.off, kv->shape.part_off, sizeof(int) * (size_t)(kv->shape.n_parts + 1));
	cu_launch(c, kv_write_kernel, b->n, 256, 0, kv->pool, kv->layer_block_bytes, kv->shape.n_layers, layer, bp, b->n,
		  maxb, cu_kvfmt_of(kv), parts, rows, ld);
}
