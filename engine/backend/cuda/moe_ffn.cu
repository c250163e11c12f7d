/* moe_ffn.cu: out (n, dim) += sum_k wt[i,k] * expert_{idx[i,k]}(x_i), SwiGLU experts, with ids and
 * weights in device memory (moe_route.cu). Only routed experts are read:
 *   lists: the n*K (token, k) slots sorted by expert (counts, offsets, the active experts);
 *   decode (n <= 32, or exact mode): grouped GEMV, one grid over (row tile, gate|up, active expert),
 *     each expert's rows streamed once per 8 of its tokens (gemv.cuh; on the tensor cores for bf16
 *     in fast mode, activations rounded to bf16), then silu*up, then the down projection the same way;
 *   prefill, BF16/F16 weights: the offsets come to the host (one sync); the active experts go in up
 *     to four buckets of similar counts, each expert's rows padded to its bucket's largest count,
 *     gathered in the weights' type; gate and up of a bucket are one cublasGemmBatchedEx, silu*up
 *     one pass, down one more batched GEMM a bucket (fp32 accumulation; see "prefill, padded");
 *   prefill, F32 weights (tests) or routing too skewed to pad: each active expert through cu_matmul;
 *   combine: out[i] += sum_k wt * y[slot], in k order (deterministic, no atomics).
 * The caller's scratch is not used: slots need n*K rows, more than eng_backend_moe_scratch gives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/cuda/gemv.cuh"

/* KVGATE_CUDA_MOE_PHASES=1: the prefill path prints each phase's device time (events), for tuning */
static int moe_phases = -1;
static cudaEvent_t moe_ev[8];

static void moe_mark(struct cu *c, int i)
{
	if (moe_phases < 0) {
		const char *e = getenv("KVGATE_CUDA_MOE_PHASES");
		moe_phases = e && *e == '1';
		for (int k = 0; moe_phases && k < 8; k++)
			CU_CHECK(cudaEventCreate(&moe_ev[k]));
	}
	if (moe_phases)
		CU_CHECK(cudaEventRecord(moe_ev[i], c->st));
}

static void moe_marks_print(int n, int mode, int na, int cmax) /* mode 1: padded, 0: per expert */
{
	static const char *nm[6] = {"lists+offsets", "gather", "gate/up", "act", "down", "combine"};
	if (!moe_phases)
		return;
	CU_CHECK(cudaEventSynchronize(moe_ev[6]));
	fprintf(stderr, "moe prefill n=%d mode %d, %d experts, largest count %d:", n, mode, na, cmax);
	float ms;
	if (mode != 1) { /* the per-expert path marks no phases in between */
		CU_CHECK(cudaEventElapsedTime(&ms, moe_ev[0], moe_ev[6]));
		fprintf(stderr, " all %.3f ms\n", ms);
		return;
	}
	for (int k = 0; k < 6; k++) {
		CU_CHECK(cudaEventElapsedTime(&ms, moe_ev[k], moe_ev[k + 1]));
		fprintf(stderr, " %s %.3f", nm[k], ms);
	}
	fprintf(stderr, " ms\n");
}

#define MOE_WARPS 4
#define MOE_RPW 2
#define MOE_SMALL_N 32
#define MOE_KU 8 /* the combine's loads in flight a (token, row) */
#define ROUTE_EMAX 256

struct moe_lists {
	int *cnt, *off, *lst, *inv, *act; /* (E), (E+1), (nK) slots by expert, (nK) row of each slot, (E+1) */
};

/* One block: counts and fill positions by shared-memory atomics (the order of slots inside an
 * expert's list changes no result: every slot is computed on its own and combined in k order). */
__global__ void moe_lists_kernel(const int32_t *idx, int nK, int E, moe_lists L)
{
	cu_pdl_wait();
	__shared__ int cnt[ROUTE_EMAX], off[ROUTE_EMAX + 1], fill[ROUTE_EMAX];
	for (int e = threadIdx.x; e < E; e += blockDim.x)
		cnt[e] = 0, fill[e] = 0;
	__syncthreads();
	for (int j = threadIdx.x; j < nK; j += blockDim.x)
		atomicAdd(&cnt[idx[j]], 1);
	__syncthreads();
	if (threadIdx.x == 0) {
		int na = 0;
		off[0] = 0;
		for (int e = 0; e < E; e++) {
			off[e + 1] = off[e] + cnt[e];
			if (cnt[e])
				L.act[na++] = e;
		}
		L.act[E] = na;
	}
	__syncthreads();
	for (int e = threadIdx.x; e <= E; e += blockDim.x) {
		L.off[e] = off[e];
		if (e < E)
			L.cnt[e] = cnt[e];
	}
	for (int j = threadIdx.x; j < nK; j += blockDim.x) {
		int e = idx[j], r = off[e] + atomicAdd(&fill[e], 1);
		L.lst[r] = j;
		L.inv[j] = r;
	}
}

template <typename T, int VEC, int NT>
__device__ __forceinline__ void moe_tile(const T *w, size_t ld, int row0, int rows, int cols, const float *const *xs,
					 int nt, float *y, int ldy, int r0)
{
	float acc[MOE_RPW][NT];
	gemv_warp<T, VEC, MOE_RPW, NT>(w, ld, row0, rows, cols, xs, nt, acc);
	int lane = threadIdx.x & 31;
#pragma unroll
	for (int r = 0; r < MOE_RPW; r++)
#pragma unroll
		for (int t = 0; t < NT; t++)
			if (lane == (r * NT + t) % 32 && t < nt && row0 + r < rows)
				y[(size_t)(r0 + t) * ldy + row0 + r] = acc[r][t];
}

/* grid (row tiles, n_mats, active-expert slots): matrix m of expert act[z] on that expert's rows of
 * the slot list; x of sorted row r is xsrc + (gather ? lst[r] / K : r) * ldx. */
