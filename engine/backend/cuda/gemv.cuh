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

/* Rows row0 .. row0 + 15 of NM matrices of one shape (w[m], row stride ld) times 8 tokens, NW warps
 * of a block splitting the columns, U chunks of each in flight a lane; lane (g, t4)'s xg is its
 * token g's activations (the caller clamps g to its last token). gemv_mma_acc adds this warp's part
 * to c (so several matrices of one output can run into the same c: the MoE down at one token);
 * gemv_mma_red sums the warps' c: warp 0 returns 1 with v[m][j] = row (row0 + g + 8 * (j >= 2)) of
 * w[m] . token (2 * t4 + (j & 1)); the other warps return 0. gemv_mma_tile is the two.
 * NM = 2 is gate and up of one expert: both read with one load of the activations. */
template <int NM, int U, bool XB = false, int NW = MMA_WARPS>
__device__ __forceinline__ void gemv_mma_acc(const uint16_t *const (&w)[NM], size_t ld, int row0, int rows, int cols,
					     const void *xg, float (&c)[NM][4])
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
	size_t oa = (size_t)min(row0 + g, rows - 1) * ld + 8 * t4, ob = (size_t)min(row0 + g + 8, rows - 1) * ld + 8 * t4;
	const float *xr = (const float *)xg + 8 * t4;    /* fp32 activations (global) */
	const uint16_t *xb = (const uint16_t *)xg + 8 * t4; /* XB: bf16 ones (gemv_prenorm's, shared) */
	int nch = cols / 32;
	for (int c0 = warp; c0 < nch; c0 += NW * U) {
		uint4 A[NM][U], B[NM][U];
		float4 X0[U], X1[U];
#pragma unroll
		for (int u = 0; u < U; u++) {
			int ch = c0 + u * NW;
			if (ch < nch) {
#pragma unroll
				for (int m = 0; m < NM; m++) {
					A[m][u] = __ldg((const uint4 *)(w[m] + oa + (size_t)ch * 32));
					B[m][u] = __ldg((const uint4 *)(w[m] + ob + (size_t)ch * 32));
				}
				if constexpr (XB) {
					uint4 xv = *(const uint4 *)(xb + (size_t)ch * 32);
					X0[u] = make_float4(__uint_as_float(xv.x), __uint_as_float(xv.y), __uint_as_float(xv.z),
							    __uint_as_float(xv.w));
				} else {
					X0[u] = __ldg((const float4 *)(xr + (size_t)ch * 32));
					X1[u] = __ldg((const float4 *)(xr + (size_t)ch * 32 + 4));
				}
			}
		}
#pragma unroll
		for (int u = 0; u < U; u++) {
			if (c0 + u * NW < nch) {
				uint32_t x0, x1, x2, x3;
				if constexpr (XB) { /* already packed: 8 bf16, two a register */
					x0 = __float_as_uint(X0[u].x), x1 = __float_as_uint(X0[u].y);
					x2 = __float_as_uint(X0[u].z), x3 = __float_as_uint(X0[u].w);
				} else {
					x0 = cu_pack_bf16(X0[u].x, X0[u].y), x1 = cu_pack_bf16(X0[u].z, X0[u].w);
					x2 = cu_pack_bf16(X1[u].x, X1[u].y), x3 = cu_pack_bf16(X1[u].z, X1[u].w);
				}
#pragma unroll
				for (int m = 0; m < NM; m++) {
					cu_mma_bf16(c[m], A[m][u].x, B[m][u].x, A[m][u].y, B[m][u].y, x0, x1);
					cu_mma_bf16(c[m], A[m][u].z, B[m][u].z, A[m][u].w, B[m][u].w, x2, x3);
				}
			}
		}
	}
}

template <int NM, int NW = MMA_WARPS>
__device__ __forceinline__ int gemv_mma_red(const float (&c)[NM][4], float (*red)[32][4 * NM], float (&v)[NM][4])
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
	for (int m = 0; m < NM; m++)
#pragma unroll
		for (int j = 0; j < 4; j++)
			red[warp][lane][4 * m + j] = c[m][j];
	__syncthreads();
	if (warp)
		return 0;
#pragma unroll
	for (int m = 0; m < NM; m++)
#pragma unroll
		for (int j = 0; j < 4; j++) {
			float s = 0.0f;
#pragma unroll
			for (int k = 0; k < NW; k++)
				s += red[k][lane][4 * m + j];
			v[m][j] = s;
		}
	return 1;
}

template <int NM, int U, bool XB = false>
__device__ __forceinline__ int gemv_mma_tile(const uint16_t *const (&w)[NM], size_t ld, int row0, int rows, int cols,
					     const void *xg, float (*red)[32][4 * NM], float (&v)[NM][4])
{
	float c[NM][4] = {};
	gemv_mma_acc<NM, U, XB>(w, ld, row0, rows, cols, xg, c);
	return gemv_mma_red<NM>(c, red, v);
}

