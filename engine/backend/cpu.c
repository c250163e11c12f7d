/* cpu.c: the CPU backend, the reference for every op (see backend.h). fp32 activations and
 * accumulation; weights F32/BF16/F16 converted a row at a time; a pthread pool splits each op over
 * output rows, (token, head) pairs or experts' rows. Inner loops are written so that GCC vectorises
 * them at -O2 (vector extensions for the dot products: float reductions need reassociation). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/pool.h"

struct cpu {
	struct eng_pool *pool;
	int nw;
	float **scratch;   /* per worker */
	size_t *scratch_n; /* floats */
};

typedef float v4 __attribute__((vector_size(16)));

static inline float dot(const float *a, const float *b, int n)
{
	v4 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
	int i = 0;
	for (; i + 16 <= n; i += 16) {
		v4 a0, a1, a2, a3, b0, b1, b2, b3;
		memcpy(&a0, a + i, 16);
		memcpy(&a1, a + i + 4, 16);
		memcpy(&a2, a + i + 8, 16);
		memcpy(&a3, a + i + 12, 16);
		memcpy(&b0, b + i, 16);
		memcpy(&b1, b + i + 4, 16);
		memcpy(&b2, b + i + 8, 16);
		memcpy(&b3, b + i + 12, 16);
		s0 += a0 * b0;
		s1 += a1 * b1;
		s2 += a2 * b2;
		s3 += a3 * b3;
	}
	v4 s = (s0 + s1) + (s2 + s3);
	float r = (s[0] + s[1]) + (s[2] + s[3]);
	for (; i < n; i++)
		r += a[i] * b[i];
	return r;
}

/* y += a * x */
static inline void axpy(float *y, float a, const float *x, int n)
{
	for (int i = 0; i < n; i++)
		y[i] += a * x[i];
}

static void row_to_f32(const struct eng_w *w, int r, float *out)
{
	int n = w->cols;
	switch (w->dt) {
	case ENG_DT_F32:
		memcpy(out, (const float *)w->data + (size_t)r * w->ld, (size_t)n * 4);
		break;
	case ENG_DT_BF16: {
		const uint16_t *s = (const uint16_t *)w->data + (size_t)r * w->ld;
		uint32_t *o = (uint32_t *)out;
		for (int i = 0; i < n; i++)
			o[i] = (uint32_t)s[i] << 16;
		break;
	}
	case ENG_DT_F16: {
		const uint16_t *s = (const uint16_t *)w->data + (size_t)r * w->ld;
		for (int i = 0; i < n; i++)
			out[i] = eng_f16_to_f32(s[i]);
		break;
	}
	}
}

static struct cpu *C(struct eng_backend *be)
{
	return be->impl;
}

/* Per-worker scratch of at least n floats; called on the calling thread before a parallel run. */
static void scratch_reserve(struct cpu *c, size_t n)
{
	for (int i = 0; i < c->nw; i++)
		if (c->scratch_n[i] < n) {
			free(c->scratch[i]);
			c->scratch[i] = sh_malloc(n * sizeof(float));
			c->scratch_n[i] = n;
		}
}

/* ---- memory ---- */

static void *cpu_alloc(struct eng_backend *be, size_t n)
{
	(void)be;
	void *p = NULL;
	if (posix_memalign(&p, 64, n ? n : 64))
		return NULL;
	memset(p, 0, n);
	return p;
}

static void cpu_release(struct eng_backend *be, void *p)
{
	(void)be;
	free(p);
}

static void cpu_copy(struct eng_backend *be, void *dst, const void *src, size_t n)
{
	(void)be;
	memmove(dst, src, n);
}

/* ---- dense ops ---- */

static void cpu_embed(struct eng_backend *be, const struct eng_w *tab, const int32_t *ids, int n, float *out)
{
	(void)be;
	for (int i = 0; i < n; i++)
		row_to_f32(tab, ids[i], out + (size_t)i * tab->cols);
}

struct mm_ctx {
	const float *x;
	int ldx, n;
	const struct eng_w *w;
	const float *bias;
	float *y;
	int ldy;
	struct cpu *c;
};