template <typename T, int VEC>
__global__ void __launch_bounds__(MOE_WARPS * 32)
moe_gemv_kernel(const void *const *tab, int E, int rows, int cols, size_t ld, const float *xsrc, int ldx, int gather,
		int K, moe_lists L, float *y0, float *y1, int ldy)
{
	int z = blockIdx.z;
	if (z >= L.act[E])
		return;
	int e = L.act[z], m = blockIdx.y;
	int row0 = (blockIdx.x * MOE_WARPS + (threadIdx.x >> 5)) * MOE_RPW;
	if (row0 >= rows)
		return;
	const T *w = (const T *)tab[m * E + e];
	float *y = m ? y1 : y0;
	int beg = L.off[e], cnt = L.off[e + 1] - beg;
	for (int c0 = 0; c0 < cnt; c0 += 8) {
		int nt = min(8, cnt - c0);
		const float *xs[8];
#pragma unroll
		for (int t = 0; t < 8; t++) {
			int r = beg + c0 + min(t, nt - 1);
			xs[t] = xsrc + (size_t)(gather ? L.lst[r] / K : r) * ldx;
		}
		if (nt == 1)
			moe_tile<T, VEC, 1>(w, ld, row0, rows, cols, xs, nt, y, ldy, beg + c0);
		else if (nt == 2)
			moe_tile<T, VEC, 2>(w, ld, row0, rows, cols, xs, nt, y, ldy, beg + c0);
		else if (nt <= 4)
			moe_tile<T, VEC, 4>(w, ld, row0, rows, cols, xs, nt, y, ldy, beg + c0);
		else
			moe_tile<T, VEC, 8>(w, ld, row0, rows, cols, xs, nt, y, ldy, beg + c0);
	}
}

/* The tensor-core twin of moe_gemv_kernel (bf16 weights, fast mode, cols % 32 == 0): a block takes
 * 16 rows of one matrix of one active expert (gemv.cuh's gemv_mma_rows, 8 tokens at a time), so
 * that a lane keeps 8 weight loads in flight where the fp32 kernel kept 4; activations rounded to
 * bf16. */
__global__ void __launch_bounds__(MMA_WARPS * 32)
moe_mma_kernel(const void *const *tab, int E, int rows, int cols, size_t ld, const float *xsrc, int ldx, int gather,
	       int K, moe_lists L, float *y0, float *y1, int ldy)
{
	cu_pdl_wait();
	__shared__ float red[MMA_WARPS][32][4];
	int z = blockIdx.z;
	if (z >= L.act[E])
		return;
	int e = L.act[z], m = blockIdx.y, row0 = blockIdx.x * 16;
	int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	const uint16_t *w = (const uint16_t *)tab[m * E + e];
	float *y = m ? y1 : y0;
	int beg = L.off[e], cnt = L.off[e + 1] - beg;
	for (int c0 = 0; c0 < cnt; c0 += 8) {
		int nt = min(8, cnt - c0), r = beg + c0 + min(g, nt - 1);
		float v[4];
		int lead = gemv_mma_rows(w, ld, row0, rows, cols, xsrc + (size_t)(gather ? L.lst[r] / K : r) * ldx, red, v);
		if (lead)
#pragma unroll
			for (int j = 0; j < 4; j++) {
				int row = row0 + g + (j >= 2 ? 8 : 0), tok = 2 * t4 + (j & 1);
				if (row < rows && tok < nt)
					y[(size_t)(beg + c0 + tok) * ldy + row] = v[j];
			}
		__syncthreads(); /* red is reused by the next 8 tokens */
	}
}

/* ---- small n on the tensor cores, fused (KVGATE_CUDA_FUSE=1; bf16, fast mode, dim, inter % 32 == 0) ----
 * Two launches: gate and up of 16 rows of one expert in one block (gemv_mma_tile, the activations
 * read once for both), silu * up in its epilogue; then down, whose row tile's last block to finish
 * (cu_arrive) adds the weighted slots to out in k order, as moe_combine_kernel does. With one token
 * there are no lists: slot z is expert idx[z] (direct); otherwise the lists' z-th active expert.
 * The shared experts (moe_ffn_shared), when given, are one more "expert" of every token in both
 * launches, weight 1, and the combine starts from their output instead of out's contents. */
struct moe_src {
	moe_lists L;
	const int32_t *idx;
	int direct;
};

struct moe_sh {
	const uint16_t *w[3]; /* gate, up, down; w[0] NULL: none */
	size_t ld_gu, ld_d;
	int rows;             /* their width */
	float *h, *y;         /* (n, rows), (n, dim) */
};

/* grid slot z's expert (-1: none) and its first sorted slot and count; read through L2 (the down
 * kernel reads them before its wait: no line of an earlier layer's lists may come from L1) */
__device__ __forceinline__ int moe_expert(const moe_src &s, int E, int z, int *beg, int *cnt)
{
	if (s.direct) {
		*beg = z, *cnt = 1;
		return __ldcg(s.idx + z);
	}
	if (z >= __ldcg(s.L.act + E))
		return -1;
	int e = __ldcg(s.L.act + z);
	*beg = __ldcg(s.L.off + e), *cnt = __ldcg(s.L.off + e + 1) - *beg;
	return e;
}

/* the token of sorted slot r */
__device__ __forceinline__ int moe_tok(const moe_src &s, int K, int r)
{
	return s.direct ? r / K : s.L.lst[r] / K;
}

/* grid (16-row tiles of inter, zs expert slots + the shared experts' tiles, gridDim.x a row):
 * h (slots, inter) = silu(x . gate^T) * (x . up^T); the shared experts' into sh.h. wt (one token
 * only, for moe_down1_kernel): the routed slots' rows times their routing weight. */
__global__ void __launch_bounds__(MMA_WARPS * 32)
moe_gu_mma_kernel(const void *const *tab, int E, int inter, int dim, size_t ld, const float *x, int K, moe_src s,
		  int zs, int n, moe_sh sh, float *h, const float *wt)
{
	__shared__ float red[MMA_WARPS][32][8];
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
	int shb = (int)blockIdx.y >= zs, row0 = blockIdx.x * 16;
	if (shb) {
		row0 = (((int)blockIdx.y - zs) * gridDim.x + blockIdx.x) * 16;
		if (row0 >= sh.rows)
			return;
		gemv_prefetch<uint16_t, 2>(sh.w[0], sh.ld_gu, row0 + 2 * warp, sh.rows, dim);
		gemv_prefetch<uint16_t, 2>(sh.w[1], sh.ld_gu, row0 + 2 * warp, sh.rows, dim);
	}
	cu_pdl_wait(); /* the routed ids come from the kernel just before */
	const uint16_t *w[2] = {sh.w[0], sh.w[1]};
	int beg = 0, cnt = n, rows = sh.rows;
	size_t ldw = sh.ld_gu;
	float *out = sh.h;
	if (!shb) {
		int e = moe_expert(s, E, blockIdx.y, &beg, &cnt);
		if (e < 0)
			return;
		w[0] = (const uint16_t *)tab[e], w[1] = (const uint16_t *)tab[E + e];
		rows = inter, ldw = ld, out = h;
	}
	for (int c0 = 0; c0 < cnt; c0 += 8) {
		int nt = min(8, cnt - c0), r = beg + c0 + min(g, nt - 1);
		const float *xg = x + (size_t)(shb ? r : moe_tok(s, K, r)) * dim;
		float v[2][4];
		if (gemv_mma_tile<2, MMA_U / 2>(w, ldw, row0, rows, dim, xg, red, v))
#pragma unroll
			for (int j = 0; j < 4; j++) {
				int row = row0 + g + (j >= 2 ? 8 : 0), tok = 2 * t4 + (j & 1);
				if (row < rows && tok < nt)
					out[(size_t)(beg + c0 + tok) * rows + row] =
						gemv_silu_mul(v[0][j], v[1][j]) * (wt && !shb ? wt[beg + c0 + tok] : 1.0f);
			}
		__syncthreads(); /* red is reused by the next 8 tokens */
	}
}

