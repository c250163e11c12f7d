/* attn_dense.cu: causal attention for one sequence over dense fp32 k/v (the naive MLA prefill):
 * q (n, nh, dq) at positions pos, k (ctx, nh, dq), v (ctx, nh, dv) -> out (n, nh, dv); token i sees
 * keys 0..pos[i]. One block per (head, token), warps over keys with online softmax, as attn_gqa.cu. */
#include "engine/backend/cuda/cu.h"

#define DENSE_WARPS 4
#define DENSE_MAXJ 8 /* dims per lane: up to 256 */

__global__ void __launch_bounds__(DENSE_WARPS * 32)
attn_dense_kernel(const float *q, const int32_t *pos, const float *k, const float *v, int ctx, int nh, int dq,
		  int dv, float scale, float *out)
{
	int h = blockIdx.x, i = blockIdx.y, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	int nk = min(pos[i] + 1, ctx);
	const float *qi = q + ((size_t)i * nh + h) * dq;
	float qr[DENSE_MAXJ], o[DENSE_MAXJ];
#pragma unroll
	for (int j = 0; j < DENSE_MAXJ; j++) {
		int d = lane + 32 * j;
		qr[j] = d < dq ? qi[d] : 0.0f;
		o[j] = 0.0f;
	}
	float m = -INFINITY, l = 0.0f;
	for (int p = w; p < nk; p += DENSE_WARPS) {
		const float *kp = k + ((size_t)p * nh + h) * dq, *vp = v + ((size_t)p * nh + h) * dv;
		float s = 0.0f;
#pragma unroll
		for (int j = 0; j < DENSE_MAXJ; j++) {
			int d = lane + 32 * j;
			if (d < dq)
				s += qr[j] * kp[d];
		}
		s = cu_warp_sum(s) * scale;
		float mn = fmaxf(m, s), al = expf(m - mn), e = expf(s - mn);
		l = l * al + e;
		m = mn;
#pragma unroll
		for (int j = 0; j < DENSE_MAXJ; j++) {
			int d = lane + 32 * j;
			if (d < dv)
				o[j] = o[j] * al + e * vp[d];
		}
	}
	__shared__ float sm[DENSE_WARPS], sl[DENSE_WARPS], so[DENSE_WARPS][32 * DENSE_MAXJ];
	if (lane == 0)
		sm[w] = m, sl[w] = l;
#pragma unroll
	for (int j = 0; j < DENSE_MAXJ; j++)
		so[w][lane + 32 * j] = o[j];
	__syncthreads();
	float M = -INFINITY, L = 0.0f, f[DENSE_WARPS];
#pragma unroll
	for (int x = 0; x < DENSE_WARPS; x++)
		M = fmaxf(M, sm[x]);
#pragma unroll
	for (int x = 0; x < DENSE_WARPS; x++) {
		f[x] = sl[x] > 0.0f ? expf(sm[x] - M) : 0.0f;
		L += sl[x] * f[x];
	}
	float *oi = out + ((size_t)i * nh + h) * dv;
	for (int d = threadIdx.x; d < dv; d += blockDim.x) {
		float a = 0.0f;
#pragma unroll
		for (int x = 0; x < DENSE_WARPS; x++)
			a += so[x][d] * f[x];
		oi[d] = a / L;
	}
}

void cu_attn_dense(struct eng_backend *be, const float *q, const int32_t *pos, int n, const float *k, const float *v,
		   int ctx, int n_heads, int dq, int dv, float scale, float *out)
{
	struct cu *c = CU(be);
	if (n <= 0)
		return;
	SH_BUG_ON(dq > 32 * DENSE_MAXJ || dv > 32 * DENSE_MAXJ);
	const int32_t *dpos = cu_upload(c, CU_UP_POS, pos, (size_t)n);
	attn_dense_kernel<<<dim3(n_heads, n), DENSE_WARPS * 32, 0, c->st>>>(q, dpos, k, v, ctx, n_heads, dq, dv, scale,
									     out);
	CU_LAUNCHED();
}