static void mm_task(void *arg, int r0, int r1, int wk)
{
	struct mm_ctx *m = arg;
	const struct eng_w *w = m->w;
	float *buf = m->c->scratch[wk];
	for (int r = r0; r < r1; r++) {
		const float *wr;
		if (w->dt == ENG_DT_F32) {
			wr = (const float *)w->data + (size_t)r * w->ld;
		} else {
			row_to_f32(w, r, buf);
			wr = buf;
		}
		float b = m->bias ? m->bias[r] : 0.0f;
		for (int i = 0; i < m->n; i++)
			m->y[(size_t)i * m->ldy + r] = dot(m->x + (size_t)i * m->ldx, wr, w->cols) + b;
	}
}

static void cpu_matmul(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w,
		       const float *bias, float *y, int ldy)
{
	struct cpu *c = C(be);
	scratch_reserve(c, (size_t)w->cols);
	struct mm_ctx m = {x, ldx, n, w, bias, y, ldy, c};
	/* grain: enough multiply-adds per chunk to pay for a hand-off */
	long work = (long)w->cols * (n > 0 ? n : 1);
	int grain = (int)(16384 / (work ? work : 1)) + 1;
	eng_pool_run(c->pool, w->rows, grain, mm_task, &m);
}

static void cpu_rmsnorm(struct eng_backend *be, float *y, int ldy, const float *x, int ldx, int n, int dim,
			const float *w, float eps)
{
	(void)be;
	for (int i = 0; i < n; i++) {
		const float *xi = x + (size_t)i * ldx;
		float *yi = y + (size_t)i * ldy;
		float ss = dot(xi, xi, dim);
		float inv = 1.0f / sqrtf(ss / (float)dim + eps);
		for (int d = 0; d < dim; d++)
			yi[d] = w[d] * (xi[d] * inv);
	}
}

static void cpu_rope(struct eng_backend *be, float *x, int n, int n_heads, int ld_tok, int ld_head,
		     const int32_t *pos, const struct eng_rope *r)
{
	(void)be;
	int half = r->dim / 2;
	float cs[256], sn[256];
	for (int i = 0; i < n; i++) {
		for (int f = 0; f < half; f++) {
			float a = (float)pos[i] * r->inv_freq[f];
			cs[f] = cosf(a) * r->mscale;
			sn[f] = sinf(a) * r->mscale;
		}
		for (int h = 0; h < n_heads; h++) {
			float *v = x + (size_t)i * ld_tok + (size_t)h * ld_head;
			if (r->interleaved) {
				for (int f = 0; f < half; f++) {
					float a = v[2 * f], b = v[2 * f + 1];
					v[2 * f] = a * cs[f] - b * sn[f];
					v[2 * f + 1] = a * sn[f] + b * cs[f];
				}
			} else {
				for (int f = 0; f < half; f++) {
					float a = v[f], b = v[f + half];
					v[f] = a * cs[f] - b * sn[f];
					v[f + half] = b * cs[f] + a * sn[f];
				}
			}
		}
	}
}

static void cpu_silu_mul(struct eng_backend *be, float *g, int ldg, const float *u, int ldu, int n, int dim)
{
	(void)be;
	for (int i = 0; i < n; i++) {
		float *gi = g + (size_t)i * ldg;
		const float *ui = u + (size_t)i * ldu;
		for (int d = 0; d < dim; d++)
			gi[d] = gi[d] / (1.0f + expf(-gi[d])) * ui[d];
	}
}

static void cpu_add(struct eng_backend *be, float *y, const float *x, size_t n)
{
	(void)be;
	for (size_t i = 0; i < n; i++)
		y[i] += x[i];
}

static void cpu_copy2d(struct eng_backend *be, void *dst, size_t dpitch, const void *src, size_t spitch,
		       size_t width, size_t rows)
{
	(void)be;
	for (size_t r = 0; r < rows; r++)
		memcpy((uint8_t *)dst + r * dpitch, (const uint8_t *)src + r * spitch, width);
}

static void cpu_zero(struct eng_backend *be, void *p, size_t bytes)
{
	(void)be;
	memset(p, 0, bytes);
}

/* ---- KV cache ---- */

static const uint8_t *kv_slot(const struct eng_kv *kv, int layer, const struct eng_kv_seq *s, int p, int *slot)
{
	int B = kv->block_tokens;
	SH_BUG_ON(p / B >= s->n_blocks);
	*slot = p % B;
	return eng_kv_block(kv, s->blocks[p / B], layer);
}

static void cpu_kv_write(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b,
			 const float *rows, int ld)
{
	(void)be;
	for (int i = 0; i < b->n; i++) {
		int slot;
		uint8_t *lb = (uint8_t *)kv_slot(kv, layer, b->seqs[b->seq_idx[i]], b->pos[i], &slot);
		eng_kv_row_store(kv, lb, slot, rows + (size_t)i * ld);
	}
}

