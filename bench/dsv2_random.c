/* dsv2_random.c: the DeepSeek-Coder-V2-Lite shape with random bf16 weights on any backend
 * (dsv2_random.h). */
#include "bench/dsv2_random.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/config.h"

static const char *CONFIG = "{\"architectures\":[\"DeepseekV2ForCausalLM\"],\"model_type\":\"deepseek_v2\","
	"\"vocab_size\":102400,\"hidden_size\":2048,\"intermediate_size\":10944,\"moe_intermediate_size\":1408,"
	"\"num_hidden_layers\":27,\"num_attention_heads\":16,\"num_key_value_heads\":16,\"n_shared_experts\":2,"
	"\"n_routed_experts\":64,\"num_experts_per_tok\":6,\"routed_scaling_factor\":1.0,\"kv_lora_rank\":512,"
	"\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"v_head_dim\":128,\"topk_method\":\"greedy\","
	"\"n_group\":1,\"topk_group\":1,\"scoring_func\":\"softmax\",\"norm_topk_prob\":false,"
	"\"first_k_dense_replace\":1,\"moe_layer_freq\":1,\"hidden_act\":\"silu\","
	"\"max_position_embeddings\":163840,\"rms_norm_eps\":1e-06,\"attention_bias\":false,"
	"\"attention_dropout\":0.0,\"tie_word_embeddings\":false,\"bos_token_id\":100000,\"eos_token_id\":100001,"
	"\"initializer_range\":0.02,\"use_cache\":true,\"torch_dtype\":\"bfloat16\",\"q_lora_rank\":null,"
	"\"rope_theta\":10000,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,"
	"\"original_max_position_embeddings\":4096,\"beta_fast\":32,\"beta_slow\":1,\"mscale\":0.707,"
	"\"mscale_all_dim\":0.707}}";

