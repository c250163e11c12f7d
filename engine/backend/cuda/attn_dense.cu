/* attn_dense.cu: causal attention for one sequence over dense fp32 k/v (the naive MLA prefill):
 * q (n, nh, dq) at positions pos, k (ctx, nh, dq), v (ctx, nh, dv) -> out (n, nh, dv); token i sees
 * keys 0..pos[i] (n < ctx: a chunk that continues earlier positions).
 *
 * Fast path, on the tensor cores through cuBLAS (the SIMT kernel alone took 8.8 ms per call at 2048
 * tokens): q, k, v rounded to bf16; S_h (n, ctx) = scale Q_h K_h^T in fp32 for all heads by one
 * strided-batched GEMM; a softmax kernel (a block per row) masks the keys past pos[i], normalises
 * and writes P_h in bf16 (zeros where masked); O_h = P_h V_h by a second batched GEMM, fp32 into
 * out. S and P are materialised in the op's scratch (16 heads at 2048 tokens: 268 + 134 MB; more
 * heads than fit DENSE_SP_MAX_BYTES go in groups, two GEMMs per group). Both GEMMs compute the
 * whole (n, ctx) rectangle: causality is the mask's alone.
 *
 * Exact mode and devices before sm_80: the fp32 SIMT kernel, one block per (head, token), warps over
 * keys with online softmax, as attn_gqa.cu. */
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

/* ---- fast path ---- */

#define DENSE_SP_MAX_BYTES ((size_t)1 << 30) /* S and P of one GEMM batch: more heads go in groups */
#define SOFTMAX_THREADS 256

/* dst (n values, 8-byte aligned) = bf16(src) for three arrays in one launch; float4 loads when src
 * is 16-byte aligned. */
struct dense_cvt {
	const float *src[3];
	__nv_bfloat16 *dst[3];
	size_t n[3];
};

struct __align__(8) dense_bf16x4 {
	__nv_bfloat162 a, b;
};

__global__ void dense_to_bf16_kernel(dense_cvt a)
{
	size_t stride = (size_t)gridDim.x * blockDim.x, t0 = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
#pragma unroll
	for (int j = 0; j < 3; j++) {
		const float *src = a.src[j];
		__nv_bfloat16 *dst = a.dst[j];
		size_t n = a.n[j], n4 = (uintptr_t)src % 16 == 0 ? n / 4 : 0;
		for (size_t t = t0; t < n4; t += stride) {
			float4 f = ((const float4 *)src)[t];
			dense_bf16x4 o;
			o.a = __floats2bfloat162_rn(f.x, f.y);
			o.b = __floats2bfloat162_rn(f.z, f.w);
			((dense_bf16x4 *)dst)[t] = o;
		}
		for (size_t t = n4 * 4 + t0; t < n; t += stride)
			dst[t] = __float2bfloat16_rn(src[t]);
	}
}

__device__ __forceinline__ float dense_block_reduce(float v, int is_max, float *sh)
{
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	v = is_max ? cu_warp_max(v) : cu_warp_sum(v);
	if (lane == 0)
		sh[w] = v;
	__syncthreads();
	v = lane < SOFTMAX_THREADS / 32 ? sh[lane] : is_max ? -INFINITY : 0.0f;
	v = is_max ? cu_warp_max(v) : cu_warp_sum(v);
	__syncthreads(); /* sh is reused by the next reduction */
	return v;
}

/* One block per row (head of the group, token i) of S (g * n rows, stride lds): p = softmax over
 * keys 0..nk-1 (nk = min(pos[i] + 1, ctx)), zeros for keys nk..ctx-1. Each thread keeps J scores
 * in registers (keys tid + 256 j); keys past 256 J are read again from S in each pass. */