/* grid (16-row tiles of dim, zs expert slots + 1 if shared): y (slots, dim) = h . down^T (the
 * shared experts': sh.y); the tile's last block then, for its rows, out[i] = (sh.y[i] or out[i])
 * + sum_k wt[i,k] * y[slot of (i, k)] */
__global__ void __launch_bounds__(MMA_WARPS * 32)
moe_down_mma_kernel(const void *const *tab, int E, int dim, int inter, size_t ld, const float *h, int K, moe_src s,
		    int zs, int n, moe_sh sh, float *y, const float *wt, float *out, int *tick)
{
	__shared__ float red[MMA_WARPS][32][4];
	int row0 = blockIdx.x * 16, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	/* the experts were chosen two kernels back (the route or the lists, then gate/up): they may
	 * be read before the wait (cu.h), and the rows prefetched */
	int shb = (int)blockIdx.y >= zs, beg = 0, cnt = n, cols = sh.rows, ldo = dim;
	const uint16_t *w = sh.w[2];
	size_t ldw = sh.ld_d;
	const float *in = sh.h;
	float *o = sh.y;
	if (!shb) {
		int e = moe_expert(s, E, blockIdx.y, &beg, &cnt);
		w = e >= 0 ? (const uint16_t *)tab[e] : NULL;
		cols = inter, ldw = ld, in = h, o = y;
	}
	if (w)
		gemv_prefetch<uint16_t, 2>(w, ldw, row0 + 2 * warp, dim, cols);
	cu_pdl_wait();
	if (!w)
		return;
	for (int c0 = 0; c0 < cnt; c0 += 8) {
		int nt = min(8, cnt - c0), r = beg + c0 + min(g, nt - 1);
		float v[4];
		if (gemv_mma_rows(w, ldw, row0, dim, cols, in + (size_t)r * cols, red, v))
#pragma unroll
			for (int j = 0; j < 4; j++) {
				int row = row0 + g + (j >= 2 ? 8 : 0), tok = 2 * t4 + (j & 1);
				if (row < dim && tok < nt)
					o[(size_t)(beg + c0 + tok) * ldo + row] = v[j];
			}
		__syncthreads();
	}
	if (!cu_arrive(tick + blockIdx.x, (s.direct ? K : s.L.act[E]) + (sh.w[2] != NULL)))
		return;
	/* every load of a (token, row) issued before the first add: one round trip to L2, not K */
	for (int t = threadIdx.x; t < n * 16; t += blockDim.x) {
		int i = t >> 4, row = row0 + (t & 15);
		if (row >= dim)
			continue;
		float acc = sh.w[2] ? __ldcg(sh.y + (size_t)i * dim + row) : out[(size_t)i * dim + row];
		for (int k0 = 0; k0 < K; k0 += MOE_KU) {
			float yv[MOE_KU], wv[MOE_KU];
#pragma unroll
			for (int u = 0; u < MOE_KU; u++) {
				int k = min(k0 + u, K - 1), sl = s.direct ? i * K + k : s.L.inv[i * K + k];
				yv[u] = __ldcg(y + (size_t)sl * dim + row);
				wv[u] = wt[(size_t)i * K + k];
			}
#pragma unroll
			for (int u = 0; u < MOE_KU; u++)
				if (k0 + u < K)
					acc += wv[u] * yv[u];
		}
		out[(size_t)i * dim + row] = acc;
	}
}

/* One token: the down of every slot and of the shared experts as one GEMV, out (1, dim) =
 * sum_z W_down[idx[z]] . h'[z] + W_sh_down . sh.h, where moe_gu_mma_kernel (with wt) made h' =
 * wt[z] * h[z]: the slots' columns are one long k range, so a 16-row tile streams all its experts'
 * rows with the loads of different experts in flight together, sums in one accumulator, reduces
 * once and stores (no y, no last block, no combine). Without shared experts it adds to out.
 * 16 warps a block: 64 KB of loads in flight on each of ~128 SMs. The h' rounding to bf16 happens
 * after the weight (the other paths scale the fp32 sum): the same relative error. */
