/* mla_prep.cu: the absorbed MLA's prep of a step's tokens in one launch (a decode step's six small
 * kernels a layer were its critical path). Blocks [0, chunks * nh * tiles) are matmul_heads'
 * tensor-core blocks for q_lat = q_nope_h . W_UK_h^T (16 rows of head h for 8 tokens each, the same
 * arithmetic); tile 0 of a head also ropes that head's q_pe of its tokens in place and copies it to
 * q_pe_out. The last n blocks, one a token, norm the latent and rope k_pe in place, then cache the
 * row (cu_kv_store). The uk blocks read only q_nope, so roping q_pe in the same launch races with
 * nothing. Other cases (f32 or f16 weights, exact mode, unaligned) run the six ops. */
#include "engine/backend/cuda/gemv.cuh"

__global__ void __launch_bounds__(MMA_WARPS * 32)
mla_prep_kernel(const void *const *uk, size_t ld, int tiles, float *q, int nh, int dn, int dr, float *kva, int R,
		const float *kv_norm, float eps, struct eng_rope r, cu_kvdst d, const int32_t *bp, int n, int maxb,
		float *q_lat, float *q_pe)
{
	__shared__ float red[MMA_WARPS][32][4];
	__shared__ float part[32];
	int qk = dn + dr, ldq = nh * qk, half = r.dim / 2, hb = tiles * nh, chunks = (n + 7) / 8;
	if ((int)blockIdx.x < chunks * hb) {
		int t0 = blockIdx.x / hb * 8, h = blockIdx.x % hb / tiles, row0 = blockIdx.x % tiles * 16;
		int nt = min(n - t0, 8), lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
		const uint16_t *w = (const uint16_t *)uk[h]; /* the table is written outside any step */
		gemv_prefetch<uint16_t, 2>(w, ld, row0 + 2 * (threadIdx.x >> 5), R, dn);
		cu_pdl_wait();
		float *qh = q + (size_t)t0 * ldq + (size_t)h * qk, *pe = q_pe + ((size_t)t0 * nh + h) * dr;
		if (row0 == 0) { /* q_pe of head h: the pairs roped, the rest copied */
			for (int t = threadIdx.x; t < nt * half; t += blockDim.x) {
				int i = t / half;
				cu_rope_pair(qh + (size_t)i * ldq + dn, pe + (size_t)i * nh * dr, t % half, bp[t0 + i], r);
			}
			for (int t = threadIdx.x; t < nt * (dr - 2 * half); t += blockDim.x) {
				int i = t / (dr - 2 * half), e = 2 * half + t % (dr - 2 * half);
				pe[(size_t)i * nh * dr + e] = qh[(size_t)i * ldq + dn + e];
			}
		}
		float v[4];
		if (!gemv_mma_rows(w, ld, row0, R, dn, qh + (size_t)min(g, nt - 1) * ldq, red, v))
			return;
		float *y = q_lat + (size_t)t0 * nh * R + (size_t)h * R;
#pragma unroll
		for (int j = 0; j < 4; j++) {
			int row = row0 + g + (j >= 2 ? 8 : 0), tok = 2 * t4 + (j & 1);
			if (row < R && tok < nt)
				y[(size_t)tok * nh * R + row] = v[j];
		}
		return;
	}
	int i = blockIdx.x - chunks * hb;
	float *row = kva + (size_t)i * (R + dr);
	cu_pdl_wait();
	cu_rmsnorm_row(row, row, R, kv_norm, eps, part);
	for (int f = threadIdx.x; f < half; f += blockDim.x)
		cu_rope_pair(row + R, NULL, f, bp[i], r);
	__syncthreads(); /* the row's normed and roped values, written by all, read by all */
	cu_kv_store(d, bp, n, maxb, i, row);
}

void cu_mla_prep(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b, float *q, int nh,
		 int dn, int dr, float *kva, int R, const float *kv_norm, float eps, const struct eng_rope *rope,
		 const struct eng_w *uk, float *q_lat, float *q_pe_out)
{
	struct cu *c = CU(be);
	int n = b->n, qk = dn + dr;
	if (n <= 0)
		return;
	/* as matmul_heads: 8 tokens a chunk, each on the tensor cores (the last has the fewest) */
	int chunks = cu_div_up(n, 8), nt_last = n - 8 * (chunks - 1);
	int fused = nh > 0 && rope->dim <= dr && kv->shape.row_elems == R + dr;
	for (int h = 0; h < nh && fused; h++)
		fused = uk[h].rows == R && uk[h].cols == dn && uk[h].ld == uk[0].ld &&
			cu_gemv_mma_ok(c, &uk[h], q + (size_t)h * qk, nh * qk, nt_last);
	if (!fused) {
		be->rmsnorm(be, kva, R + dr, kva, R + dr, n, R, kv_norm, eps);
		be->rope(be, kva + R, n, 1, R + dr, dr, b->pos, rope);
		be->rope(be, q + dn, n, nh, nh * qk, qk, b->pos, rope);
		be->kv_write(be, kv, layer, b, kva, R + dr);
		be->matmul_heads(be, q, nh * qk, qk, n, nh, uk, q_lat, nh * R, R);
		be->copy2d(be, q_pe_out, sizeof(float) * dr, q + dn, sizeof(float) * qk, sizeof(float) * dr, (size_t)n * nh);
		return;
	}
	int maxb, tiles = cu_div_up(R, 16);
	const int32_t *bp = cu_batch(c, b, &maxb);
	const void *const *tab = cu_heads_table(c, uk, nh);
	cu_launch(c, mla_prep_kernel, chunks * tiles * nh + n, MMA_WARPS * 32, 0, tab, uk[0].ld, tiles, q, nh, dn, dr,
		  kva, R, kv_norm, eps, *rope, cu_kvdst_of(kv, layer), bp, n, maxb, q_lat, q_pe_out);
}
