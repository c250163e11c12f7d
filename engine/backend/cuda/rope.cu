/* rope.cu: rotates the first r->dim values of each head in place, pairs (2f, 2f+1) or halves
 * (f, f + dim/2), cos/sin of pos * inv_freq in fp32 as the CPU computes them (cu.h: cu_rope_pair). */
#include "engine/backend/cuda/cu.h"

__global__ void rope_kernel(float *x, int n, int n_heads, int ld_tok, int ld_head, const int32_t *pos,
			    struct eng_rope r)
{
	cu_pdl_wait();
	int half = r.dim / 2;
	long total = (long)n * n_heads * half;
	for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x) {
		int f = (int)(t % half), h = (int)(t / half % n_heads), i = (int)(t / half / n_heads);
		cu_rope_pair(x + (size_t)i * ld_tok + (size_t)h * ld_head, NULL, f, pos[i], r);
	}
}

void cu_rope(struct eng_backend *be, float *x, int n, int n_heads, int ld_tok, int ld_head, const int32_t *pos,
	     const struct eng_rope *r)
{
	struct cu *c = CU(be);
	if (n <= 0 || r->dim <= 0)
		return;
	/* the forward pass ropes q and k with the same positions: one upload serves both */
	const int32_t *dpos = cu_upload(c, CU_UP_POS, pos, (size_t)n);
	long total = (long)n * n_heads * (r->dim / 2);
	int blocks = (int)SH_MIN((total + 255) / 256, 4096L);
	cu_launch(c, rope_kernel, blocks, 256, 0, x, n, n_heads, ld_tok, ld_head, dpos, *r);
}