#define MOE_D1_WARPS 16
#define MOE_D1_KMAX 16
__global__ void __launch_bounds__(MOE_D1_WARPS * 32)
moe_down1_kernel(const void *const *tab, int dim, int inter, size_t ld, const float *h, int K, const int32_t *idx,
		 moe_sh sh, float *out)
{
	__shared__ float red[MOE_D1_WARPS][32][4];
	__shared__ const uint16_t *sw[MOE_D1_KMAX];
	int row0 = blockIdx.x * 16, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	/* the ids were written two kernels back (the router or route, then gate/up): readable before
	 * the wait (cu.h), and the tile's rows of every expert prefetched meanwhile */
	if (threadIdx.x < K)
		sw[threadIdx.x] = (const uint16_t *)tab[__ldcg(idx + threadIdx.x)];
	__syncthreads();
	for (int z = 0; z < K; z++)
		gemv_prefetch<uint16_t, 1>(sw[z], ld, row0 + warp, dim, inter);
	if (sh.w[2])
		gemv_prefetch<uint16_t, 1>(sh.w[2], sh.ld_d, row0 + warp, dim, sh.rows);
	cu_pdl_wait();
	int nch = inter / 32, routed = K * nch, total = routed + (sh.w[2] ? sh.rows / 32 : 0);
	size_t ra = (size_t)min(row0 + g, dim - 1), rb = (size_t)min(row0 + g + 8, dim - 1);
	float c[1][4] = {};
	for (int q0 = warp; q0 < total; q0 += MOE_D1_WARPS * MMA_U) {
		uint4 A[MMA_U], B[MMA_U];
		float4 X0[MMA_U], X1[MMA_U];
#pragma unroll
		for (int u = 0; u < MMA_U; u++) {
			int q = q0 + u * MOE_D1_WARPS;
			if (q < total) {
				const uint16_t *w;
				const float *xr;
				size_t l;
				if (q < routed) {
					int z = q / nch, ch = q - z * nch;
					w = sw[z] + (size_t)ch * 32, l = ld, xr = h + (size_t)z * inter + (size_t)ch * 32;
				} else {
					int ch = q - routed;
					w = sh.w[2] + (size_t)ch * 32, l = sh.ld_d, xr = sh.h + (size_t)ch * 32;
				}
				A[u] = __ldg((const uint4 *)(w + ra * l + 8 * t4));
				B[u] = __ldg((const uint4 *)(w + rb * l + 8 * t4));
				X0[u] = __ldcg((const float4 *)(xr + 8 * t4));
				X1[u] = __ldcg((const float4 *)(xr + 8 * t4 + 4));
			}
		}
#pragma unroll
		for (int u = 0; u < MMA_U; u++)
			if (q0 + u * MOE_D1_WARPS < total) {
				uint32_t x0 = cu_pack_bf16(X0[u].x, X0[u].y), x1 = cu_pack_bf16(X0[u].z, X0[u].w);
				uint32_t x2 = cu_pack_bf16(X1[u].x, X1[u].y), x3 = cu_pack_bf16(X1[u].z, X1[u].w);
				cu_mma_bf16(c[0], A[u].x, B[u].x, A[u].y, B[u].y, x0, x1);
				cu_mma_bf16(c[0], A[u].z, B[u].z, A[u].w, B[u].w, x2, x3);
			}
	}
	float v[1][4];
	if (!gemv_mma_red<1, MOE_D1_WARPS>(c, red, v))
		return;
	/* every lane's 8 tokens are the one token: lanes t4 == 0 hold its column (j = 0 and 2) */
#pragma unroll
	for (int j = 0; j < 4; j += 2) {
		int row = row0 + g + (j ? 8 : 0);
		if (t4 == 0 && row < dim)
			out[row] = v[0][j] + (sh.w[2] ? 0.0f : out[row]);
	}
}

__global__ void moe_act_kernel(float *g, const float *u, size_t total)
{
	cu_pdl_wait();
	for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
		float x = g[t];
		g[t] = x / (1.0f + expf(-x)) * u[t];
	}
}

__global__ void moe_gather_kernel(float *xs, const float *x, int dim, int K, const int *lst)
{
	const float *src = x + (size_t)(lst[blockIdx.x] / K) * dim;
	for (int d = threadIdx.x; d < dim; d += blockDim.x)
		xs[(size_t)blockIdx.x * dim + d] = src[d];
}

__device__ __forceinline__ float moe_f(__nv_bfloat16 v)
{
	return __bfloat162float(v);
}
__device__ __forceinline__ float moe_f(__half v)
{
	return __half2float(v);
}

__global__ void moe_combine_kernel(float *out, const float *y, const float *wt, const int *inv, int dim, int K)
{
	cu_pdl_wait();
	int i = blockIdx.x;
	for (int d = blockIdx.y * blockDim.x + threadIdx.x; d < dim; d += gridDim.y * blockDim.x) {
		float s = out[(size_t)i * dim + d];
		for (int k = 0; k < K; k++)
			s += wt[(size_t)i * K + k] * y[(size_t)inv[i * K + k] * dim + d];
		out[(size_t)i * dim + d] = s;
	}
}

/* ---- prefill, 16-bit weights (T: __nv_bfloat16 or __half) ---- */

__device__ __forceinline__ void moe_st(__nv_bfloat16 *p, float v)
{
	*p = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void moe_st(__half *p, float v)
{
	*p = __float2half_rn(v);
}

template <typename T> __device__ __forceinline__ uint32_t moe_pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t moe_pack2<__nv_bfloat16>(float lo, float hi)
{
	return cu_pack_bf16(lo, hi);
}
template <> __device__ __forceinline__ uint32_t moe_pack2<__half>(float lo, float hi)
{
	__half2 v = __floats2half2_rn(lo, hi);
	return *(uint32_t *)&v;
}

/* h = silu(g) * u in T (the down GEMM's input); g, u as the gate/up GEMM wrote them (G: float or T) */
template <typename G, typename T>
__global__ void moe_act16_kernel(T *h, const G *g, const G *u, size_t total)
{
	for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
		float x = moe_f(g[t]);
		moe_st(h + t, x / (1.0f + expf(-x)) * moe_f(u[t]));
	}
}

/* the same, 8 values a thread, 16-bit in and out (total % 8 == 0, 16-byte aligned) */
template <typename T>
__global__ void moe_act16x8_kernel(T *h, const T *g, const T *u, size_t total)
{
	for (size_t t = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) * 8; t < total; t += (size_t)gridDim.x * blockDim.x * 8) {
		uint4 gv = *(const uint4 *)(g + t), uv = *(const uint4 *)(u + t), o;
		const T *gp = (const T *)&gv, *up = (const T *)&uv;
		T *op = (T *)&o;
#pragma unroll
		for (int k = 0; k < 8; k++) {
			float x = moe_f(gp[k]);
			moe_st(op + k, x / (1.0f + expf(-x)) * moe_f(up[k]));
		}
		*(uint4 *)(h + t) = o;
	}
}

/* The device table of this layer's expert pointers, uploaded once and found again by the host
 * array and its pointers (a model freed and another loaded may reuse the host array's address). */
