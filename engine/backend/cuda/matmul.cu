/* matmul.cu: y (n, rows) [ldy] = x (n, cols) [ldx] . W^T (+ bias).
 *   n <= 8 (decode), or exact mode: the GEMV kernel (gemv.cuh), weights streamed once per 8 tokens
 *     with 16-byte loads, fp32 activations and accumulation;
 *   n > 8: cuBLAS; F32 weights by SGEMM (no TF32), BF16/F16 by GemmEx on activations rounded to
 *     the weights' type, fp32 accumulation and output (what the bf16 tensor cores take). */
#include "engine/backend/cuda/gemv.cuh"

#define GEMV_WARPS 4

template <typename T, int VEC, int RPW, int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(const T *w, size_t ld, int rows, int cols, const float *x, int ldx, int nt, const float *bias, float *y,
	    int ldy)
{
	int row0 = (blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5)) * RPW;
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
	gemv_kernel<T, VEC, RPW, NT><<<blocks, GEMV_WARPS * 32, 0, c->st>>>((const T *)w->data, w->ld, w->rows,
									     w->cols, x, ldx, nt, bias, y, ldy);
	CU_LAUNCHED();
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

template <typename T>
__global__ void to_half_kernel(T *dst, const float *x, int ldx, int n, int cols)
{
	long total = (long)n * cols;
	for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x) {
		float v = x[(size_t)(t / cols) * ldx + t % cols];
		if constexpr (sizeof(T) == 2 && std::is_same<T, __nv_bfloat16>::value)
			dst[t] = __float2bfloat16_rn(v);
		else
			dst[t] = __float2half_rn(v);
	}
}

__global__ void bias_kernel(float *y, int ldy, int n, int rows, const float *bias)
{
	long total = (long)n * rows;
	for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x)
		y[(size_t)(t / rows) * ldy + t % rows] += bias[t % rows];
}

static void gemm(struct cu *c, const float *x, int ldx, int n, const struct eng_w *w, const float *bias, float *y,
		 int ldy)
{
	const float one = 1.0f, zero = 0.0f;
	if (w->dt == ENG_DT_F32) {
		CUBLAS_CHECK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols, &one,
					 (const float *)w->data, (int)w->ld, x, ldx, &zero, y, ldy));
	} else {
		void *xh = cu_scratch(c, CU_SCR_GEMM, (size_t)n * w->cols * 2);
		long total = (long)n * w->cols;
		int blocks = (int)SH_MIN((total + 255) / 256, 8192L);
		cudaDataType_t t = w->dt == ENG_DT_BF16 ? CUDA_R_16BF : CUDA_R_16F;
		if (w->dt == ENG_DT_BF16)
			to_half_kernel<__nv_bfloat16><<<blocks, 256, 0, c->st>>>((__nv_bfloat16 *)xh, x, ldx, n, w->cols);
		else
			to_half_kernel<__half><<<blocks, 256, 0, c->st>>>((__half *)xh, x, ldx, n, w->cols);
		CU_LAUNCHED();
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
		gemm(c, x, ldx, n, w, bias, y, ldy);
		return;
	}
	for (int t0 = 0; t0 < n; t0 += 8)
		gemv(c, w, x + (size_t)t0 * ldx, ldx, SH_MIN(8, n - t0), bias, y + (size_t)t0 * ldy, ldy);
}

void cu_matmul_op(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w, const float *bias,
		  float *y, int ldy)
{
	cu_matmul(CU(be), x, ldx, n, w, bias, y, ldy);
}
