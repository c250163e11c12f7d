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

/* The warp's rows row0 .. row0 + RPW - 1 into L2, a 128-byte line a lane at a time: issued before
 * cu_pdl_wait, so that the weights stream while the previous kernel finishes. */
template <typename T, int RPW>
__device__ __forceinline__ void gemv_prefetch(const T *w, size_t ld, int row0, int rows, int cols)
{
	int lane = threadIdx.x & 31;
	size_t bytes = (size_t)cols * sizeof(T);
#pragma unroll
	for (int r = 0; r < RPW; r++) {
		const char *p = (const char *)(w + (size_t)min(row0 + r, rows - 1) * ld);
		for (size_t o = (size_t)lane * 128; o < bytes; o += 32 * 128)
			cu_prefetch_l2(p + o);
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

/* ---- n = 2..8 on the tensor cores (bf16 weights, fast mode): gemv_mma_rows ----
 * The fp32 GEMV re-reads every token's activations for each 16 bytes of weights and spends 8 FMAs
 * per weight at n = 8: at 4.3 TB/s that is half the chip's fp32 rate, and run 4's profile had it
 * at 25 % of copy bandwidth. Here a block takes 16 rows; its 8 warps split the columns in chunks
 * of 32; per chunk a lane loads 16 bytes of row g and of row g + 8 and 8 activations of token g,
 * and two mma.m16n8k16 consume them. The k order inside a chunk is permuted alike for weights and
 * activations (lane t4 holds physical k 8*t4 .. 8*t4+7, which the fragments see as k 2*t4, 2*t4+1,
 * 2*t4+8, 2*t4+9 of two k16 steps), so every weight is read with one 16-byte load. Activations
 * are rounded to bf16 (as the cuBLAS path for n > 8 does); accumulation fp32. */
#define MMA_WARPS 8
#define MMA_U 4

/* Rows row0 .. row0 + 15 of w times 8 tokens, one block of MMA_WARPS warps; lane (g, t4)'s xg is
 * its token g's activations (the caller clamps g to its last token). Warp 0 returns 1 with
 * v[j] = row (row0 + g + 8 * (j >= 2)) . token (2 * t4 + (j & 1)); the other warps return 0. */
__device__ __forceinline__ int gemv_mma_rows(const uint16_t *w, size_t ld, int row0, int rows, int cols,
					     const float *xg, float (*red)[32][4], float *v)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
	const uint16_t *wa = w + (size_t)min(row0 + g, rows - 1) * ld + 8 * t4;
	const uint16_t *wb = w + (size_t)min(row0 + g + 8, rows - 1) * ld + 8 * t4;
	const float *xr = xg + 8 * t4;
	float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
	int nch = cols / 32;
	for (int c0 = warp; c0 < nch; c0 += MMA_WARPS * MMA_U) {
		uint4 A[MMA_U], B[MMA_U];
		float4 X0[MMA_U], X1[MMA_U];
#pragma unroll
		for (int u = 0; u < MMA_U; u++) {
			int ch = c0 + u * MMA_WARPS;
			if (ch < nch) {
				A[u] = __ldg((const uint4 *)(wa + (size_t)ch * 32));
				B[u] = __ldg((const uint4 *)(wb + (size_t)ch * 32));
				X0[u] = __ldg((const float4 *)(xr + (size_t)ch * 32));
				X1[u] = __ldg((const float4 *)(xr + (size_t)ch * 32 + 4));
			}
		}
#pragma unroll
		for (int u = 0; u < MMA_U; u++) {
			if (c0 + u * MMA_WARPS < nch) {
				cu_mma_bf16(c, A[u].x, B[u].x, A[u].y, B[u].y, cu_pack_bf16(X0[u].x, X0[u].y),
					    cu_pack_bf16(X0[u].z, X0[u].w));
				cu_mma_bf16(c, A[u].z, B[u].z, A[u].w, B[u].w, cu_pack_bf16(X1[u].x, X1[u].y),
					    cu_pack_bf16(X1[u].z, X1[u].w));
			}
		}
	}
#pragma unroll
	for (int j = 0; j < 4; j++)
		red[warp][lane][j] = c[j];
	__syncthreads();
	if (warp)
		return 0;
#pragma unroll
	for (int j = 0; j < 4; j++) {
		float s = 0.0f;
#pragma unroll
		for (int k = 0; k < MMA_WARPS; k++)
			s += red[k][lane][j];
		v[j] = s;
	}
	return 1;
}

#endif
