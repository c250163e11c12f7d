/* matmul.cu: y (n, rows) [ldy] = x (n, cols) [ldx] . W^T (+ bias).
 *   n <= 8 (decode), or exact mode: the GEMV kernel (gemv.cuh), weights streamed once per 8 tokens
 *     with 16-byte loads, fp32 activations and accumulation;
 *   n > 8: cuBLAS; F32 weights by SGEMM (no TF32), BF16/F16 by GemmEx on activations rounded to
 *     the weights' type, fp32 accumulation and output (what the bf16 tensor cores take). */
#include <stdlib.h>

#include "engine/backend/cuda/gemv.cuh"

#define GEMV_WARPS 4

template <typename T, int VEC, int RPW, int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(const T *w, size_t ld, int rows, int cols, const float *x, int ldx, int nt, const float *bias, float *y,
	    int ldy)
{
	int row0 = (blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5)) * RPW;
	if (row0 < rows)
		gemv_prefetch<T, RPW>(w, ld, row0, rows, cols);
	cu_pdl_wait();
	if (row0 >= rows)
		return;
	const float *xs[NT];
#pragma unroll
	for (int t = 0; t < NT; t++)
		xs[t] = x + (size_t)min(t, nt - 1) * ldx;
	float acc[RPW][NT];
	gemv_warp<T, VEC, RPW, NT>(w, ld, row0, rows, cols, xs, nt, acc);
	int lane = threadIdx.x & 31;
#pragma unroll
	for (int r = 0; r < RPW; r++)
#pragma unroll
		for (int t = 0; t < NT; t++)
			if (lane == (r * NT + t) % 32 && t < nt && row0 + r < rows)
				y[(size_t)t * ldy + row0 + r] = acc[r][t] + (bias ? bias[row0 + r] : 0.0f);
}

template <typename T, int VEC, int RPW, int NT>
static void gemv_launch(struct cu *c, const struct eng_w *w, const float *x, int ldx, int nt, const float *bias,
			float *y, int ldy)
{
	int blocks = cu_div_up(w->rows, GEMV_WARPS * RPW);
	cu_launch(c, gemv_kernel<T, VEC, RPW, NT>, blocks, GEMV_WARPS * 32, 0, (const T *)w->data, w->ld, w->rows,
		  w->cols, x, ldx, nt, bias, y, ldy);
}

template <typename T, int VEC>
static void gemv_nt(struct cu *c, const struct eng_w *w, const float *x, int ldx, int nt, const float *bias, float *y,
		    int ldy)
{
	if (nt == 1)
		gemv_launch<T, VEC, 2, 1>(c, w, x, ldx, nt, bias, y, ldy);
	else if (nt == 2)
		gemv_launch<T, VEC, 2, 2>(c, w, x, ldx, nt, bias, y, ldy);
	else if (nt <= 4)
		gemv_launch<T, VEC, 4, 4>(c, w, x, ldx, nt, bias, y, ldy);
	else
		gemv_launch<T, VEC, 4, 8>(c, w, x, ldx, nt, bias, y, ldy);
}

/* Whether the 16-byte path applies: rows and activations 16-byte aligned, whole vectors per row. */
static int gemv_aligned(const struct eng_w *w, const float *x, int ldx, int vec)
{
	size_t es = eng_dtype_size(w->dt);
	return (uintptr_t)w->data % 16 == 0 && (w->ld * es) % 16 == 0 && w->cols % vec == 0 && (uintptr_t)x % 16 == 0 &&
	       ldx % 4 == 0;
}

static void gemv(struct cu *c, const struct eng_w *w, const float *x, int ldx, int nt, const float *bias, float *y,
		 int ldy)
{
	switch (w->dt) {
	case ENG_DT_BF16:
		if (gemv_aligned(w, x, ldx, 8))
			gemv_nt<uint16_t, 8>(c, w, x, ldx, nt, bias, y, ldy);
		else
			gemv_nt<uint16_t, 1>(c, w, x, ldx, nt, bias, y, ldy);
		break;
	case ENG_DT_F16:
		if (gemv_aligned(w, x, ldx, 8))
			gemv_nt<cu_f16_t, 8>(c, w, x, ldx, nt, bias, y, ldy);
		else
			gemv_nt<cu_f16_t, 1>(c, w, x, ldx, nt, bias, y, ldy);
		break;
	case ENG_DT_F32:
		if (gemv_aligned(w, x, ldx, 4))
			gemv_nt<float, 4>(c, w, x, ldx, nt, bias, y, ldy);
		else
			gemv_nt<float, 1>(c, w, x, ldx, nt, bias, y, ldy);
		break;
	}
}