static const void *const *experts_table(struct cu *c, const struct eng_w *gate, const struct eng_w *up,
					const struct eng_w *down, int E)
{
	const void **h = (const void **)sh_malloc(sizeof(void *) * 3 * (size_t)E);
	for (int e = 0; e < E; e++) {
		SH_BUG_ON(gate[e].dt != gate[0].dt || up[e].dt != gate[0].dt || down[e].dt != gate[0].dt ||
			  gate[e].ld != gate[0].ld || up[e].ld != gate[0].ld || down[e].ld != down[0].ld);
		h[e] = gate[e].data;
		h[E + e] = up[e].data;
		h[2 * E + e] = down[e].data;
	}
	for (int i = 0; i < c->n_ex; i++)
		if (c->ex[i].key == gate && c->ex[i].E == E && !memcmp(c->ex[i].host, h, sizeof(void *) * 3 * (size_t)E)) {
			free(h);
			return c->ex[i].dev;
		}
	SH_BUG_ON(c->step.capturing); /* made by the step's eager run */
	const void **d;
	CU_CHECK(cudaMalloc((void **)&d, sizeof(void *) * 3 * (size_t)E));
	CU_CHECK(cudaMemcpy(d, h, sizeof(void *) * 3 * (size_t)E, cudaMemcpyHostToDevice));
	c->ex = (struct cu_experts *)sh_realloc(c->ex, sizeof(*c->ex) * (size_t)(c->n_ex + 1));
	c->ex[c->n_ex++] = (struct cu_experts){gate, d, h, E};
	return d;
}

static int experts_aligned(const struct eng_w *gate, const struct eng_w *up, const struct eng_w *down, int E,
			   int vec)
{
	size_t es = eng_dtype_size(gate[0].dt);
	for (int e = 0; e < E; e++)
		if ((uintptr_t)gate[e].data % 16 || (uintptr_t)up[e].data % 16 || (uintptr_t)down[e].data % 16)
			return 0;
	return (gate[0].ld * es) % 16 == 0 && (down[0].ld * es) % 16 == 0 && gate[0].cols % vec == 0 &&
	       down[0].cols % vec == 0 && gate[0].cols % 4 == 0 && down[0].cols % 4 == 0;
}

template <typename T, int VEC>
static void moe_gemv(struct cu *c, dim3 grid, const void *const *tab, int E, int rows, int cols, size_t ld,
		     const float *xsrc, int ldx, int gather, int K, moe_lists L, float *y0, float *y1, int ldy)
{
	moe_gemv_kernel<T, VEC><<<grid, MOE_WARPS * 32, 0, c->st>>>(tab, E, rows, cols, ld, xsrc, ldx, gather, K, L, y0,
								     y1, ldy);
	CU_LAUNCHED();
}

static void moe_gemv_any(struct cu *c, enum eng_dtype dt, int aligned, dim3 grid, const void *const *tab, int E,
			 int rows, int cols, size_t ld, const float *xsrc, int ldx, int gather, int K, moe_lists L,
			 float *y0, float *y1, int ldy)
{
	switch (dt) {
	case ENG_DT_BF16:
		if (aligned)
			moe_gemv<uint16_t, 8>(c, grid, tab, E, rows, cols, ld, xsrc, ldx, gather, K, L, y0, y1, ldy);
		else
			moe_gemv<uint16_t, 1>(c, grid, tab, E, rows, cols, ld, xsrc, ldx, gather, K, L, y0, y1, ldy);
		break;
	case ENG_DT_F16:
		if (aligned)
			moe_gemv<cu_f16_t, 8>(c, grid, tab, E, rows, cols, ld, xsrc, ldx, gather, K, L, y0, y1, ldy);
		else
			moe_gemv<cu_f16_t, 1>(c, grid, tab, E, rows, cols, ld, xsrc, ldx, gather, K, L, y0, y1, ldy);
		break;
	case ENG_DT_F32:
		if (aligned)
			moe_gemv<float, 4>(c, grid, tab, E, rows, cols, ld, xsrc, ldx, gather, K, L, y0, y1, ldy);
		else
			moe_gemv<float, 1>(c, grid, tab, E, rows, cols, ld, xsrc, ldx, gather, K, L, y0, y1, ldy);
		break;
	}
}

static size_t moe_al(size_t bytes) /* scratch pieces start 256-byte aligned */
{
	return (bytes + 255) & ~(size_t)255;
}

/* ---- prefill, padded: the active experts in up to MOE_BUCKETS buckets of similar counts, each
 * expert's rows padded to its bucket's largest count, so that each GEMM set is one
 * cublasGemmBatchedEx of equal problems a bucket, all their tiles in one launch (run 10: the
 * grouped call ran the 2 x 64 gate/up problems at ~300 TFLOP/s). The buckets are the split with
 * the fewest rows (random-weight routing in the bench sends 2,000 of 12,288 slots to one expert);
 * taken when those rows are at most 1.5 x the slots. ---- */
#define MOE_BUCKETS 4

/* pad row b: the x row of its expert's q-th slot, zeros past the expert's count (rowe[b]: the
 * expert, base[e]: its first row; x 16-byte aligned, dim % 4 == 0) */
template <typename T>
__global__ void moe_gather_pad_kernel(T *xs, const float *x, int dim, int K, const int *rowe, const int *base,
				      moe_lists L)
{
	int b = blockIdx.x, e = rowe[b], q = b - base[e], beg = L.off[e];
	T *dst = xs + (size_t)b * dim;
	const float *src = q < L.off[e + 1] - beg ? x + (size_t)(L.lst[beg + q] / K) * dim : NULL;
	for (int d = threadIdx.x * 4; d < dim; d += blockDim.x * 4) {
		float4 v = src ? __ldg((const float4 *)(src + d)) : make_float4(0, 0, 0, 0);
		*(uint2 *)(dst + d) = make_uint2(moe_pack2<T>(v.x, v.y), moe_pack2<T>(v.z, v.w));
	}
}

/* slot j's padded row, for the combine */
__global__ void moe_pad_inv_kernel(const int32_t *idx, int nK, const int *base, moe_lists L, int *pinv)
{
	int j = blockIdx.x * blockDim.x + threadIdx.x;
	if (j < nK)
		pinv[j] = base[idx[j]] + L.inv[j] - L.off[idx[j]];
}

/* the plan, made on the host from the counts: experts by count descending (ord), bucket k holds
 * ord[beg[k] .. beg[k + 1] - 1], each padded to the count of its first */
struct moe_plan {
	int na, nbk;
	int ord[ROUTE_EMAX], beg[MOE_BUCKETS + 1], pad[MOE_BUCKETS];
	size_t rows;
};

