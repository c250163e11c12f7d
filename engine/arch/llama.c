/* llama.c: LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM. Pre-norm blocks: GQA attention
 * with RoPE (rotate-half), optional q/k/v (Qwen2) or all (Llama attention_bias) biases, SwiGLU MLP. */
#include <string.h>

#include "engine/model.h"

size_t eng_llama_ws(const struct eng_config *c, int T)
{
	size_t H = (size_t)c->hidden, Q = (size_t)c->n_heads * c->head_dim, KV = 2 * (size_t)c->n_kv_heads * c->head_dim;
	return (size_t)T * (H * 2 + Q * 2 + KV + 2 * (size_t)c->intermediate);
}

void eng_llama_forward(struct eng_model *m, struct eng_kv *kv, const struct eng_batch *b, float *x)
{
	const struct eng_config *c = &m->cfg;
	struct eng_backend *be = m->be;
	int n = b->n, H = c->hidden, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim, I = c->intermediate;
	int Q = nh * hd, KVR = 2 * nkv * hd;
	float *xn = m->ws + (size_t)m->opts.max_tokens * (c->hidden + c->vocab); /* (n, H) */
	float *tmp = xn + (size_t)n * H;      /* (n, H) */
	float *q = tmp + (size_t)n * H;       /* (n, nh, hd) */
	float *att = q + (size_t)n * Q;       /* (n, nh, hd) */
	float *kvr = att + (size_t)n * Q;     /* (n, [K heads | V heads]) = the cache rows */
	float *g = kvr + (size_t)n * KVR;     /* (n, I) */
	float *u = g + (size_t)n * I;         /* (n, I) */

	for (int l = 0; l < c->n_layers; l++) {
		const struct eng_layer *L = &m->layers[l];
		/* attention */
		be->rmsnorm(be, xn, H, x, H, n, H, L->attn_norm, c->rms_eps);          /* (n, H) */
		be->matmul(be, xn, H, n, &L->wq, L->bq, q, Q);                          /* (n, nh*hd) */
		be->matmul(be, xn, H, n, &L->wk, L->bk, kvr, KVR);                      /* K: (n, nkv*hd) */
		be->matmul(be, xn, H, n, &L->wv, L->bv, kvr + nkv * hd, KVR);           /* V: (n, nkv*hd) */
		be->rope(be, q, n, nh, Q, hd, b->pos, &m->rope);
		be->rope(be, kvr, n, nkv, KVR, hd, b->pos, &m->rope);
		be->kv_write(be, kv, l, b, kvr, KVR);
		be->attn_gqa(be, kv, l, b, q, nh, nkv, hd, c->softmax_scale, att);      /* (n, nh*hd) */
		be->matmul(be, att, Q, n, &L->wo, L->bo, tmp, H);                       /* (n, H) */
		be->add(be, x, tmp, (size_t)n * H);
		/* MLP */
		be->rmsnorm(be, xn, H, x, H, n, H, L->mlp_norm, c->rms_eps);           /* (n, H) */
		eng_glu(be, xn, H, n, &L->gate, &L->up, g, u, I);                       /* (n, I) */
		be->matmul(be, g, I, n, &L->down, NULL, tmp, H);                        /* (n, H) */
		be->add(be, x, tmp, (size_t)n * H);
	}
	be->rmsnorm(be, x, H, x, H, n, H, m->final_norm, c->rms_eps);
}