/* ---- n = 2..8 on the tensor cores: gemv.cuh's gemv_mma_kernel, gemv_mma_launch ---- */

/* The fewest tokens that take the tensor-core GEMV: 1 by default (at one token it wastes 7/8 of
 * the mma, which costs nothing in a memory-bound kernel, and keeps 8 weight loads a lane in
 * flight); KVGATE_CUDA_GEMV_MMA=0 turns it off, =2 keeps one token on the fp32 kernel. */
static int gemv_mma_min = -1;

int cu_gemv_mma_ok(struct cu *c, const struct eng_w *w, const float *x, int ldx, int nt)
{
	if (gemv_mma_min < 0) {
		const char *e = getenv("KVGATE_CUDA_GEMV_MMA");
		gemv_mma_min = e && *e == '0' ? 99 : e && *e == '2' ? 2 : 1;
	}
	return !c->exact && nt >= gemv_mma_min && w->dt == ENG_DT_BF16 && c->prop.major >= 8 && w->cols % 32 == 0 &&
	       gemv_aligned(w, x, ldx, 8);
}

/* dst (n, cols) = x rounded to T, a block row per token (no 64-bit division per element: it made
 * this kernel a visible share of a prefill's matmuls); VEC 4: float4 in, 8 bytes out (rows of x
 * 16-byte aligned, cols % 4 == 0) */
template <typename T> __device__ __forceinline__ T to_half1(float v);
template <> __device__ __forceinline__ __nv_bfloat16 to_half1<__nv_bfloat16>(float v)
{
	return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half to_half1<__half>(float v)
{
	return __float2half_rn(v);
}

template <typename T, int VEC>
__global__ void to_half_kernel(T *dst, const float *x, int ldx, int n, int cols)
{
	for (int r = blockIdx.y; r < n; r += gridDim.y) {
		const float *xr = x + (size_t)r * ldx;
		T *dr = dst + (size_t)r * cols;
		for (int k = (blockIdx.x * blockDim.x + threadIdx.x) * VEC; k < cols; k += gridDim.x * blockDim.x * VEC) {
			if constexpr (VEC == 4) {
				float4 v = *(const float4 *)(xr + k);
				T o[4] = {to_half1<T>(v.x), to_half1<T>(v.y), to_half1<T>(v.z), to_half1<T>(v.w)};
				*(uint2 *)(dr + k) = *(const uint2 *)o;
			} else {
				dr[k] = to_half1<T>(xr[k]);
			}
		}
	}
}

__global__ void bias_kernel(float *y, int ldy, int n, int rows, const float *bias)
{
	long total = (long)n * rows;
	for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x)
		y[(size_t)(t / rows) * ldy + t % rows] += bias[t % rows];
}

/* x (n, cols) [ldx] rounded to the 16-bit type dt in CU_SCR_GEMM, contiguous (cols a row) */
static void *gemm_input(struct cu *c, const float *x, int ldx, int n, int cols, enum eng_dtype dt)
{
	void *xh = cu_scratch(c, CU_SCR_GEMM, (size_t)n * cols * 2);
	int v4 = cols % 4 == 0 && ldx % 4 == 0 && (uintptr_t)x % 16 == 0;
	dim3 grid(cu_div_up(cols, v4 ? 1024 : 256), SH_MIN(n, 32768));
	if (dt == ENG_DT_BF16 && v4)
		to_half_kernel<__nv_bfloat16, 4><<<grid, 256, 0, c->st>>>((__nv_bfloat16 *)xh, x, ldx, n, cols);
	else if (dt == ENG_DT_BF16)
		to_half_kernel<__nv_bfloat16, 1><<<grid, 256, 0, c->st>>>((__nv_bfloat16 *)xh, x, ldx, n, cols);
	else if (v4)
		to_half_kernel<__half, 4><<<grid, 256, 0, c->st>>>((__half *)xh, x, ldx, n, cols);
	else
		to_half_kernel<__half, 1><<<grid, 256, 0, c->st>>>((__half *)xh, x, ldx, n, cols);
	CU_LAUNCHED();
	return xh;
}