static int moe_plan_make(struct moe_plan *pl, const int *hoff, int E, int nK)
{
	int cnt[ROUTE_EMAX], na = 0;
	for (int e = 0; e < E; e++)
		if (hoff[e + 1] > hoff[e])
			pl->ord[na++] = e;
	for (int i = 1; i < na; i++) /* insertion sort by count, descending (E <= 256) */
		for (int j = i; j > 0 && hoff[pl->ord[j] + 1] - hoff[pl->ord[j]] > hoff[pl->ord[j - 1] + 1] - hoff[pl->ord[j - 1]];
		     j--) {
			int t = pl->ord[j];
			pl->ord[j] = pl->ord[j - 1], pl->ord[j - 1] = t;
		}
	for (int i = 0; i < na; i++)
		cnt[i] = hoff[pl->ord[i] + 1] - hoff[pl->ord[i]];
	/* f[k][i]: fewest rows for the first i experts in k buckets; a bucket [j, i) costs (i - j) * cnt[j] */
	size_t f[MOE_BUCKETS + 1][ROUTE_EMAX + 1];
	int from[MOE_BUCKETS + 1][ROUTE_EMAX + 1];
	for (int i = 0; i <= na; i++)
		f[0][i] = i ? SIZE_MAX : 0;
	for (int k = 1; k <= MOE_BUCKETS; k++)
		for (int i = 0; i <= na; i++) {
			f[k][i] = f[k - 1][i], from[k][i] = i; /* an empty bucket */
			for (int j = 0; j < i; j++)
				if (f[k - 1][j] != SIZE_MAX && f[k - 1][j] + (size_t)(i - j) * cnt[j] < f[k][i])
					f[k][i] = f[k - 1][j] + (size_t)(i - j) * cnt[j], from[k][i] = j;
		}
	int ends[MOE_BUCKETS], nb = 0;
	for (int k = MOE_BUCKETS, i = na; k > 0 && i > 0; k--)
		if (from[k][i] != i)
			ends[nb++] = i, i = from[k][i];
	pl->na = na, pl->nbk = nb, pl->rows = f[MOE_BUCKETS][na];
	pl->beg[0] = 0;
	for (int k = 0; k < nb; k++) { /* ends were found last bucket first */
		pl->beg[k + 1] = ends[nb - 1 - k];
		pl->pad[k] = cnt[pl->beg[k]];
	}
	return na > 0 && pl->rows <= (size_t)nK + (size_t)nK / 2;
}

/* y (plan rows, dim) fp32 and pinv (nK) for the combine; the scratch is CU_SCR_GEMM's */
template <typename T>
static void moe_prefill_pad(struct cu *c, const float *x, int dim, int inter, int K, int E, int nK, const int32_t *idx,
			    const struct eng_w *gate, const struct eng_w *up, const struct eng_w *down, moe_lists L,
			    const struct moe_plan *pl, float **y, const int **pinv)
{
	cudaDataType_t ab = std::is_same<T, __nv_bfloat16>::value ? CUDA_R_16BF : CUDA_R_16F;
	size_t rows = pl->rows;
	int na = pl->na;
	/* g and u in T: the gate/up GEMMs round their outputs once (as transformers' bf16 run does),
	 * which halves what they write and what silu*up reads (run 15: act 0.10 ms a layer in fp32) */
	size_t o_u = moe_al(rows * inter * 2), o_y = o_u + moe_al(rows * inter * 2), o_xs = o_y + moe_al(rows * dim * 4);
	size_t o_h = o_xs + moe_al(rows * dim * 2), o_p = o_h + moe_al(rows * inter * 2);
	size_t o_t = o_p + moe_al(sizeof(void *) * 9 * (size_t)na), o_pi = o_t + moe_al(sizeof(int) * (rows + (size_t)E));
	uint8_t *s = (uint8_t *)cu_scratch(c, CU_SCR_GEMM, o_pi + sizeof(int) * (size_t)nK);
	T *g = (T *)s, *u = (T *)(s + o_u);
	T *xs = (T *)(s + o_xs), *h = (T *)(s + o_h);
	*y = (float *)(s + o_y);
	*pinv = (const int *)(s + o_pi);

	/* host tables: each padded row's expert and each expert's first row; the batched calls'
	 * pointers: gate/up A, B, C (bucket by bucket, in a bucket its gates then its ups), down
	 * A, B, C (one per expert, in bucket order) */
	uint8_t *hb = (uint8_t *)sh_malloc(o_pi - o_p); /* laid out as the scratch from o_p: one copy */
	const void **hp = (const void **)hb;
	int *tb = (int *)(hb + (o_t - o_p)), *rowe = tb, *base = tb + rows;
	size_t r = 0;
	for (int k = 0; k < pl->nbk; k++)
		for (int i = pl->beg[k]; i < pl->beg[k + 1]; i++) {
			int e = pl->ord[i], nb = pl->beg[k + 1] - pl->beg[k], gi = 2 * pl->beg[k] + (i - pl->beg[k]);
			base[e] = (int)r;
			for (int q = 0; q < pl->pad[k]; q++)
				rowe[r + q] = e;
			hp[gi] = gate[e].data, hp[gi + nb] = up[e].data;
			hp[2 * na + gi] = hp[2 * na + gi + nb] = xs + r * dim;
			hp[4 * na + gi] = g + r * inter, hp[4 * na + gi + nb] = u + r * inter;
			hp[6 * na + i] = down[e].data, hp[7 * na + i] = h + r * inter, hp[8 * na + i] = *y + r * dim;
			r += (size_t)pl->pad[k];
		}
	const void **P = (const void **)(s + o_p);
	int *dtb = (int *)(s + o_t);
	/* from pageable memory: staged before the call returns, so the host tables may go at once */
	CU_CHECK(cudaMemcpyAsync(P, hb, o_pi - o_p, cudaMemcpyHostToDevice, c->st));
	free(hb);

	moe_gather_pad_kernel<T><<<(unsigned)rows, 256, 0, c->st>>>(xs, x, dim, K, dtb, dtb + rows, L);
	CU_LAUNCHED();
	moe_pad_inv_kernel<<<cu_div_up(nK, 256), 256, 0, c->st>>>(idx, nK, dtb + rows, L, (int *)(s + o_pi));
	CU_LAUNCHED();
	moe_mark(c, 2);
	const float one = 1.0f, zero = 0.0f;
	for (int k = 0; k < pl->nbk; k++) { /* gate and up of the bucket's experts: one batched call */
		int nb = pl->beg[k + 1] - pl->beg[k], o = 2 * pl->beg[k];
		CUBLAS_CHECK(cublasGemmBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, inter, pl->pad[k], dim, &one, P + o, ab,
						 (int)gate[0].ld, P + 2 * na + o, ab, dim, &zero,
						 (void *const *)(P + 4 * na + o), ab, inter, 2 * nb,
						 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	}
	moe_mark(c, 3);
	if (inter % 8 == 0) /* every row of g, u, h 16-byte aligned (the scratch pieces are) */
		moe_act16x8_kernel<T><<<cu_div_up((long)(rows * inter / 8), 256), 256, 0, c->st>>>(h, g, u, rows * inter);
	else
		moe_act16_kernel<T, T><<<cu_div_up((long)(rows * inter), 256), 256, 0, c->st>>>(h, g, u, rows * inter);
	CU_LAUNCHED();
	moe_mark(c, 4);
	for (int k = 0; k < pl->nbk; k++) {
		int nb = pl->beg[k + 1] - pl->beg[k], o = pl->beg[k];
		CUBLAS_CHECK(cublasGemmBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, dim, pl->pad[k], inter, &one,
						 P + 6 * na + o, ab, (int)down[0].ld, P + 7 * na + o, ab, inter, &zero,
						 (void *const *)(P + 8 * na + o), CUDA_R_32F, dim, nb, CUBLAS_COMPUTE_32F,
						 CUBLAS_GEMM_DEFAULT));
	}
	moe_mark(c, 5);
}

