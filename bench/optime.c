/* optime.c: time per backend op. optime_wrap(be) returns a backend that forwards every op to be
 * and, after each, waits for the device (a 4-byte to_host) and adds the wall time to that op's
 * total. The waits add a few microseconds per op and no op overlaps another, so the totals rank
 * where a step's time goes (for a 2048-token prefill, whose ops take milliseconds, they are close
 * to the real split); recorded steps are off through the wrapper (no step_begin).
 *   struct eng_backend *t = optime_wrap(be); m->be = t; ...forward...; optime_print(t, "title");
 *   optime_reset(t);
 * It also counts the routed experts each MoE call touches (optime_experts): the distinct ids the
 * router gave its tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/optime.h"

enum { OP_EMBED, OP_MATMUL, OP_RMSNORM, OP_ROPE, OP_SILU, OP_ADD, OP_COPY2D, OP_ZERO, OP_KVW, OP_KVG, OP_GQA,
       OP_MLA, OP_DENSE, OP_ROUTE, OP_MOE, OP_HEADS, OP_MM2, OP_ADDN, OP_GLU, OP_ROUTER, OP_NMM2, OP_MOESH,
       OP_PREP, OP_MLAUV, OP_N };

static const char *op_names[OP_N] = {"embed", "matmul", "rmsnorm", "rope", "silu_mul", "add", "copy2d", "zero",
				     "kv_write", "kv_gather", "attn_gqa", "attn_mla", "attn_dense", "moe_route",
				     "moe_ffn", "matmul_heads", "matmul2", "add_rmsnorm", "glu", "moe_router",
				     "norm_matmul2", "moe_ffn_shared", "mla_prep", "attn_mla_uv"};

#define OT_MAXMOE 256

struct optime {
	struct eng_backend be; /* first: the wrapper is an eng_backend */
	struct eng_backend *in;
	void *probe;
	double t[OP_N], t0;
	long calls[OP_N];
	int nmoe, touched[OT_MAXMOE]; /* MoE calls since the reset, experts each touched */
};

#define OT(be) ((struct optime *)(be))
#define IN(be) (OT(be)->in)

static double ot_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void ot_begin(struct eng_backend *be)
{
	OT(be)->t0 = ot_now();
}

static void ot_end(struct eng_backend *be, int op)
{
	struct optime *o = OT(be);
	int32_t v;
	o->in->to_host(o->in, &v, o->probe, sizeof(v)); /* waits for everything queued */
	o->t[op] += ot_now() - o->t0;
	o->calls[op]++;
}

#define TIMED(op, call)          \
	do {                     \
		ot_begin(be);    \
		IN(be)->call;    \
		ot_end(be, op);  \
	} while (0)