static void cpu_kv_gather(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_kv_seq *s,
			  int n_tokens, float *out)
{
	(void)be;
	for (int p = 0; p < n_tokens; p++) {
		int slot;
		const uint8_t *lb = kv_slot(kv, layer, s, p, &slot);
		eng_kv_row_load(kv, lb, slot, out + (size_t)p * kv->shape.row_elems);
	}
}

static void softmax(float *s, int n)
{
	float mx = -INFINITY, sum = 0;
	for (int j = 0; j < n; j++)
		mx = fmaxf(mx, s[j]);
	for (int j = 0; j < n; j++) {
		s[j] = expf(s[j] - mx);
		sum += s[j];
	}
	float inv = 1.0f / sum;
	for (int j = 0; j < n; j++)
		s[j] *= inv;
}

struct gqa_ctx {
	const struct eng_kv *kv;
	int layer;
	const struct eng_batch *b;
	const float *q;
	int nh, nkv, hd;
	float scale;
	float *out;
	struct cpu *c;
};

static void gqa_task(void *arg, int i0, int i1, int wk)
{
	struct gqa_ctx *g = arg;
	float *sc = g->c->scratch[wk], *row = sc + g->c->scratch_n[wk] - g->hd;
	for (int it = i0; it < i1; it++) {
		int i = it / g->nh, h = it % g->nh, kh = h / (g->nh / g->nkv);
		const struct eng_kv_seq *s = g->b->seqs[g->b->seq_idx[i]];
		int ctx = g->b->pos[i] + 1;
		const float *q = g->q + ((size_t)i * g->nh + h) * g->hd;
		float *o = g->out + ((size_t)i * g->nh + h) * g->hd;
		for (int p = 0; p < ctx; p++) {
			int slot;
			const uint8_t *lb = kv_slot(g->kv, g->layer, s, p, &slot);
			eng_kv_part_load(g->kv, lb, slot, kh, row);
			sc[p] = dot(q, row, g->hd) * g->scale;
		}
		softmax(sc, ctx);
		memset(o, 0, sizeof(float) * (size_t)g->hd);
		for (int p = 0; p < ctx; p++) {
			int slot;
			const uint8_t *lb = kv_slot(g->kv, g->layer, s, p, &slot);
			eng_kv_part_load(g->kv, lb, slot, g->nkv + kh, row);
			axpy(o, sc[p], row, g->hd);
		}
	}
}

static int max_ctx(const struct eng_batch *b)
{
	int m = 0;
	for (int i = 0; i < b->n; i++)
		m = b->pos[i] + 1 > m ? b->pos[i] + 1 : m;
	return m;
}

static void cpu_attn_gqa(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
			 const float *q, int nh, int nkv, int hd, float scale, float *out)
{
	struct cpu *c = C(be);
	scratch_reserve(c, (size_t)max_ctx(b) + (size_t)hd);
	struct gqa_ctx g = {kv, layer, b, q, nh, nkv, hd, scale, out, c};
	eng_pool_run(c->pool, b->n * nh, 1, gqa_task, &g);
}

struct mla_ctx {
	const struct eng_kv *kv;
	int layer;
	const struct eng_batch *b;
	const float *q_lat, *q_pe;
	int nh, R, dr, hpc; /* heads per chunk */
	float scale;
	float *out;
	struct cpu *c;
};

