/* model.c: load a Hugging Face model directory onto a backend; run a batch (see model.h). */
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NAIVE_CTX_CAP 2048 /* longest context of the non-absorbed MLA prefill (workspace bound) */

static void own(struct eng_model *m, void *p)
{
	if (m->n_owned == m->cap_owned) {
		m->cap_owned = m->cap_owned ? m->cap_owned * 2 : 64;
		m->owned = sh_realloc(m->owned, sizeof(void *) * (size_t)m->cap_owned);
	}
	m->owned[m->n_owned++] = p;
}

static int is_cpu(const struct eng_model *m)
{
	return !strcmp(m->be->name, "cpu");
}

static float to_f32(enum eng_dtype dt, const void *p, size_t i)
{
	const uint16_t *h = p;
	return dt == ENG_DT_F32 ? ((const float *)p)[i] : dt == ENG_DT_BF16 ? eng_bf16_to_f32(h[i]) : eng_f16_to_f32(h[i]);
}

static uint16_t f32_to_f16(float f)
{
	/* round to nearest even; weights are finite and in f16 range when someone asks for f16 */
	uint32_t u;
	memcpy(&u, &f, 4);
	uint32_t sign = (u >> 16) & 0x8000;
	int exp = (int)((u >> 23) & 0xff) - 127 + 15;
	uint32_t man = u & 0x7fffff;
	if ((u & 0x7fffffff) == 0)
		return (uint16_t)sign;
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00);
	if (exp <= 0) {
		if (exp < -10)
			return (uint16_t)sign;
		man |= 0x800000;
		int shift = 14 - exp;
		uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
		if (rem > mid || (rem == mid && (half & 1)))
			half++;
		return (uint16_t)(sign | half);
	}
	uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
	uint32_t rem = man & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
		h++;
	return (uint16_t)h;
}

/* The tensor's data in backend memory, converted to dt when dt >= 0 and different. */
static const void *tensor_data(struct eng_model *m, struct eng_st_tensor *t, int dt, enum eng_dtype *out_dt)
{
	size_t n = t->nbytes / eng_dtype_size(t->dtype);
	if (dt < 0 || (enum eng_dtype)dt == t->dtype) {
		*out_dt = t->dtype;
		if (is_cpu(m))
			return t->data; /* zero copy: the map */
		void *d = m->be->alloc(m->be, t->nbytes);
		SH_BUG_ON(!d);
		m->be->to_dev(m->be, d, t->data, t->nbytes);
		own(m, d);
		return d;
	}
	size_t es = eng_dtype_size((enum eng_dtype)dt);
	void *h = sh_malloc(n * es);
	for (size_t i = 0; i < n; i++) {
		float f = to_f32(t->dtype, t->data, i);
		if (dt == ENG_DT_F32)
			((float *)h)[i] = f;
		else if (dt == ENG_DT_BF16)
			((uint16_t *)h)[i] = eng_f32_to_bf16(f);
		else
			((uint16_t *)h)[i] = f32_to_f16(f);
	}
	void *d = m->be->alloc(m->be, n * es);
	SH_BUG_ON(!d);
	m->be->to_dev(m->be, d, h, n * es);
	free(h);
	own(m, d);
	*out_dt = (enum eng_dtype)dt;
	return d;
}

static struct eng_st_tensor *need(struct eng_model *m, const char *name, int ndim, const int64_t *shape,
				  struct sh_err *err)
{
	struct eng_st_tensor *t = eng_st_find(m->st, name);
	if (!t) {
		sh_errf(err, "missing tensor %s", name);
		return NULL;
	}
	int ok = t->ndim == ndim;
	for (int d = 0; ok && d < ndim; d++)
		ok = t->shape[d] == shape[d];
	if (!ok) {
		char want[64], got[64];
		int a = 0, b = 0;
		for (int d = 0; d < ndim; d++)
			a += snprintf(want + a, sizeof(want) - (size_t)a, "%s%lld", d ? "," : "", (long long)shape[d]);
		for (int d = 0; d < t->ndim; d++)
			b += snprintf(got + b, sizeof(got) - (size_t)b, "%s%lld", d ? "," : "", (long long)t->shape[d]);
		got[b] = 0;
		sh_errf(err, "tensor %s: shape [%s], config.json implies [%s]", name, got, want);
		return NULL;
	}
	t->used = 1;
	m->weight_bytes += t->nbytes;
	return t;
}

