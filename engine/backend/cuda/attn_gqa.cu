/* attn_gqa.cu: attention over the paged cache in fp32 on the SIMT units: GQA, and the fallback of
 * MLA (F32 cache, exact mode, shapes the tensor-core kernel does not take).
 *
 * One block per (head, token), 4 warps; warp w takes positions w, w + 4, ... with its own online
 * softmax, lanes split the head dimensions; the warps merge at the end. The key is one or two
 * segments of the cached row (GQA: K of the kv head; MLA: latent then rope key), each with its own
 * query; the value is one segment. Elements are dequantised on the fly (cu_kv_elem). */
#include "engine/backend/cuda/cu.h"

#define SIMT_WARPS 4
#define SIMT_MAXJ 16 /* dims per lane: head dimensions up to 512 */

struct simt_args {
	const uint8_t *pool;
	size_t lbb;
	int n_layers, layer;
	const int32_t *bp; /* cu_batch */
	int n, maxb;
	cu_kvfmt f;
	const float *qa, *qb;
	int lda_tok, ldb_tok, da, db;
	int ka0, pa0, kb0, pb0, va0, pv0, dv; /* offsets of kv head 0; kv head kh adds kh * (da, 1, dv, 1) */
	int n_heads, heads_per_kv;
	float scale;
	float *out;
	int ldo_tok;
};

__global__ void __launch_bounds__(SIMT_WARPS * 32) attn_simt_kernel(simt_args a)
{
	int h = blockIdx.x, i = blockIdx.y, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	int kh = h / a.heads_per_kv;
	int ka = a.ka0 + kh * a.da, pa = a.pa0 + kh, va = a.va0 + kh * a.dv, pv = a.pv0 + kh;
	int ctx = a.bp[i] + 1, seq = a.bp[a.n + i];
	const int32_t *tab = a.bp + 2 * a.n + (size_t)seq * a.maxb;
	const float *qa = a.qa + (size_t)i * a.lda_tok + (size_t)h * a.da;
	const float *qb = a.qb ? a.qb + (size_t)i * a.ldb_tok + (size_t)h * a.db : NULL;
	float q1[SIMT_MAXJ], q2[2], o[SIMT_MAXJ];
#pragma unroll
	for (int j = 0; j < SIMT_MAXJ; j++) {
		int d = lane + 32 * j;
		q1[j] = d < a.da ? qa[d] : 0.0f;
		o[j] = 0.0f;
	}
#pragma unroll
	for (int j = 0; j < 2; j++) {
		int d = lane + 32 * j;
		q2[j] = qb && d < a.db ? qb[d] : 0.0f;
	}
	float m = -INFINITY, l = 0.0f;
	for (int p = w; p < ctx; p += SIMT_WARPS) {
		const uint8_t *lb = cu_kv_lb(a.pool, a.lbb, a.n_layers, a.layer, tab, p);
		int slot = p % ENG_KV_BLOCK_TOKENS;
		float s = 0.0f;
#pragma unroll
		for (int j = 0; j < SIMT_MAXJ; j++) {
			int d = lane + 32 * j;
			if (d < a.da)
				s += q1[j] * cu_kv_elem(a.f, lb, slot, ka + d, pa);
		}
#pragma unroll
		for (int j = 0; j < 2; j++) {
			int d = lane + 32 * j;
			if (d < a.db)
				s += q2[j] * cu_kv_elem(a.f, lb, slot, a.kb0 + d, a.pb0);
		}
		s = cu_warp_sum(s) * a.scale;
		float mn = fmaxf(m, s), al = expf(m - mn), e = expf(s - mn);
		l = l * al + e;
		m = mn;
#pragma unroll
		for (int j = 0; j < SIMT_MAXJ; j++) {
			int d = lane + 32 * j;
			if (d < a.dv)
				o[j] = o[j] * al + e * cu_kv_elem(a.f, lb, slot, va + d, pv);
		}
	}
	__shared__ float sm[SIMT_WARPS], sl[SIMT_WARPS], so[SIMT_WARPS][32 * SIMT_MAXJ];
	if (lane == 0)
		sm[w] = m, sl[w] = l;
#pragma unroll
	for (int j = 0; j < SIMT_MAXJ; j++)
		so[w][lane + 32 * j] = o[j];
	__syncthreads();
	float M = -INFINITY, L = 0.0f, f[SIMT_WARPS];
#pragma unroll
	for (int k = 0; k < SIMT_WARPS; k++)
		M = fmaxf(M, sm[k]);
#pragma unroll
	for (int k = 0; k < SIMT_WARPS; k++) {
		f[k] = sl[k] > 0.0f ? expf(sm[k] - M) : 0.0f;
		L += sl[k] * f[k];
	}
	float *out = a.out + (size_t)i * a.ldo_tok + (size_t)h * a.dv;
	for (int d = threadIdx.x; d < a.dv; d += blockDim.x) {
		float v = 0.0f;
#pragma unroll
		for (int k = 0; k < SIMT_WARPS; k++)
			v += so[k][d] * f[k];
		out[d] = v / L;
	}
}

void cu_attn_paged_simt(struct cu *c, const struct eng_kv *kv, int layer, const struct eng_batch *b, const float *qa,
			int lda_tok, int da, int ka, int pa, const float *qb, int ldb_tok, int db, int kb, int pb,
			int n_heads, int heads_per_kv, int va, int pv, int dv, float scale, float *out, int ldo_tok)
{
	SH_BUG_ON(da > 32 * SIMT_MAXJ || dv > 32 * SIMT_MAXJ || db > 64);
	simt_args a;
	a.pool = kv->pool;
	a.lbb = kv->layer_block_bytes;
	a.n_layers = kv->shape.n_layers;
	a.layer = layer;
	a.bp = cu_batch(c, b, &a.maxb);
	a.n = b->n;
	a.f = cu_kvfmt_of(kv);
	a.qa = qa, a.qb = qb, a.lda_tok = lda_tok, a.ldb_tok = ldb_tok, a.da = da, a.db = qb ? db : 0;
	a.ka0 = ka, a.pa0 = pa, a.kb0 = kb, a.pb0 = pb, a.va0 = va, a.pv0 = pv, a.dv = dv;
	a.n_heads = n_heads, a.heads_per_kv = heads_per_kv, a.scale = scale, a.out = out, a.ldo_tok = ldo_tok;
	attn_simt_kernel<<<dim3(n_heads, b->n), SIMT_WARPS * 32, 0, c->st>>>(a);
	CU_LAUNCHED();
}

void cu_attn_gqa(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		 const float *q, int n_heads, int n_kv_heads, int head_dim, float scale, float *out)
{
	if (b->n <= 0)
		return;
	/* rows: K of kv head kh at kh * hd (part kh), V at (nkv + kh) * hd (part nkv + kh) */
	cu_attn_paged_simt(CU(be), kv, layer, b, q, n_heads * head_dim, head_dim, 0, 0, NULL, 0, 0, 0, 0, n_heads,
			   n_heads / n_kv_heads, n_kv_heads * head_dim, n_kv_heads, head_dim, scale, out,
			   n_heads * head_dim);
}
