/* kv_gather.cu: dequantised rows 0..n_tokens-1 of one sequence, out (n_tokens, row_elems) fp32
 * (the naive MLA prefill's input). One block per token. */
#include "engine/backend/cuda/cu.h"

struct kvg_parts {
	int off[ENG_KV_MAX_PARTS + 1];
};

__global__ void kv_gather_kernel(const uint8_t *pool, size_t lbb, int n_layers, int layer, const int32_t *tab,
				 cu_kvfmt f, kvg_parts parts, float *out)
{
	int p = blockIdx.x;
	const uint8_t *lb = cu_kv_lb(pool, lbb, n_layers, layer, tab, p);
	int slot = p % ENG_KV_BLOCK_TOKENS;
	float *o = out + (size_t)p * f.E;
	for (int q = 0; q < f.P; q++)
		for (int e = parts.off[q] + threadIdx.x; e < parts.off[q + 1]; e += blockDim.x)
			o[e] = cu_kv_elem(f, lb, slot, e, q);
}

void cu_kv_gather(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_kv_seq *s,
		  int n_tokens, float *out)
{
	struct cu *c = CU(be);
	if (n_tokens <= 0)
		return;
	SH_BUG_ON((n_tokens + kv->block_tokens - 1) / kv->block_tokens > s->n_blocks);
	const int32_t *tab = cu_upload(c, CU_UP_POS2, s->blocks, (size_t)s->n_blocks);
	kvg_parts parts;
	memcpy(parts.off, kv->shape.part_off, sizeof(int) * (size_t)(kv->shape.n_parts + 1));
	kv_gather_kernel<<<n_tokens, 256, 0, c->st>>>(kv->pool, kv->layer_block_bytes, kv->shape.n_layers, layer, tab,
						       cu_kvfmt_of(kv), parts, out);
	CU_LAUNCHED();
}
