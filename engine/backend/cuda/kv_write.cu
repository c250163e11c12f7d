/* kv_write.cu: row i of rows goes to position b->pos[i] of its sequence, encoded in the cache's
 * format as the host codec does (cu.h: cu_kv_store, which mla_prep shares). One block per token. */
#include "engine/backend/cuda/cu.h"

__global__ void kv_write_kernel(cu_kvdst d, const int32_t *bp, int n, int maxb, const float *rows, int ld)
{
	cu_pdl_wait();
	cu_kv_store(d, bp, n, maxb, blockIdx.x, rows + (size_t)blockIdx.x * ld);
}

void cu_kv_write(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b, const float *rows,
		 int ld)
{
	struct cu *c = CU(be);
	if (b->n <= 0)
		return;
	int maxb;
	const int32_t *bp = cu_batch(c, b, &maxb);
	cu_launch(c, kv_write_kernel, b->n, 256, 0, cu_kvdst_of(kv, layer), bp, b->n, maxb, rows, ld);
}
