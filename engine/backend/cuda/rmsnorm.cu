/* rmsnorm.cu: y = x / rms(x) * w per row (one block a row; y may equal x). */
#include "engine/backend/cuda/cu.h"

__global__ void rmsnorm_kernel(float *y, int ldy, const float *x, int ldx, int dim, const float *w, float eps)
{
	const float *xi = x + (size_t)blockIdx.x * ldx;
	float *yi = y + (size_t)blockIdx.x * ldy;
	__shared__ float part[32];
	cu_pdl_wait();
	float ss = 0;
	for (int d = threadIdx.x; d < dim; d += blockDim.x)
		ss += xi[d] * xi[d];
	ss = cu_warp_sum(ss);
	if ((threadIdx.x & 31) == 0)
		part[threadIdx.x >> 5] = ss;
	__syncthreads();
	if (threadIdx.x < 32) {
		float v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
		v = cu_warp_sum(v);
		if (threadIdx.x == 0)
			part[0] = v;
	}
	__syncthreads();
	float inv = 1.0f / sqrtf(part[0] / (float)dim + eps);
	for (int d = threadIdx.x; d < dim; d += blockDim.x)
		yi[d] = w[d] * (xi[d] * inv);
}

void cu_rmsnorm(struct eng_backend *be, float *y, int ldy, const float *x, int ldx, int n, int dim, const float *w,
		float eps)
{
	if (n <= 0)
		return;
	int th = dim >= 1024 ? 512 : dim >= 256 ? 256 : 128;
	cu_launch(CU(be), rmsnorm_kernel, n, th, 0, y, ldy, x, ldx, dim, w, eps);
}