/* y = x . W^T on cuBLAS; xh: x already in W's 16-bit type (gemm_input), or NULL to make it here */
static void gemm(struct cu *c, const float *x, int ldx, int n, const struct eng_w *w, const float *bias, float *y,
		 int ldy, const void *xh)
{
	const float one = 1.0f, zero = 0.0f;
	if (w->dt == ENG_DT_F32) {
		CUBLAS_CHECK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols, &one,
					 (const float *)w->data, (int)w->ld, x, ldx, &zero, y, ldy));
	} else {
		if (!xh)
			xh = gemm_input(c, x, ldx, n, w->cols, w->dt);
		cudaDataType_t t = w->dt == ENG_DT_BF16 ? CUDA_R_16BF : CUDA_R_16F;
		CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols, &one, w->data, t,
					  (int)w->ld, xh, t, w->cols, &zero, y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F,
					  CUBLAS_GEMM_DEFAULT));
	}
	if (bias) {
		long total = (long)n * w->rows;
		bias_kernel<<<(int)SH_MIN((total + 255) / 256, 8192L), 256, 0, c->st>>>(y, ldy, n, w->rows, bias);
		CU_LAUNCHED();
	}
}

void cu_matmul(struct cu *c, const float *x, int ldx, int n, const struct eng_w *w, const float *bias, float *y,
	       int ldy)
{
	if (n <= 0 || w->rows <= 0)
		return;
	if (n > 8 && !c->exact) {
		gemm(c, x, ldx, n, w, bias, y, ldy, NULL);
		return;
	}
	for (int t0 = 0; t0 < n; t0 += 8) {
		const float *xt = x + (size_t)t0 * ldx;
		float *yt = y + (size_t)t0 * ldy;
		int nt = SH_MIN(8, n - t0);
		if (cu_gemv_mma_ok(c, w, xt, ldx, nt)) {
			gemv_mma_launch(c, w, bias, yt, ldy, NULL, NULL, 0, xt, ldx, nt, NULL, gemv_no_last{});
		} else {
			gemv(c, w, xt, ldx, nt, bias, yt, ldy);
		}
	}
}

void cu_matmul_op(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w, const float *bias,
		  float *y, int ldy)
{
	cu_matmul(CU(be), x, ldx, n, w, bias, y, ldy);
}

void cu_matmul2(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1, float *y1, int ldy1,
		const struct eng_w *w2, float *y2, int ldy2)
{
	struct cu *c = CU(be);
	if (n > 0 && n <= 8 && w1->cols == w2->cols && cu_gemv_mma_ok(c, w1, x, ldx, n) &&
	    cu_gemv_mma_ok(c, w2, x, ldx, n)) {
		gemv_mma_launch(c, w1, NULL, y1, ldy1, w2, y2, ldy2, x, ldx, n, NULL, gemv_no_last{});
		return;
	}
	if (n > 8 && !c->exact && w1->dt == w2->dt && w1->dt != ENG_DT_F32 && w1->cols == w2->cols) {
		const void *xh = gemm_input(c, x, ldx, n, w1->cols, w1->dt); /* rounded once for both */
		gemm(c, x, ldx, n, w1, NULL, y1, ldy1, xh);
		gemm(c, x, ldx, n, w2, NULL, y2, ldy2, xh);
		return;
	}
	cu_matmul(c, x, ldx, n, w1, NULL, y1, ldy1);
	cu_matmul(c, x, ldx, n, w2, NULL, y2, ldy2);
}

/* ---- norm_matmul2: the residual add and the norm in the GEMV's blocks (gemv_mma_kernel<true>) ---- */

/* Whether a prenorm GEMV takes nt tokens of width cols (its bf16 copy fits in a block's 48 KB). */
/* KVGATE_CUDA_PN=k: fuse the norm up to k tokens (0: never; default 1: run 29 had the fused norm
 * slower at 8 tokens, faster at 1) */
static int pn_maxt = -1;

