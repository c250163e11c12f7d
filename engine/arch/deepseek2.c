/* deepseek2.c: DeepseekV2ForCausalLM. Pre-norm blocks: MLA attention (optional q LoRA, compressed
 * KV latent with its norm, decoupled RoPE key shared by all heads, YaRN), then a dense SwiGLU MLP
 * (first_k_dense_replace layers) or MoE (softmax router, greedy or group-limited top-k, shared
 * experts).
 *
 * The cache holds per token the normed latent c (R) and the roped key k_pe (dr). Attention:
 *   absorbed (decode, and batches of several sequences): q_lat_h = W_UK_h^T q_nope_h (R), scores
 *     q_lat_h . c + q_pe_h . k_pe, o_lat_h = sum p c, out_h = W_UV_h o_lat_h; each cached row is read
 *     once for all heads;
 *   naive (prefill of one sequence, context <= the workspace cap): k_nope, v for every cached
 *     position through kv_b_proj, then ordinary attention. Both give the reference's numbers. */
#include <string.h>

#include "engine/model.h"

#define NAIVE_CTX_CAP 2048

static size_t naive_ws(const struct eng_config *c, int ctx)
{
	size_t nh = (size_t)c->n_heads, qk = (size_t)c->qk_nope_dim + c->qk_rope_dim, dv = (size_t)c->v_head_dim;
	size_t R = (size_t)c->kv_lora_rank, dr = (size_t)c->qk_rope_dim;
	return (size_t)ctx * ((R + dr) + nh * ((size_t)c->qk_nope_dim + dv) + nh * qk + nh * dv);
}

size_t eng_deepseek2_ws(const struct eng_config *c, int T, int ctx)
{
	size_t H = (size_t)c->hidden, nh = (size_t)c->n_heads, qk = (size_t)c->qk_nope_dim + c->qk_rope_dim;
	size_t R = (size_t)c->kv_lora_rank, dr = (size_t)c->qk_rope_dim, dv = (size_t)c->v_head_dim;
	size_t I = (size_t)SH_MAX(c->intermediate, c->moe_intermediate * SH_MAX(c->n_shared, 1));
	size_t per_tok = H * 3 + (size_t)c->q_lora_rank + nh * qk + (R + dr) + nh * R * 2 + nh * dr + nh * dv +
			 2 * I + (size_t)c->n_routed + (size_t)SH_MAX(c->top_k, 1);
	size_t moe = c->n_routed ? eng_backend_moe_scratch(T, c->hidden, c->moe_intermediate) : 0;
	return (size_t)T * per_tok + moe + naive_ws(c, ctx);
}

/* naive prefill: one sequence whose batch ends at its last position, context within the cap */
int eng_deepseek2_naive(const struct eng_model *m, const struct eng_batch *b)
{
	const struct eng_config *c = &m->cfg;
	int naive = m->opts.mla_prefill == 2 || (m->opts.mla_prefill == 0 && b->n > 1);
	return naive && b->n_seqs == 1 && b->pos[b->n - 1] + 1 <= SH_MIN(c->max_pos, NAIVE_CTX_CAP);
}

/* y_h (n, w[h].rows) at y + h * hy = x_h (n, w[h].cols) at x + h * hx . W_h^T for the nh heads:
 * one launch where the backend has matmul_heads (rows strides ldx, ldy) */
static void heads(struct eng_backend *be, const float *x, int ldx, int hx, int n, int nh, const struct eng_w *w,
		  float *y, int ldy, int hy)
{
	if (be->matmul_heads) {
		be->matmul_heads(be, x, ldx, hx, n, nh, w, y, ldy, hy);
		return;
	}
	for (int h = 0; h < nh; h++)
		be->matmul(be, x + (size_t)h * hx, ldx, n, &w[h], NULL, y + (size_t)h * hy, ldy);
}

/* pn: x += t (if any), then xn = rmsnorm(x) * w; one pass where the backend fuses them */
static void prenorm(struct eng_backend *be, const struct eng_prenorm *pn, int n, int H)
{
	if (!pn->t) {
		be->rmsnorm(be, pn->xn, H, pn->x, H, n, H, pn->w, pn->eps);
	} else if (be->add_rmsnorm) {
		be->add_rmsnorm(be, pn->x, pn->t, pn->xn, n, H, pn->w, pn->eps);
	} else {
		be->add(be, pn->x, pn->t, (size_t)n * H);
		be->rmsnorm(be, pn->xn, H, pn->x, H, n, H, pn->w, pn->eps);
	}
}