static void ot_free(struct eng_backend *be)
{
	IN(be)->release(IN(be), OT(be)->probe);
	free(be);
}
static void *ot_alloc(struct eng_backend *be, size_t bytes)
{
	return IN(be)->alloc(IN(be), bytes);
}
static void ot_release(struct eng_backend *be, void *p)
{
	IN(be)->release(IN(be), p);
}
static void ot_to_dev(struct eng_backend *be, void *d, const void *s, size_t n)
{
	IN(be)->to_dev(IN(be), d, s, n);
}
static void ot_to_host(struct eng_backend *be, void *d, const void *s, size_t n)
{
	IN(be)->to_host(IN(be), d, s, n);
}
static void ot_embed(struct eng_backend *be, const struct eng_w *tab, const int32_t *ids, int n, float *out)
{
	TIMED(OP_EMBED, embed(IN(be), tab, ids, n, out));
}
static void ot_matmul(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w, const float *bias,
		      float *y, int ldy)
{
	TIMED(OP_MATMUL, matmul(IN(be), x, ldx, n, w, bias, y, ldy));
}
static void ot_rmsnorm(struct eng_backend *be, float *y, int ldy, const float *x, int ldx, int n, int dim,
		       const float *w, float eps)
{
	TIMED(OP_RMSNORM, rmsnorm(IN(be), y, ldy, x, ldx, n, dim, w, eps));
}
static void ot_rope(struct eng_backend *be, float *x, int n, int nh, int ld_tok, int ld_head, const int32_t *pos,
		    const struct eng_rope *r)
{
	TIMED(OP_ROPE, rope(IN(be), x, n, nh, ld_tok, ld_head, pos, r));
}
static void ot_silu(struct eng_backend *be, float *g, int ldg, const float *u, int ldu, int n, int dim)
{
	TIMED(OP_SILU, silu_mul(IN(be), g, ldg, u, ldu, n, dim));
}
static void ot_add(struct eng_backend *be, float *y, const float *x, size_t n)
{
	TIMED(OP_ADD, add(IN(be), y, x, n));
}
static void ot_copy2d(struct eng_backend *be, void *d, size_t dp, const void *s, size_t sp, size_t w, size_t rows)
{
	TIMED(OP_COPY2D, copy2d(IN(be), d, dp, s, sp, w, rows));
}
static void ot_zero(struct eng_backend *be, void *p, size_t bytes)
{
	TIMED(OP_ZERO, zero(IN(be), p, bytes));
}
static void ot_kvw(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b, const float *rows,
		   int ld)
{
	TIMED(OP_KVW, kv_write(IN(be), kv, layer, b, rows, ld));
}
static void ot_kvg(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_kv_seq *s, int n,
		   float *out)
{
	TIMED(OP_KVG, kv_gather(IN(be), kv, layer, s, n, out));
}
static void ot_gqa(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		   const float *q, int nh, int nkv, int hd, float scale, float *out)
{
	TIMED(OP_GQA, attn_gqa(IN(be), kv, layer, b, q, nh, nkv, hd, scale, out));
}
static void ot_mla(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		   const float *ql, const float *qp, int nh, int R, int dr, float scale, float *out)
{
	TIMED(OP_MLA, attn_mla(IN(be), kv, layer, b, ql, qp, nh, R, dr, scale, out));
}
static void ot_dense(struct eng_backend *be, const float *q, const int32_t *pos, int n, const float *k, const float *v,
		     int ctx, int nh, int dq, int dv, float scale, float *out)
{
	TIMED(OP_DENSE, attn_dense(IN(be), q, pos, n, k, v, ctx, nh, dq, dv, scale, out));
}
static void ot_route(struct eng_backend *be, const float *lg, int n, const struct eng_moe_route *r, int32_t *idx,
		     float *wt)
{
	TIMED(OP_ROUTE, moe_route(IN(be), lg, n, r, idx, wt));
}
/* The distinct experts among the n * K ids of one MoE call (device memory; ot_end waited for it). */
static void ot_count(struct eng_backend *be, const int32_t *idx, int n, int K, int E)
{
	struct optime *o = OT(be);
	if (o->nmoe >= OT_MAXMOE)
		return;
	int32_t *h = malloc(sizeof(int32_t) * n * K);
	uint8_t *seen = calloc(E, 1);
	int d = 0;
	o->in->to_host(o->in, h, idx, sizeof(int32_t) * n * K);
	for (int i = 0; i < n * K; i++)
		if (h[i] >= 0 && h[i] < E && !seen[h[i]])
			seen[h[i]] = 1, d++;
	o->touched[o->nmoe++] = d;
	free(h), free(seen);
}

static void ot_moe(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx, const float *wt, int K,
		   int E, const struct eng_w *g, const struct eng_w *u, const struct eng_w *d, float *out, float *scr)
{
	TIMED(OP_MOE, moe_ffn(IN(be), x, n, dim, idx, wt, K, E, g, u, d, out, scr));
	ot_count(be, idx, n, K, E);
}
static void ot_heads(struct eng_backend *be, const float *x, int ldx, int hx, int n, int nh, const struct eng_w *w,
		     float *y, int ldy, int hy)
{
	TIMED(OP_HEADS, matmul_heads(IN(be), x, ldx, hx, n, nh, w, y, ldy, hy));
}

static void ot_mm2(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1, float *y1, int ldy1,
		   const struct eng_w *w2, float *y2, int ldy2)
{
	TIMED(OP_MM2, matmul2(IN(be), x, ldx, n, w1, y1, ldy1, w2, y2, ldy2));
}

static void ot_addn(struct eng_backend *be, float *x, const float *t, float *y, int n, int dim, const float *w,
		    float eps)
{
	TIMED(OP_ADDN, add_rmsnorm(IN(be), x, t, y, n, dim, w, eps));
}

static void ot_glu(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1, const struct eng_w *w2,
		   float *g, float *u, int ld)
{
	TIMED(OP_GLU, glu(IN(be), x, ldx, n, w1, w2, g, u, ld));
}

static void ot_router(struct eng_backend *be, const struct eng_prenorm *pn, int n, const struct eng_w *w,
		      const struct eng_moe_route *r, float *logits, int32_t *idx, float *wt)
{
	TIMED(OP_ROUTER, moe_router(IN(be), pn, n, w, r, logits, idx, wt));
}

static void ot_nmm2(struct eng_backend *be, const struct eng_prenorm *pn, int n, const struct eng_w *w1, float *y1,
		    int ldy1, const struct eng_w *w2, float *y2, int ldy2)
{
	TIMED(OP_NMM2, norm_matmul2(IN(be), pn, n, w1, y1, ldy1, w2, y2, ldy2));
}