uint16_t dsv2_hash_bf16(size_t i, unsigned long long seed, float scale)
{
	unsigned long long z = (i + seed * 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
	z ^= z >> 31;
	z *= 0x94d049bb133111ebull;
	z ^= z >> 29;
	float f = ((float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f) * scale; /* the product is exact: no FMA question */
	uint32_t u;
	memcpy(&u, &f, 4);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

int dsv2_fill_host(void *p, size_t n, unsigned long long seed, float scale)
{
	uint16_t *h = p;
	for (size_t i = 0; i < n; i++)
		h[i] = dsv2_hash_bf16(i, seed, scale);
	return 0;
}

/* What the builder allocates with: the backend, the fill, the next seed, the bytes so far. */
struct mk {
	struct eng_backend *be;
	dsv2_fill_fn fill;
	unsigned long long seed;
	double bytes;
};

static void *dev(struct mk *k, size_t bytes)
{
	void *p = k->be->alloc(k->be, bytes);
	if (!p) {
		fprintf(stderr, "out of %s memory (%zu bytes)\n", k->be->name, bytes);
		exit(2);
	}
	return p;
}

static struct eng_w W(struct mk *k, int rows, int cols)
{
	void *p = dev(k, (size_t)rows * cols * 2);
	if (k->fill(p, (size_t)rows * cols, k->seed++, 1.0f / sqrtf((float)cols))) {
		fprintf(stderr, "filling %d x %d weights failed\n", rows, cols);
		exit(2);
	}
	k->bytes += (double)rows * cols * 2;
	return (struct eng_w){p, ENG_DT_BF16, rows, cols, (size_t)cols};
}

static float *ones(struct mk *k, int n)
{
	float *h = malloc(sizeof(float) * n), *d = dev(k, sizeof(float) * n);
	for (int i = 0; i < n; i++)
		h[i] = 1.0f;
	k->be->to_dev(k->be, d, h, sizeof(float) * n);
	free(h);
	return d;
}

struct eng_model *dsv2_build(struct eng_backend *be, dsv2_fill_fn fill, int n_layers, int max_tokens,
			     double *wbytes)
{
	struct sh_err err;
	struct eng_model *m = calloc(1, sizeof(*m));
	if (eng_config_parse(CONFIG, &m->cfg, &err) || eng_rope_init(&m->rope, &m->cfg.rope, &err)) {
		fprintf(stderr, "config: %s\n", err.msg);
		exit(2);
	}
	if (n_layers > 0 && n_layers < m->cfg.n_layers)
		m->cfg.n_layers = n_layers;
	const struct eng_config *c = &m->cfg;
	struct mk k = {be, fill, 1, 0};
	m->be = be;
	m->opts = (struct eng_model_opts){.dtype = -1, .max_tokens = max_tokens};
	int H = c->hidden, nh = c->n_heads, dn = c->qk_nope_dim, dr = c->qk_rope_dim, dv = c->v_head_dim;
	int R = c->kv_lora_rank, E = c->n_routed, I = c->moe_intermediate;
	m->embed = W(&k, c->vocab, H);
	m->lm_head = W(&k, c->vocab, H);
	m->final_norm = ones(&k, H);
	m->layers = calloc(c->n_layers, sizeof(struct eng_layer));
	for (int l = 0; l < c->n_layers; l++) {
		struct eng_layer *L = &m->layers[l];
		L->attn_norm = ones(&k, H), L->mlp_norm = ones(&k, H), L->kv_a_norm = ones(&k, R);
		L->q = W(&k, nh * (dn + dr), H);
		L->kv_a = W(&k, R + dr, H);
		L->kv_b = W(&k, nh * (dn + dv), R);
		L->wo = W(&k, H, nh * dv);
		L->uk_t = calloc(nh, sizeof(struct eng_w));
		L->uv = calloc(nh, sizeof(struct eng_w));
		for (int h = 0; h < nh; h++) {
			L->uk_t[h] = W(&k, R, dn);
			L->uv[h] = (struct eng_w){(const uint16_t *)L->kv_b.data + ((size_t)h * (dn + dv) + dn) * R,
						  ENG_DT_BF16, dv, R, (size_t)R};
		}
		L->moe = eng_config_layer_is_moe(c, l);
		if (L->moe) {
			L->router = W(&k, E, H);
			L->e_gate = calloc(E, sizeof(struct eng_w));
			L->e_up = calloc(E, sizeof(struct eng_w));
			L->e_down = calloc(E, sizeof(struct eng_w));
			for (int e = 0; e < E; e++) {
				L->e_gate[e] = W(&k, I, H);
				L->e_up[e] = W(&k, I, H);
				L->e_down[e] = W(&k, H, I);
			}
			L->gate = W(&k, I * c->n_shared, H);
			L->up = W(&k, I * c->n_shared, H);
			L->down = W(&k, H, I * c->n_shared);
		} else {
			L->gate = W(&k, c->intermediate, H);
			L->up = W(&k, c->intermediate, H);
			L->down = W(&k, H, c->intermediate);
		}
	}
	m->ws_floats = (size_t)max_tokens * (c->hidden + c->vocab) + eng_deepseek2_ws(c, max_tokens, 2048);
	m->ws = dev(&k, m->ws_floats * sizeof(float));
	m->ws_idx = dev(&k, sizeof(int32_t) * max_tokens * c->top_k);
	if (wbytes)
		*wbytes = k.bytes;
	return m;
}

double dsv2_uniform_touched(const struct eng_config *c, int B)
{
	return c->n_routed * (1.0 - pow(1.0 - (double)c->top_k / c->n_routed, B));
}

double dsv2_step_weight_bytes(const struct eng_config *c, double touched)
{
	double H = c->hidden, nh = c->n_heads, R = c->kv_lora_rank, E = c->n_routed, I = c->moe_intermediate;
	double attn = nh * (c->qk_nope_dim + c->qk_rope_dim) * H + (R + c->qk_rope_dim) * H +
		      nh * R * c->qk_nope_dim * 2 + H * nh * c->v_head_dim;
	double moe = E * H + 3.0 * I * c->n_shared * H + touched * 3.0 * I * H;
	double dense = 3.0 * c->intermediate * H;
	return 2.0 * (c->n_layers * attn + dense + (c->n_layers - 1) * moe + (double)c->vocab * H);
}

int dsv2_fill_kv(struct eng_backend *be, struct eng_kv *kv, const struct eng_model *m, struct eng_kv_seq **sp,
		 int nseq, int maxB, int npos, struct sh_err *err)
{
	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	/* layer l reads the pattern from float (l % 7) * 16 on: the buffer has those 96 floats more */
	int chunk = 512, E = shape.row_elems, skew = 6 * 16;
	size_t nf = (size_t)chunk * E + skew;
	float *rows_h = malloc(sizeof(float) * nf), *rows_d = be->alloc(be, sizeof(float) * nf);
	if (!rows_h || !rows_d) {
		free(rows_h);
		if (rows_d)
			be->release(be, rows_d);
		return sh_errf(err, "no memory for the cache pattern");
	}
	for (size_t i = 0; i < nf; i++)
		rows_h[i] = (float)(((uint32_t)i * 2654435761u) % 2001) / 1000.0f - 1.0f;
	be->to_dev(be, rows_d, rows_h, sizeof(float) * nf);
	int rc = SH_OK;
	for (int s = 0; s < maxB && rc == SH_OK; s++) {
		eng_kv_seq_init(sp[s]);
		rc = eng_kv_seq_prepare(kv, sp[s], 0, npos, err);
	}
	int32_t pos[512], si[512];
	for (int s = 0; s < nseq && rc == SH_OK; s++)
		for (int p0 = 0; p0 < npos; p0 += chunk) {
			for (int i = 0; i < chunk; i++)
				pos[i] = p0 + i, si[i] = s;
			struct eng_batch b = {chunk, NULL, pos, si, sp, maxB, NULL};
			for (int l = 0; l < m->cfg.n_layers; l++)
				be->kv_write(be, kv, l, &b, rows_d + (l % 7) * 16, E);
		}
	be->release(be, rows_d);
	free(rows_h);
	return rc;
}

int dsv2_step_make(struct dsv2_step *t, const struct eng_config *c, struct eng_kv *kv, struct eng_kv_seq **sp, int B,
		   int maxB, int ctx, int st, struct sh_err *err)
{
	if (B > DSV2_MAXB || maxB > DSV2_MAXB)
		return sh_errf(err, "batch %d (of %d sequences) over %d", B, maxB, DSV2_MAXB);
	for (int s = 0; s < B; s++) {
		t->ids[s] = dsv2_token(c, s, st), t->pos[s] = ctx + st, t->seq[s] = s, t->want[s] = 1;
		int rc = eng_kv_seq_prepare(kv, sp[s], t->pos[s], 1, err);
		if (rc)
			return rc;
	}
	t->b = (struct eng_batch){B, t->ids, t->pos, t->seq, sp, maxB, t->want};
	return SH_OK;
}

void dsv2_step_done(const struct dsv2_step *t)
{
	for (int s = 0; s < t->b.n; s++)
		t->b.seqs[s]->n_tokens = t->pos[s] + 1;
}
