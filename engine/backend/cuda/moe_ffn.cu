/* moe_ffn.cu: out (n, dim) += sum_k wt[i,k] * expert_{idx[i,k]}(x_i), SwiGLU experts, with ids and
 * weights in device memory (moe_route.cu). Only routed experts are read:
 *   lists: the n*K (token, k) slots sorted by expert (counts, offsets, the active experts);
 *   decode (n <= 32, or exact mode): grouped GEMV, one grid over (row tile, gate|up, active expert),
 *     each expert's rows streamed once per 8 of its tokens (gemv.cuh), then silu*up, then the down
 *     projection the same way;
 *   prefill: the counts come to the host and each active expert runs through cu_matmul (cuBLAS);
 *   combine: out[i] += sum_k wt * y[slot], in k order (deterministic, no atomics).
 * The caller's scratch is not used: slots need n*K rows, more than eng_backend_moe_scratch gives. */
#include <stdlib.h>
#include <string.h>

#include "engine/backend/cuda/gemv.cuh"

#define MOE_WARPS 4
#define MOE_RPW 2
#define MOE_SMALL_N 32
#define ROUTE_EMAX 256

struct moe_lists {
	int *cnt, *off, *lst, *inv, *act; /* (E), (E+1), (nK) slots by expert, (nK) row of each slot, (E+1) */
};

/* One block: counts and fill positions by shared-memory atomics (the order of slots inside an
 * expert's list changes no result: every slot is computed on its own and combined in k order). */
__global__ void moe_lists_kernel(const int32_t *idx, int nK, int E, moe_lists L)
{
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

__global__ void moe_act_kernel(float *g, const float *u, size_t total)
{
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

__global__ void moe_combine_kernel(float *out, const float *y, const float *wt, const int *inv, int dim, int K)
{
	int i = blockIdx.x;
	for (int d = blockIdx.y * blockDim.x + threadIdx.x; d < dim; d += gridDim.y * blockDim.x) {
		float s = out[(size_t)i * dim + d];
		for (int k = 0; k < K; k++)
			s += wt[(size_t)i * K + k] * y[(size_t)inv[i * K + k] * dim + d];
		out[(size_t)i * dim + d] = s;
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

void cu_moe_ffn(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx, const float *wt,
		int K, int E, const struct eng_w *gate, const struct eng_w *up, const struct eng_w *down, float *out,
		float *scratch)
{
	(void)scratch;
	struct cu *c = CU(be);
	if (n <= 0)
		return;
	int inter = gate[0].rows, nK = n * K;
	const void *const *tab = experts_table(c, gate, up, down, E);
	int vec = gate[0].dt == ENG_DT_F32 ? 4 : 8;
	int aligned = experts_aligned(gate, up, down, E, vec) && (uintptr_t)x % 16 == 0 && dim % 4 == 0;
	int small = n <= MOE_SMALL_N || c->exact;

	/* scratch: ints, then g, u (nK, inter), y (nK, dim), xs (nK, dim) for the prefill path */
	size_t ints = ((size_t)E * 3 + 2 + (size_t)nK * 2 + 63) & ~(size_t)63;
	size_t fl = (size_t)nK * inter * 2 + (size_t)nK * dim * (small ? 1 : 2);
	uint8_t *s = (uint8_t *)cu_scratch(c, CU_SCR_OP, ints * 4 + fl * 4);
	moe_lists L;
	L.cnt = (int *)s;
	L.off = L.cnt + E;
	L.act = L.off + E + 1;
	L.lst = L.act + E + 1;
	L.inv = L.lst + nK;
	float *g = (float *)(s + ints * 4), *u = g + (size_t)nK * inter, *y = u + (size_t)nK * inter;
	float *xs = y + (size_t)nK * dim;

	SH_BUG_ON(E > ROUTE_EMAX);
	moe_lists_kernel<<<1, 256, 0, c->st>>>(idx, nK, E, L);
	CU_LAUNCHED();
	size_t ld_gu = gate[0].ld, ld_d = down[0].ld;
	if (small) {
		int zs = SH_MIN(E, nK);
		dim3 g1(cu_div_up(inter, MOE_WARPS * MOE_RPW), 2, zs), g2(cu_div_up(dim, MOE_WARPS * MOE_RPW), 1, zs);
		moe_gemv_any(c, gate[0].dt, aligned, g1, tab, E, inter, dim, ld_gu, x, dim, 1, K, L, g, u, inter);
		moe_act_kernel<<<cu_div_up((long)nK * inter, 256), 256, 0, c->st>>>(g, u, (size_t)nK * inter);
		CU_LAUNCHED();
		moe_gemv_any(c, gate[0].dt, aligned && inter % 4 == 0, g2, tab + 2 * E, E, dim, inter, ld_d, g, inter, 0, K, L,
			     y, y, dim);
	} else {
		int *hoff = (int *)sh_malloc(sizeof(int) * (size_t)(E + 1));
		CU_CHECK(cudaMemcpyAsync(hoff, L.off, sizeof(int) * (size_t)(E + 1), cudaMemcpyDeviceToHost, c->st));
		CU_CHECK(cudaStreamSynchronize(c->st));
		moe_gather_kernel<<<nK, 256, 0, c->st>>>(xs, x, dim, K, L.lst);
		CU_LAUNCHED();
		for (int e = 0; e < E; e++) {
			int cnt = hoff[e + 1] - hoff[e];
			if (!cnt)
				continue;
			cu_matmul(c, xs + (size_t)hoff[e] * dim, dim, cnt, &gate[e], NULL, g + (size_t)hoff[e] * inter, inter);
			cu_matmul(c, xs + (size_t)hoff[e] * dim, dim, cnt, &up[e], NULL, u + (size_t)hoff[e] * inter, inter);
		}
		moe_act_kernel<<<cu_div_up((long)nK * inter, 256), 256, 0, c->st>>>(g, u, (size_t)nK * inter);
		CU_LAUNCHED();
		for (int e = 0; e < E; e++) {
			int cnt = hoff[e + 1] - hoff[e];
			if (cnt)
				cu_matmul(c, g + (size_t)hoff[e] * inter, inter, cnt, &down[e], NULL, y + (size_t)hoff[e] * dim,
					  dim);
		}
		free(hoff);
	}
	/* a block per (token, 256 columns): one block a token left the step on one SM */
	moe_combine_kernel<<<dim3(n, cu_div_up(dim, 256)), 256, 0, c->st>>>(out, y, wt, L.inv, dim, K);
	CU_LAUNCHED();
}