void eng_deepseek2_forward(struct eng_model *m, struct eng_kv *kv, const struct eng_batch *b, float *x)
{
	const struct eng_config *c = &m->cfg;
	struct eng_backend *be = m->be;
	int n = b->n, H = c->hidden, nh = c->n_heads, dn = c->qk_nope_dim, dr = c->qk_rope_dim, dv = c->v_head_dim;
	int qk = dn + dr, R = c->kv_lora_rank, ql = c->q_lora_rank, E = c->n_routed, K = c->top_k;
	int I = SH_MAX(c->intermediate, c->moe_intermediate * SH_MAX(c->n_shared, 1));
	float *xn = m->ws + (size_t)m->opts.max_tokens * (c->hidden + c->vocab); /* (n, H) */
	float *tmp = xn + (size_t)n * H;          /* (n, H) */
	float *tmp2 = tmp + (size_t)n * H;        /* (n, H) */
	float *qa = tmp2 + (size_t)n * H;         /* (n, q_lora_rank) */
	float *q = qa + (size_t)n * ql;           /* (n, nh, qk) = [q_nope | q_pe] per head */
	float *kva = q + (size_t)n * nh * qk;     /* (n, R + dr) = the cache rows */
	float *qlat = kva + (size_t)n * (R + dr); /* (n, nh, R) */
	float *olat = qlat + (size_t)n * nh * R;  /* (n, nh, R) */
	float *qpe = olat + (size_t)n * nh * R;   /* (n, nh, dr) */
	float *att = qpe + (size_t)n * nh * dr;   /* (n, nh, dv) */
	float *g = att + (size_t)n * nh * dv;     /* (n, I) */
	float *u = g + (size_t)n * I;             /* (n, I) */
	float *rl = u + (size_t)n * I;            /* (n, E) router logits */
	float *wt = rl + (size_t)n * E;           /* (n, K) routing weights */
	float *moe_s = wt + (size_t)n * SH_MAX(K, 1);
	float *nv = moe_s + (E ? eng_backend_moe_scratch(n, H, c->moe_intermediate) : 0);
	int32_t *idx = m->ws_idx;                 /* (n, K) */

	int ctx = b->pos[n - 1] + 1;
	int naive = eng_deepseek2_naive(m, b);

	/* each layer's MLP output is added to x by the next norm (add_norm): pending says it waits */
	int pending = 0;
	for (int l = 0; l < c->n_layers; l++) {
		const struct eng_layer *L = &m->layers[l];
		/* attention: queries (x += the MLP's output, then the norm, xn (n, H)) */
		struct eng_prenorm pn = {x, pending ? tmp : NULL, L->attn_norm, c->rms_eps, xn};
		if (!ql && be->norm_matmul2) { /* the norm, q and the compressed KV in one launch */
			be->norm_matmul2(be, &pn, n, &L->q, q, nh * qk, &L->kv_a, kva, R + dr);
		} else {
			prenorm(be, &pn, n, H);
			if (ql) {
				be->matmul(be, xn, H, n, &L->q_a, NULL, qa, ql);              /* (n, ql) */
				be->rmsnorm(be, qa, ql, qa, ql, n, ql, L->q_a_norm, c->rms_eps);
				be->matmul(be, qa, ql, n, &L->q_b, NULL, q, nh * qk);         /* (n, nh*qk) */
			} else if (be->matmul2) { /* q and kv_a in one launch */
				be->matmul2(be, xn, H, n, &L->q, q, nh * qk, &L->kv_a, kva, R + dr);
			} else {
				be->matmul(be, xn, H, n, &L->q, NULL, q, nh * qk);            /* (n, nh*qk) */
			}
			if (ql || !be->matmul2) /* compressed KV: latent and the shared rope key */
				be->matmul(be, xn, H, n, &L->kv_a, NULL, kva, R + dr);        /* (n, R+dr) */
		}
		/* what the MLP reads first after the attention chain, which reads little: the output
		 * projection, the router, the shared experts' (or the dense MLP's) gate and up */
		if (be->prefetch) {
			const struct eng_w *pf[4] = {&L->wo};
			int np = 1;
			if (L->moe)
				pf[np++] = &L->router;
			if (!L->moe || c->n_shared)
				pf[np++] = &L->gate, pf[np++] = &L->up;
			be->prefetch(be, pf, np, n);
		}
		/* the latent normed, k_pe roped, into the cache; q_pe roped */
		int prep = !naive && be->mla_prep; /* these four ops and the absorbed path's q_lat, qpe in one */
		if (prep) {
			be->mla_prep(be, kv, l, b, q, nh, dn, dr, kva, R, L->kv_a_norm, c->rms_eps, &m->rope, L->uk_t,
				     qlat, qpe);
		} else {
			be->rmsnorm(be, kva, R + dr, kva, R + dr, n, R, L->kv_a_norm, c->rms_eps); /* c: (n, R) */
			be->rope(be, kva + R, n, 1, R + dr, dr, b->pos, &m->rope);                 /* k_pe: (n, dr) */
			be->rope(be, q + dn, n, nh, nh * qk, qk, b->pos, &m->rope);                /* q_pe in place */
			be->kv_write(be, kv, l, b, kva, R + dr);
		}

		if (naive) {
			float *cg = nv;                                   /* (ctx, R+dr) */
			float *kb = cg + (size_t)ctx * (R + dr);          /* (ctx, nh, dn+dv) */
			float *kf = kb + (size_t)ctx * nh * (dn + dv);    /* (ctx, nh, qk) */
			float *vf = kf + (size_t)ctx * nh * qk;           /* (ctx, nh, dv) */
			be->kv_gather(be, kv, l, b->seqs[0], ctx, cg);
			be->matmul(be, cg, R + dr, ctx, &L->kv_b, NULL, kb, nh * (dn + dv));
			/* reshuffle in backend memory: k = [k_nope_h | k_pe] per head, v per head */
			size_t F = sizeof(float);
			be->copy2d(be, kf, qk * F, kb, (size_t)(dn + dv) * F, dn * F, (size_t)ctx * nh);
			for (int h = 0; h < nh; h++)
				be->copy2d(be, kf + (size_t)h * qk + dn, (size_t)nh * qk * F, cg + R, (size_t)(R + dr) * F,
					   dr * F, (size_t)ctx);
			be->copy2d(be, vf, dv * F, kb + dn, (size_t)(dn + dv) * F, dv * F, (size_t)ctx * nh);
			be->attn_dense(be, q, b->pos, n, kf, vf, ctx, nh, qk, dv, c->softmax_scale, att); /* (n, nh*dv) */
		} else {
			if (!prep) { /* else mla_prep made both */
				/* q_lat_h (n, R) = q_nope_h (n, dn) . W_UK_h */
				heads(be, q, nh * qk, qk, n, nh, L->uk_t, qlat, nh * R, R);
				be->copy2d(be, qpe, sizeof(float) * dr, q + dn, sizeof(float) * qk, sizeof(float) * dr,
					   (size_t)n * nh);                                   /* (n, nh, dr) */
			}
			/* out_h (n, dv) = o_lat_h (n, R) . W_UV_h^T, o_lat (n, nh, R) the attention's */
			if (be->attn_mla_uv) {
				be->attn_mla_uv(be, kv, l, b, qlat, qpe, nh, R, dr, c->softmax_scale, olat, L->uv, att);
			} else {
				be->attn_mla(be, kv, l, b, qlat, qpe, nh, R, dr, c->softmax_scale, olat);
				heads(be, olat, nh * R, R, n, nh, L->uv, att, nh * dv, dv);
			}
		}
		be->matmul(be, att, nh * dv, n, &L->wo, NULL, tmp, H);                      /* (n, H) */

		/* MLP: x += attn, then the norm (in the router's launch where the backend fuses them); tmp =
		 * the shared experts' (or the dense MLP's) output, + the routed experts' */
		struct eng_prenorm pm = {x, tmp, L->mlp_norm, c->rms_eps, xn};
		if (L->moe) {
			struct eng_moe_route r = {E, K, c->topk_method == ENG_TOPK_GROUP_LIMITED, c->n_group,
						  c->topk_group, c->norm_topk_prob, c->routed_scaling};
			if (be->moe_router) {
				be->moe_router(be, &pm, n, &L->router, &r, rl, idx, wt);      /* (n, K) */
			} else {
				prenorm(be, &pm, n, H);
				be->matmul(be, xn, H, n, &L->router, NULL, rl, E);            /* (n, E) */
				be->moe_route(be, rl, n, &r, idx, wt);                        /* (n, K) */
			}
		} else {
			prenorm(be, &pm, n, H);
		}
		if (L->moe && c->n_shared && be->moe_ffn_shared) { /* shared + routed in the same launches */
			const struct eng_w sh[3] = {L->gate, L->up, L->down};
			be->moe_ffn_shared(be, xn, n, H, idx, wt, K, E, L->e_gate, L->e_up, L->e_down, sh, g, u, tmp, moe_s);
		} else {
			if (!L->moe || c->n_shared) {
				int Il = L->gate.rows;
				eng_glu(be, xn, H, n, &L->gate, &L->up, g, u, Il);        /* (n, Il) */
				be->matmul(be, g, Il, n, &L->down, NULL, tmp, H);           /* (n, H) */
			} else {
				be->zero(be, tmp, sizeof(float) * (size_t)n * H);
			}
			if (L->moe) /* += */
				be->moe_ffn(be, xn, n, H, idx, wt, K, E, L->e_gate, L->e_up, L->e_down, tmp, moe_s);
		}
		pending = 1;
	}
	struct eng_prenorm pf = {x, pending ? tmp : NULL, m->final_norm, c->rms_eps, x}; /* the final norm in place */
	prenorm(be, &pf, n, H);
}