template <int J>
__global__ void __launch_bounds__(SOFTMAX_THREADS)
dense_softmax_kernel(const float *s, size_t lds, const int32_t *pos, int n, int ctx, __nv_bfloat16 *p)
{
	__shared__ float sh[SOFTMAX_THREADS / 32];
	int row = blockIdx.x, tid = threadIdx.x;
	int nk = max(min(pos[row % n] + 1, ctx), 0);
	const float *sr = s + (size_t)row * lds;
	__nv_bfloat16 *pr = p + (size_t)row * lds;
	float x[J], m = -INFINITY, l = 0.0f;
#pragma unroll
	for (int j = 0; j < J; j++) {
		int key = tid + j * SOFTMAX_THREADS;
		x[j] = key < nk ? sr[key] : -INFINITY;
		m = fmaxf(m, x[j]);
	}
	for (int key = tid + J * SOFTMAX_THREADS; key < nk; key += SOFTMAX_THREADS)
		m = fmaxf(m, sr[key]);
	m = dense_block_reduce(m, 1, sh);
#pragma unroll
	for (int j = 0; j < J; j++) {
		x[j] = tid + j * SOFTMAX_THREADS < nk ? expf(x[j] - m) : 0.0f;
		l += x[j];
	}
	for (int key = tid + J * SOFTMAX_THREADS; key < nk; key += SOFTMAX_THREADS)
		l += expf(sr[key] - m);
	l = dense_block_reduce(l, 0, sh);
	float inv = nk > 0 ? 1.0f / l : 0.0f; /* nk == 0 (a negative position): a zero row, as the CPU */
#pragma unroll
	for (int j = 0; j < J; j++) {
		int key = tid + j * SOFTMAX_THREADS;
		if (key < ctx)
			pr[key] = __float2bfloat16_rn(x[j] * inv);
	}
	for (int key = tid + J * SOFTMAX_THREADS; key < ctx; key += SOFTMAX_THREADS)
		pr[key] = __float2bfloat16_rn(key < nk ? expf(sr[key] - m) * inv : 0.0f);
}

static size_t dense_up256(size_t b)
{
	return (b + 255) & ~(size_t)255;
}