/* One (token, chunk of heads): each cached row is decoded once for all heads of the chunk. */
static void mla_task(void *arg, int i0, int i1, int wk)
{
	struct mla_ctx *m = arg;
	int nch = (m->nh + m->hpc - 1) / m->hpc, R = m->R, dr = m->dr;
	for (int it = i0; it < i1; it++) {
		int i = it / nch, h0 = (it % nch) * m->hpc, h1 = SH_MIN(h0 + m->hpc, m->nh);
		const struct eng_kv_seq *s = m->b->seqs[m->b->seq_idx[i]];
		int ctx = m->b->pos[i] + 1;
		float *row = m->c->scratch[wk], *sc = row + R + dr; /* sc: (heads of chunk, ctx) */
		for (int p = 0; p < ctx; p++) {
			int slot;
			const uint8_t *lb = kv_slot(m->kv, m->layer, s, p, &slot);
			eng_kv_row_load(m->kv, lb, slot, row);
			for (int h = h0; h < h1; h++) {
				const float *ql = m->q_lat + ((size_t)i * m->nh + h) * R;
				const float *qp = m->q_pe + ((size_t)i * m->nh + h) * dr;
				sc[(size_t)(h - h0) * ctx + p] = (dot(ql, row, R) + dot(qp, row + R, dr)) * m->scale;
			}
		}
		for (int h = h0; h < h1; h++) {
			softmax(sc + (size_t)(h - h0) * ctx, ctx);
			memset(m->out + ((size_t)i * m->nh + h) * R, 0, sizeof(float) * (size_t)R);
		}
		for (int p = 0; p < ctx; p++) {
			int slot;
			const uint8_t *lb = kv_slot(m->kv, m->layer, s, p, &slot);
			eng_kv_part_load(m->kv, lb, slot, 0, row);
			for (int h = h0; h < h1; h++)
				axpy(m->out + ((size_t)i * m->nh + h) * R, sc[(size_t)(h - h0) * ctx + p], row, R);
		}
	}
}

static void cpu_attn_mla(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
			 const float *q_lat, const float *q_pe, int nh, int R, int dr, float scale, float *out)
{
	struct cpu *c = C(be);
	/* split heads only as far as the threads need: fewer chunks, fewer decodes of each row */
	int chunks = b->n >= c->nw ? 1 : SH_MIN(nh, (c->nw + b->n - 1) / b->n);
	int hpc = (nh + chunks - 1) / chunks;
	scratch_reserve(c, (size_t)R + (size_t)dr + (size_t)hpc * (size_t)max_ctx(b));
	struct mla_ctx m = {kv, layer, b, q_lat, q_pe, nh, R, dr, hpc, scale, out, c};
	eng_pool_run(c->pool, b->n * ((nh + hpc - 1) / hpc), 1, mla_task, &m);
}

struct dense_ctx {
	const float *q, *k, *v;
	const int32_t *pos;
	int ctx, nh, dq, dv;
	float scale;
	float *out;
	struct cpu *c;
};

static void dense_task(void *arg, int i0, int i1, int wk)
{
	struct dense_ctx *d = arg;
	float *sc = d->c->scratch[wk];
	for (int it = i0; it < i1; it++) {
		int i = it / d->nh, h = it % d->nh, n = SH_MIN(d->pos[i] + 1, d->ctx);
		const float *q = d->q + ((size_t)i * d->nh + h) * d->dq;
		for (int p = 0; p < n; p++)
			sc[p] = dot(q, d->k + ((size_t)p * d->nh + h) * d->dq, d->dq) * d->scale;
		softmax(sc, n);
		float *o = d->out + ((size_t)i * d->nh + h) * d->dv;
		memset(o, 0, sizeof(float) * (size_t)d->dv);
		for (int p = 0; p < n; p++)
			axpy(o, sc[p], d->v + ((size_t)p * d->nh + h) * d->dv, d->dv);
	}
}

static void cpu_attn_dense(struct eng_backend *be, const float *q, const int32_t *pos, int n, const float *k,
			   const float *v, int ctx, int nh, int dq, int dv, float scale, float *out)
{
	struct cpu *c = C(be);
	scratch_reserve(c, (size_t)ctx);
	struct dense_ctx d = {q, k, v, pos, ctx, nh, dq, dv, scale, out, c};
	eng_pool_run(c->pool, n * nh, 1, dense_task, &d);
}

/* ---- MoE ---- */