static void ot_moesh(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx, const float *wt,
		     int K, int E, const struct eng_w *g, const struct eng_w *u, const struct eng_w *d,
		     const struct eng_w *sh, float *sg, float *su, float *out, float *scr)
{
	TIMED(OP_MOESH, moe_ffn_shared(IN(be), x, n, dim, idx, wt, K, E, g, u, d, sh, sg, su, out, scr));
	ot_count(be, idx, n, K, E);
}

static void ot_prep(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b, float *q, int nh,
		    int dn, int dr, float *kva, int R, const float *kv_norm, float eps, const struct eng_rope *rope,
		    const struct eng_w *uk, float *q_lat, float *q_pe)
{
	TIMED(OP_PREP, mla_prep(IN(be), kv, layer, b, q, nh, dn, dr, kva, R, kv_norm, eps, rope, uk, q_lat, q_pe));
}

static void ot_mlauv(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		     const float *ql, const float *qp, int nh, int R, int dr, float scale, float *out,
		     const struct eng_w *uv, float *att)
{
	TIMED(OP_MLAUV, attn_mla_uv(IN(be), kv, layer, b, ql, qp, nh, R, dr, scale, out, uv, att));
}

struct eng_backend *optime_wrap(struct eng_backend *in)
{
	struct optime *o = calloc(1, sizeof(*o));
	struct eng_backend *be = &o->be;
	o->in = in;
	o->probe = in->alloc(in, 16);
	be->name = in->name;
	be->free = ot_free, be->alloc = ot_alloc, be->release = ot_release;
	be->to_dev = ot_to_dev, be->to_host = ot_to_host;
	be->embed = ot_embed, be->matmul = ot_matmul, be->rmsnorm = ot_rmsnorm, be->rope = ot_rope;
	be->silu_mul = ot_silu, be->add = ot_add, be->copy2d = ot_copy2d, be->zero = ot_zero;
	be->kv_write = ot_kvw, be->kv_gather = ot_kvg, be->attn_gqa = ot_gqa, be->attn_mla = ot_mla;
	be->attn_dense = ot_dense, be->moe_route = ot_route, be->moe_ffn = ot_moe;
	be->matmul_heads = in->matmul_heads ? ot_heads : NULL;
	be->matmul2 = in->matmul2 ? ot_mm2 : NULL;
	be->add_rmsnorm = in->add_rmsnorm ? ot_addn : NULL;
	be->glu = in->glu ? ot_glu : NULL;
	be->moe_router = in->moe_router ? ot_router : NULL;
	be->norm_matmul2 = in->norm_matmul2 ? ot_nmm2 : NULL;
	be->moe_ffn_shared = in->moe_ffn_shared ? ot_moesh : NULL;
	be->mla_prep = in->mla_prep ? ot_prep : NULL;
	be->attn_mla_uv = in->attn_mla_uv ? ot_mlauv : NULL;
	/* step_begin/step_end/step_forget stay NULL: every op runs eagerly; so does prefetch: with a
	 * wait after every op there is no chain for it to overlap */
	return be;
}

void optime_reset(struct eng_backend *be)
{
	memset(OT(be)->t, 0, sizeof(OT(be)->t));
	memset(OT(be)->calls, 0, sizeof(OT(be)->calls));
	OT(be)->nmoe = 0;
}

int optime_experts(struct eng_backend *be, const int **touched)
{
	*touched = OT(be)->touched;
	return OT(be)->nmoe;
}

/* One table: op, calls, total ms, us per call, share; ops sorted by total. */
void optime_print(struct eng_backend *be, const char *title, int reps)
{
	struct optime *o = OT(be);
	int ord[OP_N];
	double sum = 0;
	for (int i = 0; i < OP_N; i++)
		ord[i] = i, sum += o->t[i];
	for (int i = 1; i < OP_N; i++)
		for (int j = i; j > 0 && o->t[ord[j]] > o->t[ord[j - 1]]; j--) {
			int x = ord[j];
			ord[j] = ord[j - 1], ord[j - 1] = x;
		}
	reps = reps > 0 ? reps : 1;
	printf("\n%s: %.3f ms per pass (each op waited for)\n%-13s %7s %10s %10s %6s\n", title, sum * 1e3 / reps, "op",
	       "calls", "ms/pass", "us/call", "share");
	for (int k = 0; k < OP_N; k++) {
		int i = ord[k];
		if (!o->calls[i])
			continue;
		printf("%-13s %7ld %10.3f %10.1f %5.1f%%\n", op_names[i], o->calls[i] / reps, o->t[i] * 1e3 / reps,
		       o->t[i] * 1e6 / o->calls[i], 100.0 * o->t[i] / sum);
	}
	fflush(stdout);
}