static void dense_fast(struct cu *c, const float *q, const int32_t *dpos, int n, const float *k, const float *v,
		       int ctx, int nh, int dq, int dv, float scale, float *out)
{
	/* rows of S and P: ctx rounded up to 8 elements, so that every row of P starts 16-byte aligned
	 * for the second GEMM; heads in groups of hg whose S and P fit DENSE_SP_MAX_BYTES (all of them
	 * at 16 heads and 2048 tokens: 402 MB) */
	size_t lds = ((size_t)ctx + 7) & ~(size_t)7, head_sp = (size_t)n * lds * 6;
	int hg = (int)SH_MAX((size_t)1, SH_MIN(DENSE_SP_MAX_BYTES / head_sp, (size_t)nh));
	size_t nq = (size_t)n * nh * dq, nkk = (size_t)ctx * nh * dq, nv = (size_t)ctx * nh * dv;
	size_t ns = (size_t)hg * n * lds;
	size_t oq = 0, ok = oq + dense_up256(nq * 2), ov = ok + dense_up256(nkk * 2), os = ov + dense_up256(nv * 2);
	size_t op = os + dense_up256(ns * 4);
	uint8_t *ws = (uint8_t *)cu_scratch(c, CU_SCR_OP, op + ns * 2);
	__nv_bfloat16 *qb = (__nv_bfloat16 *)(ws + oq); /* (n, nh, dq) */
	__nv_bfloat16 *kb = (__nv_bfloat16 *)(ws + ok); /* (ctx, nh, dq) */
	__nv_bfloat16 *vb = (__nv_bfloat16 *)(ws + ov); /* (ctx, nh, dv) */
	float *s = (float *)(ws + os);                  /* (hg, n, lds) */
	__nv_bfloat16 *p = (__nv_bfloat16 *)(ws + op);  /* (hg, n, lds) */

	/* 1. q, k, v to bf16 */
	dense_cvt a = {{q, k, v}, {qb, kb, vb}, {nq, nkk, nv}};
	int blocks = (int)SH_MIN(((nq + nkk + nv) / 4 + 255) / 256 + 1, (size_t)4096);
	dense_to_bf16_kernel<<<blocks, 256, 0, c->st>>>(a);
	CU_LAUNCHED();

	const float zero = 0.0f, one = 1.0f;
	for (int h0 = 0; h0 < nh; h0 += hg) {
		int g = SH_MIN(hg, nh - h0), rows = g * n;
		/* 2. S_h = scale Q_h K_h^T, row-major (n, ctx) [lds], i.e. column-major (ctx, n) = K_h Q_h^T:
		 * A = K_h, stored column-major as (dq, ctx) [nh*dq], transposed; B = Q_h, stored
		 * column-major as (dq, n) [nh*dq]; head h at + h*dq in both, S_h at + h*n*lds */
		CUBLAS_CHECK(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, ctx, n, dq, &scale,
							kb + (size_t)h0 * dq, CUDA_R_16BF, nh * dq, dq,
							qb + (size_t)h0 * dq, CUDA_R_16BF, nh * dq, dq, &zero, s,
							CUDA_R_32F, (int)lds, (long long)n * (long long)lds, g,
							CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));

		/* 3. P = softmax of each row of S, masked, bf16 */
		if (ctx <= SOFTMAX_THREADS)
			dense_softmax_kernel<1><<<rows, SOFTMAX_THREADS, 0, c->st>>>(s, lds, dpos, n, ctx, p);
		else if (ctx <= 2 * SOFTMAX_THREADS)
			dense_softmax_kernel<2><<<rows, SOFTMAX_THREADS, 0, c->st>>>(s, lds, dpos, n, ctx, p);
		else if (ctx <= 4 * SOFTMAX_THREADS)
			dense_softmax_kernel<4><<<rows, SOFTMAX_THREADS, 0, c->st>>>(s, lds, dpos, n, ctx, p);
		else
			dense_softmax_kernel<8><<<rows, SOFTMAX_THREADS, 0, c->st>>>(s, lds, dpos, n, ctx, p);
		CU_LAUNCHED();

		/* 4. O_h = P_h V_h, row-major (n, dv) [nh*dv], i.e. column-major (dv, n) = V_h^T P_h^T:
		 * A = V_h, stored column-major as (dv, ctx) [nh*dv]; B = P_h, stored column-major as
		 * (ctx, n) [lds]; C = O_h at out + h*dv, stored column-major as (dv, n) [nh*dv] */
		CUBLAS_CHECK(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, dv, n, ctx, &one,
							vb + (size_t)h0 * dv, CUDA_R_16BF, nh * dv, dv, p, CUDA_R_16BF,
							(int)lds, (long long)n * (long long)lds, &zero,
							out + (size_t)h0 * dv, CUDA_R_32F, nh * dv, dv, g,
							CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	}
}

void cu_attn_dense(struct eng_backend *be, const float *q, const int32_t *pos, int n, const float *k, const float *v,
		   int ctx, int n_heads, int dq, int dv, float scale, float *out)
{
	struct cu *c = CU(be);
	if (n <= 0)
		return;
	const int32_t *dpos = cu_upload(c, CU_UP_POS, pos, (size_t)n);
	if (!c->exact && c->prop.major >= 8 && ctx > 0) {
		dense_fast(c, q, dpos, n, k, v, ctx, n_heads, dq, dv, scale, out);
		return;
	}
	SH_BUG_ON(dq > 32 * DENSE_MAXJ || dv > 32 * DENSE_MAXJ);
	attn_dense_kernel<<<dim3(n_heads, n), DENSE_WARPS * 32, 0, c->st>>>(q, dpos, k, v, ctx, n_heads, dq, dv, scale,
									     out);
	CU_LAUNCHED();
}
