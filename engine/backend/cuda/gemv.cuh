/* gemv.cuh: the weight-streaming core shared by matmul.cu and moe_ffn.cu. A warp computes RPW
 * output rows for up to NT tokens; each lane streams VEC weights per row per step with one 16-byte
 * load (VEC 8 for bf16/f16, 4 for f32; VEC 1 is the unaligned fallback), several rows' loads in
 * flight before their first use; activations are read through L1 (the block's warps share them). */
#ifndef ENG_GEMV_CUH
#define ENG_GEMV_CUH

#include "engine/backend/cuda/cu.h"

template <int VEC> __device__ __forceinline__ void gemv_xload(const float *p, float *f)
{
	if constexpr (VEC == 8) {
		float4 a = __ldg((const float4 *)p), b = __ldg((const float4 *)(p + 4));
		f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
	} else if constexpr (VEC == 4) {
		float4 a = __ldg((const float4 *)p);
		f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
	} else {
		f[0] = __ldg(p);
	}
}

/* acc[r][t] (every lane, reduced) = W[row0 + r] . xs[t] for t < nt; rows past `rows` read the
 * last row (their results are the caller's to drop). */
template <typename T, int VEC, int RPW, int NT>
__device__ __forceinline__ void gemv_warp(const T *w, size_t ld, int row0, int rows, int cols,
					  const float *const *xs, int nt, float (&acc)[RPW][NT])
{
	int lane = threadIdx.x & 31;
	const T *wr[RPW];
#pragma unroll
	for (int r = 0; r < RPW; r++) {
		wr[r] = w + (size_t)min(row0 + r, rows - 1) * ld;
#pragma unroll
		for (int t = 0; t < NT; t++)
			acc[r][t] = 0.0f;
	}
#pragma unroll 2
	for (int k = lane * VEC; k < cols; k += 32 * VEC) {
		float wv[RPW][VEC];
#pragma unroll
		for (int r = 0; r < RPW; r++)
			cu_wload<T, VEC>::load(wr[r] + k, wv[r]);
#pragma unroll
		for (int t = 0; t < NT; t++) {
			if (t < nt) {
				float xv[VEC];
				gemv_xload<VEC>(xs[t] + k, xv);
#pragma unroll
				for (int r = 0; r < RPW; r++)
#pragma unroll
					for (int v = 0; v < VEC; v++)
						acc[r][t] = fmaf(wv[r][v], xv[v], acc[r][t]);
			}
		}
	}
#pragma unroll
	for (int r = 0; r < RPW; r++)
#pragma unroll
		for (int t = 0; t < NT; t++)
			acc[r][t] = cu_warp_sum(acc[r][t]);
}

#endif
