/* silu_mul.cu: g (n, dim) [ldg] = silu(g) * u [ldu]; a block row per token (no 64-bit division per
 * element). */
#include "engine/backend/cuda/cu.h"

__global__ void silu_mul_kernel(float *g, int ldg, const float *u, int ldu, int n, int dim)
{
	cu_pdl_wait();
	for (int i = blockIdx.y; i < n; i += gridDim.y) {
		float *gi = g + (size_t)i * ldg;
		const float *ui = u + (size_t)i * ldu;
		for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < dim; d += gridDim.x * blockDim.x) {
			float x = gi[d];
			gi[d] = x / (1.0f + expf(-x)) * ui[d];
		}
	}
}

void cu_silu_mul(struct eng_backend *be, float *g, int ldg, const float *u, int ldu, int n, int dim)
{
	if (n <= 0 || dim <= 0)
		return;
	cu_launch(CU(be), silu_mul_kernel, dim3(cu_div_up(dim, 256), SH_MIN(n, 32768)), 256, 0, g, ldg, u, ldu, n, dim);
}