static int moe_pad_on = -1; /* KVGATE_CUDA_MOE_PAD=0: never the padded path */
static int moe_fuse_n = -1; /* KVGATE_CUDA_MOE_FN=k: the two-launch MoE (with fuse) up to k tokens;
			     * default 1 (run 29: faster at 1 token, slower at 8) */

/* moe_ffn, and with shw (the shared experts' gate, up, down) moe_ffn_shared: g, u (n, shw rows)
 * are its scratch where the shared experts go apart (glu, then down into out) */
static void moe_ffn(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx, const float *wt, int K,
		    int E, const struct eng_w *gate, const struct eng_w *up, const struct eng_w *down,
		    const struct eng_w *shw, float *sg, float *su, float *out)
{
	struct cu *c = CU(be);
	if (n <= 0)
		return;
	int inter = gate[0].rows, nK = n * K;
	const void *const *tab = experts_table(c, gate, up, down, E);
	int vec = gate[0].dt == ENG_DT_F32 ? 4 : 8;
	int aligned = experts_aligned(gate, up, down, E, vec) && (uintptr_t)x % 16 == 0 && dim % 4 == 0;
	int small = n <= MOE_SMALL_N || c->exact;

	/* scratch: the lists' ints, then for decode g, u (nK, inter) and y (nK, dim) fp32; the prefill's
	 * buffers are in CU_SCR_GEMM (padded) or CU_SCR_MOE (one cu_matmul an expert, which itself uses
	 * CU_SCR_GEMM) */
	int w16 = gate[0].dt != ENG_DT_F32;
	size_t ints = ((size_t)E * 3 + 2 + (size_t)nK * 2 + 63) & ~(size_t)63;
	size_t o_u = moe_al((size_t)nK * inter * 4), o_y = o_u + moe_al((size_t)nK * inter * 4);
	size_t o_xs = o_y + moe_al((size_t)nK * dim * 4), o_end = o_xs + moe_al((size_t)nK * dim * 4);
	int Is = shw ? shw[0].rows : 0;
	size_t o_sh = o_xs, sh_bytes = shw ? moe_al((size_t)n * Is * 4) + moe_al((size_t)n * dim * 4) : 0;
	uint8_t *s = (uint8_t *)cu_scratch(c, CU_SCR_OP, moe_al(ints * 4) + (small ? o_xs + sh_bytes : 0));
	uint8_t *f = s + moe_al(ints * 4); /* g, u, y (decode) */
	moe_lists L;
	L.cnt = (int *)s;
	L.off = L.cnt + E;
	L.act = L.off + E + 1;
	L.lst = L.act + E + 1;
	L.inv = L.lst + nK;
	float *g = (float *)f, *u = (float *)(f + o_u), *y = (float *)(f + o_y);
	const int *inv = L.inv; /* slot -> row of y */
	int mode = 0, na = 0, cmax = 0;

	SH_BUG_ON(E > ROUTE_EMAX);
	size_t ld_gu = gate[0].ld, ld_d = down[0].ld;
	/* fast mode, bf16: the tensor-core GEMVs (g and its inter-wide rows are 16-byte aligned: the
	 * scratch is, and inter % 32 == 0) */
	int mma = small && !c->exact && gate[0].dt == ENG_DT_BF16 && aligned && c->prop.major >= 8 && dim % 32 == 0 &&
		  inter % 32 == 0 && cu_div_up(dim, 16) <= CU_TICKS;
	if (shw) /* the shared experts in the same launches: bf16 too, one shape, 16-byte rows */
		mma = mma && shw[0].dt == ENG_DT_BF16 && shw[1].dt == ENG_DT_BF16 && shw[2].dt == ENG_DT_BF16 &&
		      shw[1].rows == Is && shw[0].ld == shw[1].ld && shw[0].cols == dim && shw[2].rows == dim &&
		      shw[2].cols == Is && Is % 32 == 0 && experts_aligned(shw, shw + 1, shw + 2, 1, 8);
	if (moe_fuse_n < 0) {
		const char *ev = getenv("KVGATE_CUDA_MOE_FN");
		moe_fuse_n = ev && *ev ? atoi(ev) : 1;
	}
	if (mma && c->fuse && n <= moe_fuse_n) {
		moe_src ms = {L, idx, n == 1};
		moe_sh sh = {};
		if (shw) {
			for (int k = 0; k < 3; k++)
				sh.w[k] = (const uint16_t *)shw[k].data;
			sh.ld_gu = shw[0].ld, sh.ld_d = shw[2].ld, sh.rows = Is;
			sh.h = (float *)(f + o_sh), sh.y = (float *)(f + o_sh + moe_al((size_t)n * Is * 4));
		}
		int zs = SH_MIN(E, nK), ti = cu_div_up(inter, 16);
		int down1 = ms.direct && c->down1 && K <= MOE_D1_KMAX;
		if (!ms.direct)
			cu_launch(c, moe_lists_kernel, 1, 256, 0, idx, nK, E, L);
		cu_launch(c, moe_gu_mma_kernel, dim3(ti, zs + cu_div_up(cu_div_up(Is, 16), ti)), MMA_WARPS * 32, 0, tab, E,
			  inter, dim, ld_gu, x, K, ms, zs, n, sh, g, down1 ? wt : (const float *)NULL);
		if (down1) {
			cu_launch(c, moe_down1_kernel, cu_div_up(dim, 16), MOE_D1_WARPS * 32, 0, tab + 2 * E, dim, inter, ld_d,
				  (const float *)g, K, idx, sh, out);
			return;
		}
		cu_launch(c, moe_down_mma_kernel, dim3(cu_div_up(dim, 16), zs + (shw != NULL)), MMA_WARPS * 32, 0,
			  tab + 2 * E, E, dim, inter, ld_d, (const float *)g, K, ms, zs, n, sh, y, wt, out, c->tick);
		return;
	}
	if (shw) { /* apart: out = the shared experts' output, then the routed ones added below */
		cu_glu(be, x, dim, n, &shw[0], &shw[1], sg, su, Is);
		cu_matmul(c, sg, Is, n, &shw[2], NULL, out, dim);
	}
	if (!small)
		moe_mark(c, 0);
	cu_launch(c, moe_lists_kernel, 1, 256, 0, idx, nK, E, L);
	if (small) { /* expert-major: gate and up, silu * up, down, then moe_combine_kernel */
		int zs = SH_MIN(E, nK);
		if (mma) {
			cu_launch(c, moe_mma_kernel, dim3(cu_div_up(inter, 16), 2, zs), MMA_WARPS * 32, 0, tab, E, inter, dim,
				  ld_gu, x, dim, 1, K, L, g, u, inter);
		} else {
			dim3 g1(cu_div_up(inter, MOE_WARPS * MOE_RPW), 2, zs);
			moe_gemv_any(c, gate[0].dt, aligned, g1, tab, E, inter, dim, ld_gu, x, dim, 1, K, L, g, u, inter);
		}
		cu_launch(c, moe_act_kernel, cu_div_up((long)nK * inter, 256), 256, 0, g, (const float *)u,
			  (size_t)nK * inter);
		if (mma) {
			cu_launch(c, moe_mma_kernel, dim3(cu_div_up(dim, 16), 1, zs), MMA_WARPS * 32, 0, tab + 2 * E, E, dim,
				  inter, ld_d, (const float *)g, inter, 0, K, L, y, y, dim);
		} else {
			dim3 g2(cu_div_up(dim, MOE_WARPS * MOE_RPW), 1, zs);
			moe_gemv_any(c, gate[0].dt, aligned && inter % 4 == 0, g2, tab + 2 * E, E, dim, inter, ld_d, g, inter,
				     0, K, L, y, y, dim);
		}
	} else {
		int *hoff = (int *)sh_malloc(sizeof(int) * (size_t)(E + 1));
		CU_CHECK(cudaMemcpyAsync(hoff, L.off, sizeof(int) * (size_t)(E + 1), cudaMemcpyDeviceToHost, c->st));
		CU_CHECK(cudaStreamSynchronize(c->st));
		moe_mark(c, 1);
		struct moe_plan pl;
		int plan_ok = moe_plan_make(&pl, hoff, E, nK);
		na = pl.na, cmax = pl.nbk ? pl.pad[0] : 0;
		if (moe_pad_on < 0) {
			const char *ev = getenv("KVGATE_CUDA_MOE_PAD");
			moe_pad_on = !(ev && *ev == '0');
		}
		if (w16 && moe_pad_on && aligned && plan_ok) {
			if (gate[0].dt == ENG_DT_BF16)
				moe_prefill_pad<__nv_bfloat16>(c, x, dim, inter, K, E, nK, idx, gate, up, down, L, &pl, &y, &inv);
			else
				moe_prefill_pad<__half>(c, x, dim, inter, K, E, nK, idx, gate, up, down, L, &pl, &y, &inv);
			mode = 1;
		} else { /* F32 weights (tests), or routing too skewed to pad: one cu_matmul an expert */
			f = (uint8_t *)cu_scratch(c, CU_SCR_MOE, o_end);
			g = (float *)f, u = (float *)(f + o_u), y = (float *)(f + o_y);
			float *xs = (float *)(f + o_xs);
			moe_gather_kernel<<<nK, 256, 0, c->st>>>(xs, x, dim, K, L.lst);
			CU_LAUNCHED();
			for (int e = 0; e < E; e++) {
				int cnt = hoff[e + 1] - hoff[e];
				if (!cnt)
					continue;
				cu_matmul(c, xs + (size_t)hoff[e] * dim, dim, cnt, &gate[e], NULL, g + (size_t)hoff[e] * inter,
					  inter);
				cu_matmul(c, xs + (size_t)hoff[e] * dim, dim, cnt, &up[e], NULL, u + (size_t)hoff[e] * inter,
					  inter);
			}
			moe_act_kernel<<<cu_div_up((long)nK * inter, 256), 256, 0, c->st>>>(g, u, (size_t)nK * inter);
			CU_LAUNCHED();
			for (int e = 0; e < E; e++) {
				int cnt = hoff[e + 1] - hoff[e];
				if (cnt)
					cu_matmul(c, g + (size_t)hoff[e] * inter, inter, cnt, &down[e], NULL,
						  y + (size_t)hoff[e] * dim, dim);
			}
		}
		free(hoff);
	}
	/* a block per (token, 256 columns): one block a token left the step on one SM */
	cu_launch(c, moe_combine_kernel, dim3(n, cu_div_up(dim, 256)), 256, 0, out, (const float *)y, wt, inv, dim, K);
	if (!small) {
		moe_mark(c, 6);
		moe_marks_print(n, mode, na, cmax);
	}
}

void cu_moe_ffn(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx, const float *wt, int K,
		int E, const struct eng_w *gate, const struct eng_w *up, const struct eng_w *down, float *out, float *scratch)
{
	(void)scratch;
	moe_ffn(be, x, n, dim, idx, wt, K, E, gate, up, down, NULL, NULL, NULL, out);
}

void cu_moe_ffn_shared(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx, const float *wt,
		       int K, int E, const struct eng_w *gate, const struct eng_w *up, const struct eng_w *down,
		       const struct eng_w *sh, float *g, float *u, float *out, float *scratch)
{
	(void)scratch;
	moe_ffn(be, x, n, dim, idx, wt, K, E, gate, up, down, sh, g, u, out);
}
