/* backend.h: the compute backend, a table of function pointers (STYLE.md rule 3). The CPU backend
 * (backend/cpu.c) is the reference; CUDA implements the same table. All pointers to activations,
 * weights and the KV pool are in the backend's memory; ids/positions/block tables are host arrays
 * (a device backend uploads them). Activations are fp32; weights F32/BF16/F16; accumulation fp32.
 * Every op is synchronous from the caller's view (a device backend may queue, and syncs in to_host). */
#ifndef ENG_BACKEND_H
#define ENG_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kv.h"
#include "rope.h"
#include "st.h"

/* A 2-D weight, (rows = out features, cols = in features), row-major, in backend memory. */
struct eng_w {
	const void *data;
	enum eng_dtype dt;
	int rows, cols;
	size_t ld;  /* elements between rows (>= cols); views into fused tensors use it */
};

/* The start of a fused op that begins with a residual add and a norm (norm_matmul2, moe_router):
 * x (n, dim) += t (t NULL: nothing added), then xn = x / rms(x) * w, which the op uses and stores
 * (a later op reads it). */
struct eng_prenorm {
	float *x;
	const float *t;
	const float *w;
	float eps;
	float *xn;
};

struct eng_moe_route {
	int n_experts, top_k;
	int group_limited, n_group, topk_group;
	int norm_topk_prob;
	float routed_scaling;
};

struct eng_backend {
	const char *name;
	void *impl;
	void (*free)(struct eng_backend *be);

	/* memory */
	void *(*alloc)(struct eng_backend *be, size_t bytes);           /* zeroed; NULL on failure */
	void (*release)(struct eng_backend *be, void *p);
	void (*to_dev)(struct eng_backend *be, void *dst, const void *src, size_t bytes);
	void (*to_host)(struct eng_backend *be, void *dst, const void *src, size_t bytes);

	/* out (n, w.cols) = rows ids of an embedding table */
	void (*embed)(struct eng_backend *be, const struct eng_w *tab, const int32_t *ids, int n, float *out);
	/* y (n, w.rows) [row stride ldy] = x (n, w.cols) [row stride ldx] . W^T (+ bias (w.rows)) */
	void (*matmul)(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w,
		       const float *bias, float *y, int ldy);
	/* y (n, dim) = x / rms(x) * w; rows strided; y may equal x */
	void (*rmsnorm)(struct eng_backend *be, float *y, int ldy, const float *x, int ldx, int n, int dim,
			const float *w, float eps);
	/* rotates the first r->dim values of each head, in place: head h of token i at x + i*ld_tok + h*ld_head */
	void (*rope)(struct eng_backend *be, float *x, int n, int n_heads, int ld_tok, int ld_head,
		     const int32_t *pos, const struct eng_rope *r);
	/* g (n, dim) [stride ldg] = silu(g) * u [stride ldu] */
	void (*silu_mul)(struct eng_backend *be, float *g, int ldg, const float *u, int ldu, int n, int dim);
	/* y += x, n values */
	void (*add)(struct eng_backend *be, float *y, const float *x, size_t n);
	/* rows x width bytes from src (row pitch spitch) to dst (pitch dpitch), both backend memory;
	 * the regions do not overlap (the forward pass's gathers: q_pe out of q, the naive MLA prefill's
	 * k/v reshuffle) */
	void (*copy2d)(struct eng_backend *be, void *dst, size_t dpitch, const void *src, size_t spitch,
		       size_t width, size_t rows);
	/* bytes of backend memory at p set to 0 */
	void (*zero)(struct eng_backend *be, void *p, size_t bytes);

	/* writes row i (rows + i*ld, kv->shape.row_elems values) at b->pos[i] of its sequence; the
	 * blocks must have been prepared (eng_kv_seq_prepare) */
	void (*kv_write)(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b,
			 const float *rows, int ld);
	/* dequantised rows 0..n_tokens-1 of one sequence: out (n_tokens, row_elems) */
	void (*kv_gather)(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_kv_seq *s,
			  int n_tokens, float *out);
	/* GQA over the paged cache (rows: K heads then V heads): q (n, n_heads, head_dim) -> out (same) */
	void (*attn_gqa)(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
			 const float *q, int n_heads, int n_kv_heads, int head_dim, float scale, float *out);
	/* MLA in latent space over the paged cache (rows: latent (R) then roped key (dr)):
	 * q_lat (n, n_heads, R), q_pe (n, n_heads, dr) -> out (n, n_heads, R) = softmax(scale *
	 * (q_lat.c + q_pe.k_pe)) . c; every cached row is read once per token for all heads */
	void (*attn_mla)(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
			 const float *q_lat, const float *q_pe, int n_heads, int R, int dr, float scale, float *out);
	/* dense causal attention for one sequence: q (n, nh, dq) at positions pos, k (ctx, nh, dq),
	 * v (ctx, nh, dv) -> out (n, nh, dv); token i sees keys 0..pos[i] */
	void (*attn_dense)(struct eng_backend *be, const float *q, const int32_t *pos, int n, const float *k,
			   const float *v, int ctx, int n_heads, int dq, int dv, float scale, float *out);