/* One matrix: v[j] as gemv_mma_tile's v[0][j]. */
__device__ __forceinline__ int gemv_mma_rows(const uint16_t *w, size_t ld, int row0, int rows, int cols,
					     const float *xg, float (*red)[32][4], float *v)
{
	const uint16_t *ws[1] = {w};
	float vv[1][4];
	int lead = gemv_mma_tile<1, MMA_U>(ws, ld, row0, rows, cols, xg, red, vv);
#pragma unroll
	for (int j = 0; j < 4; j++)
		v[j] = vv[0][j];
	return lead;
}

/* ---- the residual add and norm before a GEMV, in its blocks (norm_matmul2, moe_router) ----
 * Every block makes its own bf16 copy of xn = (x + t) / rms * w for its nt tokens in shared memory
 * (row stride dim + 8: no bank conflicts between tokens), the activations of gemv_mma_tile<.., true>
 * (the same bf16 rounding the fp32 path's packing gives); the block that finishes last
 * (cu_arrive: every other block has read x by then) stores x + t and xn in fp32. */
#define PN_MAXT 8
__device__ __forceinline__ int gemv_pn_ld(int dim)
{
	return dim + 8;
}

static inline size_t gemv_pn_smem(int nt, int dim)
{
	return (size_t)nt * (size_t)(dim + 8) * 2;
}

/* Values of token i a thread holds: float4 k of the thread is x[4 * (threadIdx.x + k * blockDim.x)];
 * dim % 4 == 0 and dim <= 4 * PN_V * blockDim.x (cu_pn_ok). All of them are loaded before the
 * first is used: one round trip to L2 a token, not one per value (run 25: the scalar loop made a
 * 256 KB router GEMV take 20 us). */
