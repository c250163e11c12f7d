/* rmsnorm.cu: y = x / rms(x) * w per row (one block a row; y may equal x); add_rmsnorm: x += t
 * first, in the same pass (the residual add before a norm). */
#include "engine/backend/cuda/cu.h"

__global__ void rmsnorm_kernel(float *y, int ldy, const float *x, int ldx, int dim, const float *w, float eps)
{
	const float *xi = x + (size_t)blockIdx.x * ldx;
	float *yi = y + (size_t)blockIdx.x * ldy;
	__shared__ float part[32];
	cu_pdl_wait();
	cu_rmsnorm_row(yi, xi, dim, w, eps, part);
}

void cu_rmsnorm(struct eng_backend *be, float *y, int ldy, const float *x, int ldx, int n, int dim, const float *w,
		float eps)
{
	if (n <= 0)
		return;
	int th = dim >= 1024 ? 512 : dim >= 256 ? 256 : 128;
	cu_launch(CU(be), rmsnorm_kernel, n, th, 0, y, ldy, x, ldx, dim, w, eps);
}

/* one block a row: x += t, the sum of squares of the new x, then y; the row's values stay in the
 * thread that read them (4 floats a step: dim % 4 == 0 and 16-byte rows, checked by the caller) */
#define ADDN_MAXV 4 /* float4s a thread keeps: dim <= 4 * 4 * 512 */
__global__ void add_rmsnorm_kernel(float *x, const float *t, float *y, int dim, const float *w, float eps)
{
	__shared__ float part[32];
	cu_pdl_wait();
	float4 *xi = (float4 *)(x + (size_t)blockIdx.x * dim);
	const float4 *ti = (const float4 *)(t + (size_t)blockIdx.x * dim);
	float4 v[ADDN_MAXV];
	float ss = 0.0f;
	int d4 = dim / 4;
#pragma unroll
	for (int j = 0; j < ADDN_MAXV; j++) {
		int k = threadIdx.x + j * blockDim.x;
		if (k < d4) {
			float4 a = xi[k], b = ti[k];
			a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
			xi[k] = a;
			v[j] = a;
			ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
		}
	}
	float inv = 1.0f / sqrtf(cu_block_sum(ss, part) / (float)dim + eps);
	float4 *yi = (float4 *)(y + (size_t)blockIdx.x * dim);
	const float4 *w4 = (const float4 *)w;
#pragma unroll
	for (int j = 0; j < ADDN_MAXV; j++) {
		int k = threadIdx.x + j * blockDim.x;
		if (k < d4) {
			float4 g = w4[k], a = v[j];
			yi[k] = make_float4(g.x * (a.x * inv), g.y * (a.y * inv), g.z * (a.z * inv), g.w * (a.w * inv));
		}
	}
}

void cu_add_rmsnorm(struct eng_backend *be, float *x, const float *t, float *y, int n, int dim, const float *w,
		    float eps)
{
	if (n <= 0)
		return;
	int th = dim >= 2048 ? 512 : dim >= 512 ? 128 : 32;
	if (dim % 4 || dim > 4 * ADDN_MAXV * th || ((uintptr_t)x | (uintptr_t)t | (uintptr_t)y | (uintptr_t)w) % 16) {
		cu_add(be, x, t, (size_t)n * dim);
		cu_rmsnorm(be, y, dim, x, dim, n, dim, w, eps);
		return;
	}
	cu_launch(CU(be), add_rmsnorm_kernel, n, th, 0, x, t, y, dim, w, eps);
}