	/* router: logits (n, E) -> idx (n, top_k), weights (n, top_k) on the host side of the backend */
	void (*moe_route)(struct eng_backend *be, const float *logits, int n, const struct eng_moe_route *r,
			  int32_t *idx, float *wt);
	/* out (n, dim) += sum_k wt[i,k] * expert_{idx[i,k]}(x_i); experts: SwiGLU with gate/up (inter, dim)
	 * and down (dim, inter); scratch: backend memory of eng_backend_moe_scratch floats */
	void (*moe_ffn)(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx,
			const float *wt, int top_k, int n_experts, const struct eng_w *gate, const struct eng_w *up,
			const struct eng_w *down, float *out, float *scratch);

	/* ---- optional: NULL where the backend has none (the CPU); callers fall back ---- */

	/* nh matmuls of one shape in one call: for h < nh, y_h (n, w[h].rows) at y + h*hy [row stride
	 * ldy] = x_h (n, w[h].cols) at x + h*hx [row stride ldx] . W_h^T. Every w[h] has the same rows,
	 * cols, ld and dtype (the MLA absorption's per-head matrices). NULL: nh calls of matmul. */
	void (*matmul_heads)(struct eng_backend *be, const float *x, int ldx, int hx, int n, int nh,
			     const struct eng_w *w, float *y, int ldy, int hy);
	/* y1 (n, w1.rows) [ldy1] = x . W1^T and y2 (n, w2.rows) [ldy2] = x . W2^T, one input (x (n, cols)
	 * [ldx], w1.cols == w2.cols, same dtype): a decode step's q_proj and kv_a_proj, or gate and up,
	 * in one launch. NULL: two calls of matmul. */
	void (*matmul2)(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1, float *y1,
			int ldy1, const struct eng_w *w2, float *y2, int ldy2);
	/* x (n, dim) += t (n, dim), then y (n, dim) = x / rms(x) * w (y may equal x): a residual add and
	 * the next norm in one pass. NULL: add, then rmsnorm. */
	void (*add_rmsnorm)(struct eng_backend *be, float *x, const float *t, float *y, int n, int dim, const float *w,
			    float eps);
	/* g (n, w1.rows) [ld] = silu(x . W1^T) * (x . W2^T): the SwiGLU MLP's gate, up and product in
	 * one pass (w1, w2 of one shape and dtype); u (n, w2.rows) [ld] is scratch for a backend that
	 * makes them apart. NULL: matmul2 (or two matmuls), then silu_mul. */
	void (*glu)(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1,
		    const struct eng_w *w2, float *g, float *u, int ld);
	/* pn's add and norm (x (n, w.cols)), logits (n, w.rows) = xn . W^T, then moe_route's selection
	 * into idx and wt, in one pass. NULL: add_rmsnorm (or rmsnorm), matmul, then moe_route. */
	void (*moe_router)(struct eng_backend *be, const struct eng_prenorm *pn, int n, const struct eng_w *w,
			   const struct eng_moe_route *r, float *logits, int32_t *idx, float *wt);
	/* pn's add and norm (x (n, w1.cols)), then y1 (n, w1.rows) [ldy1] = xn . W1^T and y2 = xn . W2^T
	 * (as matmul2), in one pass: a decode step's first projections of a block. NULL: add_rmsnorm
	 * (or rmsnorm), then matmul2. */
	void (*norm_matmul2)(struct eng_backend *be, const struct eng_prenorm *pn, int n, const struct eng_w *w1,
			     float *y1, int ldy1, const struct eng_w *w2, float *y2, int ldy2);
	/* The absorbed MLA's prep of a step's rows in one pass: kva (n, R + dr) = [latent | k_pe] per
	 * token: the latent normed (weights kv_norm, eps), k_pe roped at b->pos, both in place, then the
	 * row cached at layer (as kv_write); q (n, nh, dn + dr): each head's q_pe roped in place;
	 * q_lat (n, nh, R) = q_nope_h . uk[h]^T (uk[h]: R rows, dn cols, as matmul_heads); q_pe_out
	 * (n, nh, dr) = the roped q_pe. NULL: rmsnorm, rope, rope, kv_write, matmul_heads, copy2d. */
	void (*mla_prep)(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b, float *q,
			 int nh, int dn, int dr, float *kva, int R, const float *kv_norm, float eps,
			 const struct eng_rope *rope, const struct eng_w *uk, float *q_lat, float *q_pe_out);
	/* attn_mla into out (n, nh, R), then att (n, nh * dv) = each head's out through its uv matrix
	 * (as matmul_heads with uv[h] (dv rows, R cols), head h at att + h * dv, row stride nh * dv),
	 * in one op: a backend may merge the context splits inside the uv products and leave out
	 * unwritten. NULL: attn_mla, then matmul_heads. */
	void (*attn_mla_uv)(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
			    const float *q_lat, const float *q_pe, int nh, int R, int dr, float scale, float *out,
			    const struct eng_w *uv, float *att);
	/* out (n, dim) = shared(x) + moe_ffn's sum (out's contents are not read): the shared experts'
	 * SwiGLU (sh: gate, up (Is, dim), down (dim, Is)) in the routed experts' launches; g, u (n, Is):
	 * scratch. NULL: glu and matmul into out, then moe_ffn. */
	void (*moe_ffn_shared)(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx,
			       const float *wt, int top_k, int n_experts, const struct eng_w *gate,
			       const struct eng_w *up, const struct eng_w *down, const struct eng_w *sh, float *g,
			       float *u, float *out, float *scratch);
	/* A hint with no result: the ops issued next will read the weights w[0 .. nw - 1], in that
	 * order, after ops that read little (a decode step's attention chain: the MLA prep, the
	 * attention over the cache, the per-head products). A backend may start moving them closer
	 * meanwhile (CUDA: into L2), so that memory streams while that chain's latency runs. n_tok:
	 * the step's tokens (a prefill streams anyway; a backend may ignore the hint there). NULL:
	 * nothing. */
	void (*prefetch)(struct eng_backend *be, const struct eng_w *const *w, int nw, int n_tok);
	/* Whole-step recording (CUDA graphs). The forward pass calls step_begin before its first op of a
	 * step whose op sequence depends only on (owner, kv, b->n, the block-table length, variant), never
	 * on the values of ids, positions or tables; then, when step_begin returned 0, it issues every op
	 * of the step and calls step_end, which may record them; when it returned 1 the backend has
	 * replayed the recorded step with this batch's ids, positions and tables, and the caller issues
	 * nothing before step_end. Inside a step no op may read device data on the host or allocate.
	 * b, its arrays and kv must stay unchanged until step_end. */
	int (*step_begin)(struct eng_backend *be, const struct eng_batch *b, const struct eng_kv *kv,
			  const void *owner, int variant);
	void (*step_end)(struct eng_backend *be);
	/* Drops every recording made for owner (a model being freed: its buffers' addresses are baked in). */
	void (*step_forget)(struct eng_backend *be, const void *owner);
};

/* The SwiGLU's g = silu(x . W1^T) * (x . W2^T) with whatever the backend has: glu, or matmul2 or
 * two matmuls, then silu_mul (u: scratch of g's shape). */
static inline void eng_glu(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1,
			   const struct eng_w *w2, float *g, float *u, int ld)
{
	if (be->glu) {
		be->glu(be, x, ldx, n, w1, w2, g, u, ld);
		return;
	}
	if (be->matmul2) {
		be->matmul2(be, x, ldx, n, w1, g, ld, w2, u, ld);
	} else {
		be->matmul(be, x, ldx, n, w1, NULL, g, ld);
		be->matmul(be, x, ldx, n, w2, NULL, u, ld);
	}
	be->silu_mul(be, g, ld, u, ld, n, w1->rows);
}

/* Floats of scratch moe_ffn needs for n tokens. */
static inline size_t eng_backend_moe_scratch(int n, int dim, int inter)
{
	return (size_t)n * ((size_t)dim * 2 + (size_t)inter * 2) + (size_t)n * 2;
}

/* The CPU backend with n_threads threads (<= 0: all CPUs). */
struct eng_backend *eng_cpu_new(int n_threads);

#endif
