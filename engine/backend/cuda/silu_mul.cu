/* silu_mul.cu: g (n, dim) [ldg] = silu(g) * u [ldu]. */
#include "engine/backend/cuda/cu.h"

__global__ void silu_mul_kernel(float *g, int ldg, const float *u, int ldu, int n, int dim)
{
	cu_pdl_wait();
	long total = (long)n * dim;
	for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x) {
		int i = (int)(t / dim), d = (int)(t % dim);
		float x = g[(size_t)i * ldg + d];
		g[(size_t)i * ldg + d] = x / (1.0f + expf(-x)) * u[(size_t)i * ldu + d];
	}
}

void cu_silu_mul(struct eng_backend *be, float *g, int ldg, const float *u, int ldu, int n, int dim)
{
	long total = (long)n * dim;
	if (total <= 0)
		return;
	int blocks = (int)SH_MIN((total + 255) / 256, 8192L);
	cu_launch(CU(be), silu_mul_kernel, blocks, 256, 0, g, ldg, u, ldu, n, dim);
}
