/* moe_route.cu: router logits (n, E) -> expert ids idx (n, K) and weights wt (n, K), both device
 * memory. One warp per token: the softmax across lanes, then lane 0 runs the CPU's selection
 * (group-limited masking, top-k by repeated argmax with ties to the lower id, normalise or scale)
 * step for step, so both backends route alike. moe_router: the router's GEMV and the routing in one
 * launch (decode). */
#include "engine/backend/cuda/gemv.cuh"

#define ROUTE_WARPS 4
#define ROUTE_MAXE 256

/* One warp routes one token: logits lg (E, read through L2: another block may have written them
 * in this kernel) -> idx, wt (K); p, masked: E floats of shared memory of this warp's own. */
__device__ void route_token(const float *lg, const struct eng_moe_route &r, float *p, float *masked, int32_t *idx,
			    float *wt)
{
	int lane = threadIdx.x & 31;
	int E = r.n_experts, K = r.top_k;
	float mx = -INFINITY;
	for (int e = lane; e < E; e += 32) {
		p[e] = __ldcg(lg + e);
		mx = fmaxf(mx, p[e]);
	}
	mx = cu_warp_max(mx);
	float sum = 0.0f;
	for (int e = lane; e < E; e += 32) {
		p[e] = expf(p[e] - mx);
		sum += p[e];
	}
	sum = cu_warp_sum(sum);
	float inv = 1.0f / sum;
	for (int e = lane; e < E; e += 32) {
		p[e] *= inv;
		masked[e] = p[e];
	}
	__syncwarp();
	if (r.group_limited && r.n_group > 1 && lane == 0) {
		int per = E / r.n_group;
		float gs[ROUTE_MAXE];
		int keep[ROUTE_MAXE];
		for (int g = 0; g < r.n_group; g++) {
			gs[g] = -INFINITY;
			keep[g] = 0;
			for (int e = g * per; e < (g + 1) * per; e++)
				gs[g] = fmaxf(gs[g], p[e]);
		}
		for (int t = 0; t < r.topk_group; t++) {
			int best = -1;
			for (int g = 0; g < r.n_group; g++)
				if (!keep[g] && (best < 0 || gs[g] > gs[best]))
					best = g;
			keep[best] = 1;
		}
		for (int e = 0; e < E; e++)
			if (!keep[e / per])
				masked[e] = 0.0f;
	}
	__syncwarp();
	/* top-k by repeated argmax over the warp (ties to the lower id, as the CPU's serial scan: the
	 * order (value desc, id asc) is total, so the warp's pick is the scan's); a serial scan by one
	 * lane was 20 us a layer in run 4's profile */
	float s = 0.0f;
	for (int k = 0; k < K; k++) {
		float bv = -1.0f;
		int best = -1;
		for (int e = lane; e < E; e += 32)
			if (masked[e] >= 0 && (best < 0 || masked[e] > bv))
				bv = masked[e], best = e;
#pragma unroll
		for (int o = 16; o > 0; o >>= 1) {
			float ov = __shfl_xor_sync(0xffffffffu, bv, o);
			int ob = __shfl_xor_sync(0xffffffffu, best, o);
			if (ob >= 0 && (best < 0 || ov > bv || (ov == bv && ob < best)))
				bv = ov, best = ob;
		}
		if (lane == 0) {
			idx[k] = best;
			wt[k] = p[best];
			masked[best] = -1.0f;
		}
		s += p[best];
		__syncwarp();
	}
	if (lane)
		return;
	for (int k = 0; k < K; k++) {
		if (K > 1 && r.norm_topk_prob)
			wt[k] /= s + 1e-20f;
		else
			wt[k] *= r.routed_scaling;
	}
}

__global__ void moe_route_kernel(const float *logits, int n, struct eng_moe_route r, int32_t *idx, float *wt)
{
	cu_pdl_wait();
	__shared__ float sp[ROUTE_WARPS][ROUTE_MAXE], sm[ROUTE_WARPS][ROUTE_MAXE];
	int w = threadIdx.x >> 5, i = blockIdx.x * ROUTE_WARPS + w;
	if (i < n)
		route_token(logits + (size_t)i * r.n_experts, r, sp[w], sm[w], idx + (size_t)i * r.top_k,
			    wt + (size_t)i * r.top_k);
}

/* moe_router: the add and norm, the router GEMV (gemv.cuh's gemv_mma_kernel, prenorm), then its
 * last block to finish routes the tokens, a warp each, in the shared memory the bf16 activations
 * used */
struct route_last {
	struct eng_moe_route r;
	const float *logits;
	int32_t *idx;
	float *wt;
	int n;
	__device__ void operator()(uint8_t *smem) const
	{
		int warp = threadIdx.x >> 5;
		float *sp = (float *)smem + (size_t)warp * 2 * ROUTE_MAXE;
		for (int i = warp; i < n; i += MMA_WARPS)
			route_token(logits + (size_t)i * r.n_experts, r, sp, sp + ROUTE_MAXE, idx + (size_t)i * r.top_k,
				    wt + (size_t)i * r.top_k);
	}
};

void cu_moe_route(struct eng_backend *be, const float *logits, int n, const struct eng_moe_route *r, int32_t *idx,
		  float *wt)
{
	if (n <= 0)
		return;
	SH_BUG_ON(r->n_experts > ROUTE_MAXE || r->n_group > ROUTE_MAXE);
	cu_launch(CU(be), moe_route_kernel, cu_div_up(n, ROUTE_WARPS), ROUTE_WARPS * 32, 0, logits, n, *r, idx, wt);
}

void cu_moe_router(struct eng_backend *be, const struct eng_prenorm *pn, int n, const struct eng_w *w,
		   const struct eng_moe_route *r, float *logits, int32_t *idx, float *wt)
{
	struct cu *c = CU(be);
	if (n <= 0)
		return;
	SH_BUG_ON(r->n_experts != w->rows);
	if (r->n_experts <= ROUTE_MAXE && cu_pn_ok(c, w, pn, n)) {
		gemv_mma_launch(c, w, NULL, logits, r->n_experts, NULL, NULL, 0, pn->x, w->cols, n, pn,
				route_last{*r, logits, idx, wt, n}, sizeof(float) * 2 * ROUTE_MAXE * MMA_WARPS);
		return;
	}
	cu_prenorm(be, pn, n, w->cols);
	cu_matmul(c, pn->xn, w->cols, n, w, NULL, logits, r->n_experts);
	cu_moe_route(be, logits, n, r, idx, wt);
}
