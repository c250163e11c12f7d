/* add.cu: y += x over n values (float4 when both are 16-byte aligned). */
#include "engine/backend/cuda/cu.h"

__global__ void add_kernel(float *y, const float *x, size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x, i0 = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
	cu_pdl_wait();
	if (((uintptr_t)y | (uintptr_t)x) % 16 == 0) {
		size_t n4 = n / 4;
		for (size_t i = i0; i < n4; i += stride) {
			float4 a = ((float4 *)y)[i], b = ((const float4 *)x)[i];
			a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
			((float4 *)y)[i] = a;
		}
		for (size_t i = n4 * 4 + i0; i < n; i += stride)
			y[i] += x[i];
	} else {
		for (size_t i = i0; i < n; i += stride)
			y[i] += x[i];
	}
}

void cu_add(struct eng_backend *be, float *y, const float *x, size_t n)
{
	if (!n)
		return;
	int blocks = (int)SH_MIN((n / 4 + 255) / 256 + 1, (size_t)4096);
	cu_launch(CU(be), add_kernel, blocks, 256, 0, y, x, n);
}