int cu_pn_ok(struct cu *c, const struct eng_w *w, const struct eng_prenorm *pn, int nt)
{
	if (pn_maxt < 0) {
		const char *e = getenv("KVGATE_CUDA_PN");
		pn_maxt = e && *e ? SH_MIN(atoi(e), PN_MAXT) : 1;
	}
	uintptr_t al = (uintptr_t)pn->x | (uintptr_t)pn->xn | (uintptr_t)pn->w | (uintptr_t)(pn->t ? pn->t : pn->x);
	return nt >= 1 && nt <= pn_maxt && w->cols % 32 == 0 && w->cols <= 4 * PN_V * MMA_WARPS * 32 &&
	       gemv_pn_smem(nt, w->cols) <= 40 * 1024 && al % 16 == 0 && cu_gemv_mma_ok(c, w, pn->x, w->cols, nt);
}

/* add_rmsnorm (or rmsnorm) into pn->xn, as the unfused forward does */
void cu_prenorm(struct eng_backend *be, const struct eng_prenorm *pn, int n, int dim)
{
	if (pn->t)
		cu_add_rmsnorm(be, pn->x, pn->t, pn->xn, n, dim, pn->w, pn->eps);
	else
		cu_rmsnorm(be, pn->xn, dim, pn->x, dim, n, dim, pn->w, pn->eps);
}

void cu_norm_matmul2(struct eng_backend *be, const struct eng_prenorm *pn, int n, const struct eng_w *w1, float *y1,
		     int ldy1, const struct eng_w *w2, float *y2, int ldy2)
{
	struct cu *c = CU(be);
	int cols = w1->cols;
	if (n > 0 && w1->cols == w2->cols && cu_pn_ok(c, w1, pn, n) && cu_pn_ok(c, w2, pn, n)) {
		gemv_mma_launch(c, w1, NULL, y1, ldy1, w2, y2, ldy2, pn->x, cols, n, pn, gemv_no_last{});
		return;
	}
	cu_prenorm(be, pn, n, cols);
	cu_matmul2(be, pn->xn, cols, n, w1, y1, ldy1, w2, y2, ldy2);
}

/* ---- glu: g = silu(x . W1^T) * (x . W2^T) ---- */

/* 16 rows of both matrices a block (gemv_mma_tile), up to 8 tokens, silu * up in the epilogue */
__global__ void __launch_bounds__(MMA_WARPS * 32)
gemv_glu_kernel(const uint16_t *w1, const uint16_t *w2, size_t ld, int rows, int cols, const float *x, int ldx, int nt,
		float *g, int ldg)
{
	__shared__ float red[MMA_WARPS][32][8];
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, t4 = lane & 3, row0 = blockIdx.x * 16;
	gemv_prefetch<uint16_t, 2>(w1, ld, row0 + 2 * warp, rows, cols);
	gemv_prefetch<uint16_t, 2>(w2, ld, row0 + 2 * warp, rows, cols);
	cu_pdl_wait();
	const uint16_t *w[2] = {w1, w2};
	float v[2][4];
	if (!gemv_mma_tile<2, MMA_U / 2>(w, ld, row0, rows, cols, x + (size_t)min(gr, nt - 1) * ldx, red, v))
		return;
#pragma unroll
	for (int j = 0; j < 4; j++) {
		int row = row0 + gr + (j >= 2 ? 8 : 0), tok = 2 * t4 + (j & 1);
		if (row < rows && tok < nt)
			g[(size_t)tok * ldg + row] = gemv_silu_mul(v[0][j], v[1][j]);
	}
}

void cu_glu(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1, const struct eng_w *w2,
	    float *g, float *u, int ld)
{
	struct cu *c = CU(be);
	if (n <= 0 || w1->rows <= 0)
		return;
	if (n <= 8 && w1->rows == w2->rows && w1->cols == w2->cols && w1->ld == w2->ld &&
	    cu_gemv_mma_ok(c, w1, x, ldx, n) && cu_gemv_mma_ok(c, w2, x, ldx, n)) {
		cu_launch(c, gemv_glu_kernel, cu_div_up(w1->rows, 16), MMA_WARPS * 32, 0, (const uint16_t *)w1->data,
			  (const uint16_t *)w2->data, w1->ld, w1->rows, w1->cols, x, ldx, n, g, ld);
		return;
	}
	cu_matmul2(be, x, ldx, n, w1, g, ld, w2, u, ld);
	cu_silu_mul(be, g, ld, u, ld, n, w1->rows);
}