static int get_w(struct eng_model *m, struct eng_w *w, int rows, int cols, struct sh_err *err, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
static int get_w(struct eng_model *m, struct eng_w *w, int rows, int cols, struct sh_err *err, const char *fmt, ...)
{
	char name[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	int64_t shape[2] = {rows, cols};
	struct eng_st_tensor *t = need(m, name, 2, shape, err);
	if (!t)
		return SH_ERR;
	w->data = tensor_data(m, t, m->opts.dtype, &w->dt);
	w->rows = rows;
	w->cols = cols;
	w->ld = (size_t)cols;
	return SH_OK;
}

static float *get_vec(struct eng_model *m, int n, struct sh_err *err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static float *get_vec(struct eng_model *m, int n, struct sh_err *err, const char *fmt, ...)
{
	char name[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	int64_t shape[1] = {n};
	struct eng_st_tensor *t = need(m, name, 1, shape, err);
	if (!t)
		return NULL;
	float *h = sh_malloc(sizeof(float) * (size_t)n);
	for (int i = 0; i < n; i++)
		h[i] = to_f32(t->dtype, t->data, (size_t)i);
	float *d = m->be->alloc(m->be, sizeof(float) * (size_t)n);
	SH_BUG_ON(!d);
	m->be->to_dev(m->be, d, h, sizeof(float) * (size_t)n);
	free(h);
	own(m, d);
	return d;
}

/* Per-head absorption matrices of an MLA layer: uk_t[h] (R, dn) = kv_b's K rows of head h transposed;
 * uv[h] (dv, R) = views of kv_b's V rows. Kept in kv_b's dtype (a transpose changes no value). */
static void mla_absorb(struct eng_model *m, struct eng_layer *L)
{
	const struct eng_config *c = &m->cfg;
	int nh = c->n_heads, dn = c->qk_nope_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
	size_t es = eng_dtype_size(L->kv_b.dt);
	uint8_t *host = sh_malloc((size_t)nh * (size_t)(dn + dv) * (size_t)R * es);
	m->be->to_host(m->be, host, L->kv_b.data, (size_t)nh * (size_t)(dn + dv) * (size_t)R * es);
	L->uk_t = sh_calloc((size_t)nh, sizeof(struct eng_w));
	L->uv = sh_calloc((size_t)nh, sizeof(struct eng_w));
	uint8_t *t = sh_malloc((size_t)R * (size_t)dn * es);
	for (int h = 0; h < nh; h++) {
		for (int d = 0; d < dn; d++)
			for (int r = 0; r < R; r++)
				memcpy(t + ((size_t)r * dn + d) * es, host + (((size_t)h * (dn + dv) + d) * R + r) * es, es);
		void *dev = m->be->alloc(m->be, (size_t)R * dn * es);
		SH_BUG_ON(!dev);
		m->be->to_dev(m->be, dev, t, (size_t)R * dn * es);
		own(m, dev);
		L->uk_t[h] = (struct eng_w){dev, L->kv_b.dt, R, dn, (size_t)dn};
		L->uv[h] = (struct eng_w){(const uint8_t *)L->kv_b.data + ((size_t)h * (dn + dv) + dn) * R * es,
					  L->kv_b.dt, dv, R, (size_t)R};
	}
	free(t);
	free(host);
}

static int load_experts(struct eng_model *m, struct eng_layer *L, int l, struct sh_err *err)
{
	const struct eng_config *c = &m->cfg;
	int E = c->n_routed, I = c->moe_intermediate, H = c->hidden;
	char name[256];
	L->e_gate = sh_calloc((size_t)E, sizeof(struct eng_w));
	L->e_up = sh_calloc((size_t)E, sizeof(struct eng_w));
	L->e_down = sh_calloc((size_t)E, sizeof(struct eng_w));
	snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.gate_up_proj", l);
	if (eng_st_find(m->st, name)) { /* transformers 5's fused naming */
		int64_t s1[3] = {E, 2 * I, H}, s2[3] = {E, H, I};
		struct eng_st_tensor *gu = need(m, name, 3, s1, err);
		snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.down_proj", l);
		struct eng_st_tensor *dn = gu ? need(m, name, 3, s2, err) : NULL;
		if (!dn)
			return SH_ERR;
		enum eng_dtype dt1, dt2;
		const uint8_t *p1 = tensor_data(m, gu, m->opts.dtype, &dt1), *p2 = tensor_data(m, dn, m->opts.dtype, &dt2);
		size_t e1 = eng_dtype_size(dt1), e2 = eng_dtype_size(dt2);
		for (int e = 0; e < E; e++) {
			L->e_gate[e] = (struct eng_w){p1 + (size_t)e * 2 * I * H * e1, dt1, I, H, (size_t)H};
			L->e_up[e] = (struct eng_w){p1 + ((size_t)e * 2 * I + I) * H * e1, dt1, I, H, (size_t)H};
			L->e_down[e] = (struct eng_w){p2 + (size_t)e * H * I * e2, dt2, H, I, (size_t)I};
		}
		return SH_OK;
	}
	for (int e = 0; e < E; e++)
		if (get_w(m, &L->e_gate[e], I, H, err, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e) ||
		    get_w(m, &L->e_up[e], I, H, err, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e) ||
		    get_w(m, &L->e_down[e], H, I, err, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e))
			return SH_ERR;
	return SH_OK;
}

static int load_layer(struct eng_model *m, int l, struct sh_err *err)
{
	const struct eng_config *c = &m->cfg;
	struct eng_layer *L = &m->layers[l];
	int H = c->hidden, nh = c->n_heads;
	const char *p = "model.layers";

	if (!(L->attn_norm = get_vec(m, H, err, "%s.%d.input_layernorm.weight", p, l)) ||
	    !(L->mlp_norm = get_vec(m, H, err, "%s.%d.post_attention_layernorm.weight", p, l)))
		return SH_ERR;
	if (c->arch == ENG_ARCH_LLAMA) {
		int hd = c->head_dim, nkv = c->n_kv_heads;
		if (get_w(m, &L->wq, nh * hd, H, err, "%s.%d.self_attn.q_proj.weight", p, l) ||
		    get_w(m, &L->wk, nkv * hd, H, err, "%s.%d.self_attn.k_proj.weight", p, l) ||
		    get_w(m, &L->wv, nkv * hd, H, err, "%s.%d.self_attn.v_proj.weight", p, l) ||
		    get_w(m, &L->wo, H, nh * hd, err, "%s.%d.self_attn.o_proj.weight", p, l))
			return SH_ERR;
		if (c->qkv_bias && (!(L->bq = get_vec(m, nh * hd, err, "%s.%d.self_attn.q_proj.bias", p, l)) ||
				    !(L->bk = get_vec(m, nkv * hd, err, "%s.%d.self_attn.k_proj.bias", p, l)) ||
				    !(L->bv = get_vec(m, nkv * hd, err, "%s.%d.self_attn.v_proj.bias", p, l))))
			return SH_ERR;
		if (c->o_bias && !(L->bo = get_vec(m, H, err, "%s.%d.self_attn.o_proj.bias", p, l)))
			return SH_ERR;
	} else {
		int qk = c->qk_nope_dim + c->qk_rope_dim, R = c->kv_lora_rank;
		if (c->q_lora_rank) {
			if (get_w(m, &L->q_a, c->q_lora_rank, H, err, "%s.%d.self_attn.q_a_proj.weight", p, l) ||
			    !(L->q_a_norm = get_vec(m, c->q_lora_rank, err, "%s.%d.self_attn.q_a_layernorm.weight", p, l)) ||
			    get_w(m, &L->q_b, nh * qk, c->q_lora_rank, err, "%s.%d.self_attn.q_b_proj.weight", p, l))
				return SH_ERR;
		} else if (get_w(m, &L->q, nh * qk, H, err, "%s.%d.self_attn.q_proj.weight", p, l)) {
			return SH_ERR;
		}
		if (get_w(m, &L->kv_a, R + c->qk_rope_dim, H, err, "%s.%d.self_attn.kv_a_proj_with_mqa.weight", p, l) ||
		    !(L->kv_a_norm = get_vec(m, R, err, "%s.%d.self_attn.kv_a_layernorm.weight", p, l)) ||
		    get_w(m, &L->kv_b, nh * (c->qk_nope_dim + c->v_head_dim), R, err, "%s.%d.self_attn.kv_b_proj.weight",
			  p, l) ||
		    get_w(m, &L->wo, H, nh * c->v_head_dim, err, "%s.%d.self_attn.o_proj.weight", p, l))
			return SH_ERR;
		mla_absorb(m, L);
	}
	L->moe = eng_config_layer_is_moe(c, l);
	if (L->moe) {
		int Is = c->moe_intermediate * c->n_shared;
		if (get_w(m, &L->router, c->n_routed, H, err, "%s.%d.mlp.gate.weight", p, l) || load_experts(m, L, l, err))
			return SH_ERR;
		if (c->n_shared &&
		    (get_w(m, &L->gate, Is, H, err, "%s.%d.mlp.shared_experts.gate_proj.weight", p, l) ||
		     get_w(m, &L->up, Is, H, err, "%s.%d.mlp.shared_experts.up_proj.weight", p, l) ||
		     get_w(m, &L->down, H, Is, err, "%s.%d.mlp.shared_experts.down_proj.weight", p, l)))
			return SH_ERR;
	} else {
		int I = c->intermediate;
		if (get_w(m, &L->gate, I, H, err, "%s.%d.mlp.gate_proj.weight", p, l) ||
		    get_w(m, &L->up, I, H, err, "%s.%d.mlp.up_proj.weight", p, l) ||
		    get_w(m, &L->down, H, I, err, "%s.%d.mlp.down_proj.weight", p, l))
			return SH_ERR;
	}
	return SH_OK;
}

static void progress(struct eng_model *m, int done, int total, size_t bytes)
{
	if (!m->opts.progress)
		return;
	if (isatty(2)) {
		int w = 40, f = total ? done * w / total : w;
		fprintf(stderr, "\rloading [%.*s%*s] %d/%d layers, %.2f GB", f,
			"########################################", w - f, "", done, total, bytes / 1e9);
		if (done == total)
			fputc('\n', stderr);
	} else if (done == total || done % 4 == 0) {
		fprintf(stderr, "loading: %d/%d layers, %.2f GB\n", done, total, bytes / 1e9);
	}
}

static size_t ws_floats(const struct eng_config *c, int T)
{
	size_t arch = c->arch == ENG_ARCH_LLAMA ? eng_llama_ws(c, T)
						: eng_deepseek2_ws(c, T, SH_MIN(c->max_pos, NAIVE_CTX_CAP));
	return (size_t)T * (size_t)(c->hidden + c->vocab) + arch;
}

int eng_model_load(const char *dir, const struct eng_model_opts *o, struct eng_backend *be,
		   struct eng_model **out, struct sh_err *err)
{
	struct eng_model *m = sh_calloc(1, sizeof(*m));
	const struct eng_config *c = &m->cfg;
	m->be = be;
	m->opts = *o;
	if (m->opts.max_tokens <= 0)
		m->opts.max_tokens = 256;
	if (eng_config_load(dir, &m->cfg, err) || eng_rope_init(&m->rope, &m->cfg.rope, err) ||
	    eng_st_open(dir, &m->st, err))
		goto out_free;
	if (!(m->final_norm = get_vec(m, c->hidden, err, "model.norm.weight")) ||
	    get_w(m, &m->embed, c->vocab, c->hidden, err, "model.embed_tokens.weight"))
		goto out_free;
	if (c->tie_embeddings) {
		m->lm_head = m->embed;
		struct eng_st_tensor *t = eng_st_find(m->st, "lm_head.weight");
		if (t)
			t->used = 1; /* some exports write the tied copy too */
	} else if (get_w(m, &m->lm_head, c->vocab, c->hidden, err, "lm_head.weight")) {
		goto out_free;
	}
	m->layers = sh_calloc((size_t)c->n_layers, sizeof(struct eng_layer));
	for (int l = 0; l < c->n_layers; l++) {
		if (load_layer(m, l, err))
			goto out_free;
		progress(m, l + 1, c->n_layers, m->weight_bytes);
	}
	for (int i = 0; i < m->st->n; i++) {
		const char *nm = m->st->t[i].name;
		size_t ln = strlen(nm);
		if (!m->st->t[i].used && !(ln > 19 && !strcmp(nm + ln - 19, "rotary_emb.inv_freq"))) {
			sh_errf(err, "unexpected tensor %s (not used by %s with this config.json)", nm, c->arch_name);
			goto out_free;
		}
	}
	m->ws_floats = ws_floats(c, m->opts.max_tokens);
	m->ws = be->alloc(be, m->ws_floats * sizeof(float));
	m->ws_idx = be->alloc(be, sizeof(int32_t) * (size_t)m->opts.max_tokens * (size_t)SH_MAX(c->top_k, 1));
	if (!m->ws || !m->ws_idx) {
		sh_errf(err, "cannot allocate the workspace (%zu floats)", m->ws_floats);
		goto out_free;
	}
	*out = m;
	return SH_OK;
out_free:
	eng_model_free(m);
	return SH_ERR;
}

void eng_model_free(struct eng_model *m)
{
	if (!m)
		return;
	for (int i = 0; i < m->n_owned; i++)
		m->be->release(m->be, m->owned[i]);
	free(m->owned);
	if (m->layers)
		for (int l = 0; l < m->cfg.n_layers; l++) {
			struct eng_layer *L = &m->layers[l];
			free(L->uk_t);
			free(L->uv);
			free(L->e_gate);
			free(L->e_up);
			free(L->e_down);
		}
	free(m->layers);
	if (m->ws)
		m->be->release(m->be, m->ws);
	if (m->ws_idx)
		m->be->release(m->be, m->ws_idx);
	if (m->be && m->be->step_forget)
		m->be->step_forget(m->be, m);
	eng_st_free(m->st);
	free(m);
}

void eng_model_kv_shape(const struct eng_model *m, struct eng_kv_shape *s)
{
	const struct eng_config *c = &m->cfg;
	memset(s, 0, sizeof(*s));
	s->n_layers = c->n_layers;
	if (c->arch == ENG_ARCH_DEEPSEEK2) {
		s->row_elems = c->kv_lora_rank + c->qk_rope_dim;
		s->n_parts = 2;
		s->part_off[1] = c->kv_lora_rank;
		s->part_off[2] = s->row_elems;
	} else {
		s->n_parts = 2 * c->n_kv_heads;
		s->row_elems = s->n_parts * c->head_dim;
		for (int p = 0; p <= s->n_parts; p++)
			s->part_off[p] = p * c->head_dim;
	}
}

int eng_model_forward(struct eng_model *m, struct eng_kv *kv, const struct eng_batch *b, float *logits,
		      struct sh_err *err)
{
	const struct eng_config *c = &m->cfg;
	int H = c->hidden, V = c->vocab;
	if (b->n <= 0 || b->n > m->opts.max_tokens)
		return sh_errf(err, "forward: %d tokens (1..%d per call)", b->n, m->opts.max_tokens);
	for (int i = 0; i < b->n; i++)
		if (b->ids[i] < 0 || b->ids[i] >= V || b->pos[i] < 0 || b->pos[i] >= c->max_pos)
			return sh_errf(err, "forward: token %d: id %d or position %d out of range (vocab %d, max %d)", i,
				       b->ids[i], b->pos[i], V, c->max_pos);
	float *x = m->ws;                          /* (n, H) */
	float *ldev = x + (size_t)m->opts.max_tokens * H; /* (n, V) */
	struct eng_backend *be = m->be;

	/* wanted logits: k of them; prefix when they are tokens 0..k-1 (no row moves) */
	int k = 0, prefix = 1;
	for (int i = 0; i < b->n; i++)
		if (b->want_logits ? b->want_logits[i] : i == b->n - 1)
			prefix &= k++ == i;
	/* a step the backend may record and replay: small, no row moves, and no op whose launch depends
	 * on the positions (the naive MLA prefill gathers the whole context) */
	int step = be->step_begin && b->n <= ENG_STEP_MAX_TOKENS && prefix &&
		   !(c->arch == ENG_ARCH_DEEPSEEK2 && eng_deepseek2_naive(m, b));
	int replayed = step && be->step_begin(be, b, kv, m, k);
	if (!replayed) {
		/* 1. embeddings */
		be->embed(be, &m->embed, b->ids, b->n, x);
		/* 2. the layers, then the final norm */
		if (c->arch == ENG_ARCH_LLAMA)
			eng_llama_forward(m, kv, b, x);
		else
			eng_deepseek2_forward(m, kv, b, x);
		/* 3. logits of the wanted tokens: their rows first, then one projection */
		for (int i = 0, j = 0; i < b->n; i++)
			if (b->want_logits ? b->want_logits[i] : i == b->n - 1) {
				if (j != i)
					be->to_dev(be, x + (size_t)j * H, x + (size_t)i * H, sizeof(float) * (size_t)H);
				j++;
			}
		if (k)
			be->matmul(be, x, H, k, &m->lm_head, NULL, ldev, V); /* (k, V) */
	}
	if (step)
		be->step_end(be);
	if (k)
		be->to_host(be, logits, ldev, sizeof(float) * (size_t)k * V);
	return SH_OK;
}
