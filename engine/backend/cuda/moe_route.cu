/* moe_route.cu: router logits (n, E) -> expert ids idx (n, K) and weights wt (n, K), both device
 * memory. One warp per token: the softmax across lanes, then lane 0 runs the CPU's selection
 * (group-limited masking, top-k by repeated argmax with ties to the lower id, normalise or scale)
 * step for step, so both backends route alike. */
#include "engine/backend/cuda/cu.h"

#define ROUTE_WARPS 4
#define ROUTE_MAXE 256

__global__ void moe_route_kernel(const float *logits, int n, struct eng_moe_route r, int32_t *idx, float *wt)
{
	cu_pdl_wait();
	__shared__ float sp[ROUTE_WARPS][ROUTE_MAXE], sm[ROUTE_WARPS][ROUTE_MAXE];
	int w = threadIdx.x >> 5, lane = threadIdx.x & 31, i = blockIdx.x * ROUTE_WARPS + w;
	if (i >= n)
		return;
	int E = r.n_experts, K = r.top_k;
	float *p = sp[w], *masked = sm[w];
	const float *lg = logits + (size_t)i * E;
	float mx = -INFINITY;
	for (int e = lane; e < E; e += 32)
		mx = fmaxf(mx, lg[e]);
	mx = cu_warp_max(mx);
	float sum = 0.0f;
	for (int e = lane; e < E; e += 32) {
		p[e] = expf(lg[e] - mx);
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
			idx[(size_t)i * K + k] = best;
			wt[(size_t)i * K + k] = p[best];
			masked[best] = -1.0f;
		}
		s += p[best];
		__syncwarp();
	}
	if (lane)
		return;
	for (int k = 0; k < K; k++) {
		if (K > 1 && r.norm_topk_prob)
			wt[(size_t)i * K + k] /= s + 1e-20f;
		else
			wt[(size_t)i * K + k] *= r.routed_scaling;
	}
}

void cu_moe_route(struct eng_backend *be, const float *logits, int n, const struct eng_moe_route *r, int32_t *idx,
		  float *wt)
{
	if (n <= 0)
		return;
	SH_BUG_ON(r->n_experts > ROUTE_MAXE || r->n_group > ROUTE_MAXE);
	cu_launch(CU(be), moe_route_kernel, cu_div_up(n, ROUTE_WARPS), ROUTE_WARPS * 32, 0, logits, n, *r, idx, wt);
}