#define PN_V 4
__device__ __forceinline__ void gemv_pn_load(const struct eng_prenorm &pn, int i, int dim, float4 (&v)[PN_V])
{
	const float4 *x = (const float4 *)(pn.x + (size_t)i * dim), *t = (const float4 *)(pn.t + (size_t)i * dim);
	float4 tv[PN_V];
#pragma unroll
	for (int k = 0; k < PN_V; k++) {
		int j = threadIdx.x + k * blockDim.x;
		if (j < dim / 4) {
			v[k] = x[j];
			tv[k] = pn.t ? t[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
		}
	}
#pragma unroll
	for (int k = 0; k < PN_V; k++)
		if (threadIdx.x + k * blockDim.x < dim / 4)
			v[k].x += tv[k].x, v[k].y += tv[k].y, v[k].z += tv[k].z, v[k].w += tv[k].w;
}

/* xs (nt, dim + 8) bf16 = xn; inv[i]: token i's 1 / rms (for gemv_pn_store) */
__device__ __forceinline__ void gemv_prenorm(const struct eng_prenorm &pn, int dim, int nt, uint16_t *xs, float *part,
					     float *inv)
{
	for (int i = 0; i < nt; i++) {
		float4 v[PN_V];
		gemv_pn_load(pn, i, dim, v);
		float ss = 0.0f;
#pragma unroll
		for (int k = 0; k < PN_V; k++)
			if (threadIdx.x + k * blockDim.x < dim / 4)
				ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
		float r = 1.0f / sqrtf(cu_block_sum(ss, part) / (float)dim + pn.eps);
		const float4 *w4 = (const float4 *)pn.w;
#pragma unroll
		for (int k = 0; k < PN_V; k++) {
			int j = threadIdx.x + k * blockDim.x;
			if (j < dim / 4) {
				float4 g = w4[j];
				uint2 o = make_uint2(cu_pack_bf16(g.x * (v[k].x * r), g.y * (v[k].y * r)),
						     cu_pack_bf16(g.z * (v[k].z * r), g.w * (v[k].w * r)));
				*(uint2 *)(xs + (size_t)i * gemv_pn_ld(dim) + 4 * j) = o;
			}
		}
		if (threadIdx.x == 0)
			inv[i] = r;
		__syncthreads(); /* part is reused by the next token */
	}
}

/* the last block: x += t and xn in fp32, for the ops after this one */
__device__ __forceinline__ void gemv_pn_store(const struct eng_prenorm &pn, int dim, int nt, const float *inv)
{
	const float4 *w4 = (const float4 *)pn.w;
	for (int i = 0; i < nt; i++) {
		float4 v[PN_V];
		gemv_pn_load(pn, i, dim, v);
		float r = inv[i];
#pragma unroll
		for (int k = 0; k < PN_V; k++) {
			int j = threadIdx.x + k * blockDim.x;
			if (j < dim / 4) {
				float4 g = w4[j];
				if (pn.t)
					((float4 *)(pn.x + (size_t)i * dim))[j] = v[k];
				((float4 *)(pn.xn + (size_t)i * dim))[j] =
					make_float4(g.x * (v[k].x * r), g.y * (v[k].y * r), g.z * (v[k].z * r), g.w * (v[k].w * r));
			}
		}
	}
}

/* ---- the tensor-core GEMV kernel: up to two matrices of one input, n <= 8 tokens ----
 * matmul, matmul2 (q and kv_a, gate and up), norm_matmul2 and moe_router: blocks 0 ..
 * ceil(rows1 / 16) - 1 take W1's 16-row tiles, the rest W2's (rows2 = 0: one matrix). */
struct mma2 {
	const uint16_t *w[2];
	size_t ld[2];
	int rows[2], ldy[2];
	float *y[2];
	const float *bias; /* W1's only */
};

/* What the last block of a prenorm launch does after storing x and xn (smem: the dynamic shared
 * memory, free again): nothing here; moe_router's routes the tokens. */
struct gemv_no_last {
	__device__ void operator()(uint8_t *smem) const
	{
		(void)smem;
	}
};

/* PN: the input is pn's add and norm (gemv_prenorm: every block makes its bf16 copy in shared
 * memory; the last block to finish stores x and xn, then runs last), not x */
template <bool PN, typename LAST>
__global__ void __launch_bounds__(MMA_WARPS * 32)
gemv_mma_kernel(mma2 a, int cols, const float *x, int ldx, int nt, struct eng_prenorm pn, int *tick, LAST last)
{
	extern __shared__ __align__(16) uint8_t pn_smem[];
	__shared__ float red[MMA_WARPS][32][4];
	__shared__ float part[32], inv[PN_MAXT];
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
	int tiles1 = (a.rows[0] + 15) / 16, m = (int)blockIdx.x >= tiles1;
	int row0 = ((int)blockIdx.x - m * tiles1) * 16, rows = a.rows[m];
	const uint16_t *w[1] = {a.w[m]};
	gemv_prefetch<uint16_t, 2>(w[0], a.ld[m], row0 + 2 * warp, rows, cols);
	cu_pdl_wait();
	const void *xg = x + (size_t)min(g, nt - 1) * ldx;
	if constexpr (PN) {
		uint16_t *xs = (uint16_t *)pn_smem;
		gemv_prenorm(pn, cols, nt, xs, part, inv);
		xg = xs + (size_t)min(g, nt - 1) * gemv_pn_ld(cols);
	}
	float v[1][4];
	if (gemv_mma_tile<1, MMA_U, PN>(w, a.ld[m], row0, rows, cols, xg, red, v)) {
		const float *bias = m ? NULL : a.bias;
		float *y = a.y[m];
#pragma unroll
		for (int j = 0; j < 4; j++) {
			int row = row0 + g + (j >= 2 ? 8 : 0), tok = 2 * t4 + (j & 1);
			if (row < rows && tok < nt)
				y[(size_t)tok * a.ldy[m] + row] = v[0][j] + (bias ? bias[row] : 0.0f);
		}
	}
	if constexpr (PN) {
		if (cu_arrive(tick, gridDim.x)) {
			gemv_pn_store(pn, cols, nt, inv);
			last(pn_smem);
		}
	}
}

/* W1 (+ bias) and W2 (NULL: none) times x, or times pn's add and norm (pn not NULL; then smem
 * bytes of dynamic shared memory at least, for last), nt <= 8 tokens */
template <typename LAST>
static void gemv_mma_launch(struct cu *c, const struct eng_w *w1, const float *bias, float *y1, int ldy1,
			    const struct eng_w *w2, float *y2, int ldy2, const float *x, int ldx, int nt,
			    const struct eng_prenorm *pn, LAST last, size_t smem = 0)
{
	mma2 a = {{(const uint16_t *)w1->data, w2 ? (const uint16_t *)w2->data : NULL},
		  {w1->ld, w2 ? w2->ld : 0},
		  {w1->rows, w2 ? w2->rows : 0},
		  {ldy1, ldy2},
		  {y1, y2},
		  bias};
	int blocks = cu_div_up(w1->rows, 16) + (w2 ? cu_div_up(w2->rows, 16) : 0);
	if (pn)
		cu_launch(c, gemv_mma_kernel<true, LAST>, blocks, MMA_WARPS * 32, SH_MAX(smem, gemv_pn_smem(nt, w1->cols)),
			  a, w1->cols, x, ldx, nt, *pn, c->tick, last);
	else
		cu_launch(c, gemv_mma_kernel<false, LAST>, blocks, MMA_WARPS * 32, 0, a, w1->cols, x, ldx, nt,
			  eng_prenorm{}, c->tick, last);
}

/* The SwiGLU activation, as silu_mul and the MoE's act pass compute it. */
__device__ __forceinline__ float gemv_silu_mul(float g, float u)
{
	return g / (1.0f + expf(-g)) * u;
}

#endif
