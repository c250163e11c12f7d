/* prefetch: the hint that the next ops will read some weights (backend.h). At a decode step the
 * attention chain (MLA prep, attention over a short cache, the per-head products) reads a few MB in
 * a row of small dependent kernels: memory mostly idles while their latencies run. One warp of one
 * block asks the copy engine to bring the output projection and the MLP's first matrices into L2
 * meanwhile (cp.async.bulk.prefetch, sm_90+), up to a byte budget (KVGATE_CUDA_L2PF, MB); the GEMVs
 * that follow then read them from L2. A hint: nothing depends on it but time. */
#include <stdlib.h>

#include "engine/backend/cuda/cu.h"

#define PF_MAX 8             /* ranges a launch */
#define PF_CHUNK (32u << 10) /* bytes a prefetch instruction */
#define PF_MAXT 32           /* more tokens than this: a prefill, which streams anyway */

struct pf_list {
	const char *p[PF_MAX];
	unsigned bytes[PF_MAX]; /* multiples of 16, p 16-byte aligned; in all at most L2's size */
	int n;
};

/* Issues the prefetches before its wait (they read weights only, cu.h's rule), then waits like
 * every kernel, so that what follows it orders as before. The chunks are spread over the grid's
 * blocks, one lane a chunk: each SM's copy engine takes its share (run 27: one warp of one block
 * issuing 31.7 MB held the chain 120 us; one SM's engine moves a few hundred GB/s). */
__global__ void l2_prefetch_kernel(pf_list l)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	unsigned me = blockIdx.x * blockDim.x + threadIdx.x, all = gridDim.x * blockDim.x, base = 0;
#pragma unroll /* constant indices: the list stays in the parameter space */
	for (int i = 0; i < PF_MAX; i++) {
		unsigned nch = (l.bytes[i] + PF_CHUNK - 1) / PF_CHUNK; /* 0 past n */
		for (unsigned c = (me + all - base % all) % all; c < nch; c += all)
			cu_bulk_prefetch_l2(l.p[i] + (size_t)c * PF_CHUNK, min(PF_CHUNK, l.bytes[i] - c * PF_CHUNK));
		base += nch;
	}
#endif
	cu_pdl_wait();
}

void cu_prefetch(struct eng_backend *be, const struct eng_w *const *w, int nw, int n_tok)
{
	struct cu *c = CU(be);
	if (n_tok > PF_MAXT || !c->l2pf)
		return;
	pf_list l = {};
	size_t left = c->l2pf;
	for (int i = 0; i < nw && l.n < PF_MAX && left >= 16; i++) {
		if (!w[i]->data || w[i]->rows <= 0)
			continue;
		/* rows - 1 full strides and the last row's values; inward to 16-byte bounds */
		size_t es = eng_dtype_size(w[i]->dt);
		uintptr_t a = (uintptr_t)w[i]->data, e = a + ((size_t)(w[i]->rows - 1) * w[i]->ld + (size_t)w[i]->cols) * es;
		a = (a + 15) & ~(uintptr_t)15, e &= ~(uintptr_t)15;
		if (e <= a)
			continue;
		size_t bytes = SH_MIN((size_t)(e - a), left);
		l.p[l.n] = (const char *)a, l.bytes[l.n++] = (unsigned)bytes;
		left -= bytes;
	}
	if (!l.n)
		return;
	/* PF_SPREAD chunks a block (32 lanes): with KVGATE_CUDA_L2PF_ONE=1, one block as in run 27 */
	size_t chunks = (c->l2pf - left + PF_CHUNK - 1) / PF_CHUNK;
	static int one = -1;
	if (one < 0) {
		const char *e = getenv("KVGATE_CUDA_L2PF_ONE");
		one = e && *e == '1';
	}
	int blocks = one ? 1 : (int)SH_MIN((chunks + 31) / 32, (size_t)c->prop.multiProcessorCount);
	cu_launch(c, l2_prefetch_kernel, SH_MAX(blocks, 1), 32, 0, l);
}