static void cpu_moe_route(struct eng_backend *be, const float *logits, int n, const struct eng_moe_route *r,
			  int32_t *idx, float *wt)
{
	(void)be;
	int E = r->n_experts, K = r->top_k;
	float *p = sh_malloc(sizeof(float) * (size_t)E * 2);
	float *masked = p + E;
	for (int i = 0; i < n; i++) {
		memcpy(p, logits + (size_t)i * E, sizeof(float) * (size_t)E);
		softmax(p, E);
		memcpy(masked, p, sizeof(float) * (size_t)E);
		if (r->group_limited && r->n_group > 1) {
			int per = E / r->n_group;
			float gs[256];
			int keep[256] = {0};
			for (int g = 0; g < r->n_group; g++) {
				gs[g] = -INFINITY;
				for (int e = g * per; e < (g + 1) * per; e++)
					gs[g] = fmaxf(gs[g], p[e]);
			}
			for (int t = 0; t < r->topk_group; t++) {
				int best = -1;
				for (int g = 0; g < r->n_group; g++)
					if (!keep[g] && (best < 0 || gs[g] > gs[best]))
						best = g;
				keep[best] = 1;
			}
			for (int e = 0; e < E; e++)
				if (!keep[e / per])
					masked[e] = 0.0f;
		}
		float sum = 0;
		for (int k = 0; k < K; k++) {
			int best = -1;
			for (int e = 0; e < E; e++)
				if (masked[e] >= 0 && (best < 0 || masked[e] > masked[best]))
					best = e;
			idx[(size_t)i * K + k] = best;
			wt[(size_t)i * K + k] = p[best];
			sum += p[best];
			masked[best] = -1.0f;
		}
		/* DeepSeek-V2: normalise (top_k > 1 and norm_topk_prob) or scale, as its modeling code */
		for (int k = 0; k < K; k++) {
			if (K > 1 && r->norm_topk_prob)
				wt[(size_t)i * K + k] /= sum + 1e-20f;
			else
				wt[(size_t)i * K + k] *= r->routed_scaling;
		}
	}
	free(p);
}

static void cpu_moe_ffn(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx,
			const float *wt, int K, int E, const struct eng_w *gate, const struct eng_w *up,
			const struct eng_w *down, float *out, float *scratch)
{
	int inter = gate[0].rows;
	float *xg = scratch, *yg = xg + (size_t)n * dim, *g = yg + (size_t)n * dim, *u = g + (size_t)n * inter;
	float *wsel = u + (size_t)n * inter, *tsel = wsel + n;
	for (int e = 0; e < E; e++) {
		int m = 0;
		for (int i = 0; i < n; i++)
			for (int k = 0; k < K; k++)
				if (idx[(size_t)i * K + k] == e) {
					memcpy(xg + (size_t)m * dim, x + (size_t)i * dim, sizeof(float) * (size_t)dim);
					wsel[m] = wt[(size_t)i * K + k];
					tsel[m] = (float)i;
					m++;
				}
		if (!m)
			continue;
		cpu_matmul(be, xg, dim, m, &gate[e], NULL, g, inter);     /* (m, inter) */
		cpu_matmul(be, xg, dim, m, &up[e], NULL, u, inter);       /* (m, inter) */
		cpu_silu_mul(be, g, inter, u, inter, m, inter);
		cpu_matmul(be, g, inter, m, &down[e], NULL, yg, dim);     /* (m, dim) */
		for (int j = 0; j < m; j++)
			axpy(out + (size_t)tsel[j] * dim, wsel[j], yg + (size_t)j * dim, dim);
	}
}

/* ---- lifecycle ---- */

static void cpu_free(struct eng_backend *be)
{
	if (!be)
		return;
	struct cpu *c = be->impl;
	for (int i = 0; i < c->nw; i++)
		free(c->scratch[i]);
	free(c->scratch);
	free(c->scratch_n);
	eng_pool_free(c->pool);
	free(c);
	free(be);
}

struct eng_backend *eng_cpu_new(int n_threads)
{
	struct eng_backend *be = sh_calloc(1, sizeof(*be));
	struct cpu *c = sh_calloc(1, sizeof(*c));
	c->pool = eng_pool_new(n_threads);
	c->nw = eng_pool_size(c->pool);
	c->scratch = sh_calloc((size_t)c->nw, sizeof(float *));
	c->scratch_n = sh_calloc((size_t)c->nw, sizeof(size_t));
	be->name = "cpu";
	be->impl = c;
	be->free = cpu_free;
	be->alloc = cpu_alloc;
	be->release = cpu_release;
	be->to_dev = cpu_copy;
	be->to_host = cpu_copy;
	be->embed = cpu_embed;
	be->matmul = cpu_matmul;
	be->rmsnorm = cpu_rmsnorm;
	be->rope = cpu_rope;
	be->silu_mul = cpu_silu_mul;
	be->add = cpu_add;
	be->copy2d = cpu_copy2d;
	be->zero = cpu_zero;
	be->kv_write = cpu_kv_write;
	be->kv_gather = cpu_kv_gather;
	be->attn_gqa = cpu_attn_gqa;
	be->attn_mla = cpu_attn_mla;
	be->attn_dense = cpu_attn_dense;
	be->moe_route = cpu_moe_route;
	be->moe_ffn = cpu_moe_ffn;
	return be;
}