/* ---- matmul_heads: nh matmuls of one shape, one launch per 8 tokens ---- */

/* grid (row tiles, nh): head h's weight from tab[h], its activations at x + h*hx, its output at
 * y + h*hy; the same arithmetic as gemv_kernel (so the numbers equal nh separate matmuls'). */
template <typename T, int VEC, int RPW, int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_heads_kernel(const void *const *tab, size_t ld, int rows, int cols, const float *x, int ldx, int hx, int nt,
		  float *y, int ldy, int hy)
{
	int h = blockIdx.y, row0 = (blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5)) * RPW;
	if (row0 < rows) /* the table is written once, outside any step: readable before the wait */
		gemv_prefetch<T, RPW>((const T *)tab[h], ld, row0, rows, cols);
	cu_pdl_wait();
	if (row0 >= rows)
		return;
	const float *xs[NT];
#pragma unroll
	for (int t = 0; t < NT; t++)
		xs[t] = x + (size_t)h * hx + (size_t)min(t, nt - 1) * ldx;
	float acc[RPW][NT];
	gemv_warp<T, VEC, RPW, NT>((const T *)tab[h], ld, row0, rows, cols, xs, nt, acc);
	int lane = threadIdx.x & 31;
	float *yh = y + (size_t)h * hy;
#pragma unroll
	for (int r = 0; r < RPW; r++)
#pragma unroll
		for (int t = 0; t < NT; t++)
			if (lane == (r * NT + t) % 32 && t < nt && row0 + r < rows)
				yh[(size_t)t * ldy + row0 + r] = acc[r][t];
}

/* The tensor-core twin (bf16, fast mode, cols % 32 == 0): grid (16-row tiles, nh), 8 tokens a
 * launch, as gemv_mma_kernel. */
__global__ void __launch_bounds__(MMA_WARPS * 32)
gemv_heads_mma_kernel(const void *const *tab, size_t ld, int rows, int cols, const float *x, int ldx, int hx, int nt,
		      float *y, int ldy, int hy)
{
	__shared__ float red[MMA_WARPS][32][4];
	int h = blockIdx.y, row0 = blockIdx.x * 16;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
	const uint16_t *w = (const uint16_t *)tab[h];
	gemv_prefetch<uint16_t, 2>(w, ld, row0 + 2 * warp, rows, cols);
	cu_pdl_wait();
	float v[4];
	if (!gemv_mma_rows(w, ld, row0, rows, cols, x + (size_t)h * hx + (size_t)min(g, nt - 1) * ldx, red, v))
		return;
	float *yh = y + (size_t)h * hy;
#pragma unroll
	for (int j = 0; j < 4; j++) {
		int row = row0 + g + (j >= 2 ? 8 : 0), tok = 2 * t4 + (j & 1);
		if (row < rows && tok < nt)
			yh[(size_t)tok * ldy + row] = v[j];
	}
}

template <typename T, int VEC, int RPW, int NT>
static void heads_launch(struct cu *c, const void *const *tab, const struct eng_w *w, int nh, const float *x, int ldx,
			 int hx, int nt, float *y, int ldy, int hy)
{
	dim3 grid(cu_div_up(w->rows, GEMV_WARPS * RPW), nh);
	cu_launch(c, gemv_heads_kernel<T, VEC, RPW, NT>, grid, GEMV_WARPS * 32, 0, tab, w->ld, w->rows, w->cols, x, ldx,
		  hx, nt, y, ldy, hy);
}

template <typename T, int VEC>
static void heads_nt(struct cu *c, const void *const *tab, const struct eng_w *w, int nh, const float *x, int ldx,
		     int hx, int nt, float *y, int ldy, int hy)
{
	if (nt == 1)
		heads_launch<T, VEC, 2, 1>(c, tab, w, nh, x, ldx, hx, nt, y, ldy, hy);
	else if (nt == 2)
		heads_launch<T, VEC, 2, 2>(c, tab, w, nh, x, ldx, hx, nt, y, ldy, hy);
	else if (nt <= 4)
		heads_launch<T, VEC, 4, 4>(c, tab, w, nh, x, ldx, hx, nt, y, ldy, hy);
	else
		heads_launch<T, VEC, 4, 8>(c, tab, w, nh, x, ldx, hx, nt, y, ldy, hy);
}

