/* embed.cu: out (n, cols) = rows ids of an embedding table, converted to fp32. */
#include "engine/backend/cuda/cu.h"

template <typename T>
__global__ void embed_kernel(const T *tab, size_t ld, int cols, const int32_t *ids, float *out)
{
	cu_pdl_wait();
	const T *row = tab + (size_t)ids[blockIdx.x] * ld;
	float *o = out + (size_t)blockIdx.x * cols;
	for (int d = threadIdx.x; d < cols; d += blockDim.x) {
		float f;
		cu_wload<T, 1>::load(row + d, &f);
		o[d] = f;
	}
}

void cu_embed(struct eng_backend *be, const struct eng_w *tab, const int32_t *ids, int n, float *out)
{
	struct cu *c = CU(be);
	if (n <= 0)
		return;
	const int32_t *dids = cu_upload(c, CU_UP_IDS, ids, (size_t)n);
	switch (tab->dt) {
	case ENG_DT_F32:
		cu_launch(c, embed_kernel<float>, n, 256, 0, (const float *)tab->data, tab->ld, tab->cols, dids, out);
		break;
	case ENG_DT_BF16:
		cu_launch(c, embed_kernel<uint16_t>, n, 256, 0, (const uint16_t *)tab->data, tab->ld, tab->cols, dids, out);
		break;
	case ENG_DT_F16:
		cu_launch(c, embed_kernel<cu_f16_t>, n, 256, 0, (const cu_f16_t *)tab->data, tab->ld, tab->cols, dids, out);
		break;
	}
}