/* The device table of the heads' weight pointers, made once per (host array, pointers). */
const void *const *cu_heads_table(struct cu *c, const struct eng_w *w, int nh)
{
	for (int i = 0; i < c->n_hd; i++) {
		struct cu_heads *t = &c->hd[i];
		if (t->key != w || t->nh != nh)
			continue;
		int same = 1;
		for (int h = 0; h < nh && same; h++)
			same = t->host[h] == w[h].data;
		if (same)
			return t->dev;
	}
	SH_BUG_ON(c->step.capturing); /* made by the step's eager run */
	const void **hp = (const void **)sh_malloc(sizeof(void *) * (size_t)nh), **d;
	for (int h = 0; h < nh; h++)
		hp[h] = w[h].data;
	CU_CHECK(cudaMalloc((void **)&d, sizeof(void *) * (size_t)nh));
	CU_CHECK(cudaMemcpy(d, hp, sizeof(void *) * (size_t)nh, cudaMemcpyHostToDevice));
	c->hd = (struct cu_heads *)sh_realloc(c->hd, sizeof(*c->hd) * (size_t)(c->n_hd + 1));
	c->hd[c->n_hd++] = (struct cu_heads){w, d, hp, nh};
	return d;
}

void cu_matmul_heads(struct eng_backend *be, const float *x, int ldx, int hx, int n, int nh, const struct eng_w *w,
		     float *y, int ldy, int hy)
{
	struct cu *c = CU(be);
	if (n <= 0 || nh <= 0 || w[0].rows <= 0)
		return;
	int same = 1, aligned = 1, vec = w[0].dt == ENG_DT_F32 ? 4 : 8;
	for (int h = 0; h < nh; h++) {
		same &= w[h].dt == w[0].dt && w[h].rows == w[0].rows && w[h].cols == w[0].cols && w[h].ld == w[0].ld;
		aligned &= gemv_aligned(&w[h], x + (size_t)h * hx, ldx, vec);
	}
	if (!same) { /* not one shape: one matmul per head */
		for (int h = 0; h < nh; h++)
			cu_matmul(c, x + (size_t)h * hx, ldx, n, &w[h], NULL, y + (size_t)h * hy, ldy);
		return;
	}
	const void *const *tab = cu_heads_table(c, w, nh);
	for (int t0 = 0; t0 < n; t0 += 8) {
		const float *xt = x + (size_t)t0 * ldx;
		float *yt = y + (size_t)t0 * ldy;
		int nt = SH_MIN(8, n - t0);
		if (aligned && cu_gemv_mma_ok(c, &w[0], xt, ldx, nt)) {
			cu_launch(c, gemv_heads_mma_kernel, dim3(cu_div_up(w[0].rows, 16), nh), MMA_WARPS * 32, 0, tab, w[0].ld,
				  w[0].rows, w[0].cols, xt, ldx, hx, nt, yt, ldy, hy);
			continue;
		}
		switch (w[0].dt) {
		case ENG_DT_BF16:
			if (aligned)
				heads_nt<uint16_t, 8>(c, tab, w, nh, xt, ldx, hx, nt, yt, ldy, hy);
			else
				heads_nt<uint16_t, 1>(c, tab, w, nh, xt, ldx, hx, nt, yt, ldy, hy);
			break;
		case ENG_DT_F16:
			if (aligned)
				heads_nt<cu_f16_t, 8>(c, tab, w, nh, xt, ldx, hx, nt, yt, ldy, hy);
			else
				heads_nt<cu_f16_t, 1>(c, tab, w, nh, xt, ldx, hx, nt, yt, ldy, hy);
			break;
		case ENG_DT_F32:
			if (aligned)
				heads_nt<float, 4>(c, tab, w, nh, xt, ldx, hx, nt, yt, ldy, hy);
			else
				heads_nt<float, 1>(c, tab, w, nh, xt, ldx, hx, nt, yt, ldy, hy);
			break;
		}
	}
}
