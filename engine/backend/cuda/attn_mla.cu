/* attn_mla.cu: MLA decode in latent space over the paged cache, on the tensor cores.
 *
 * One block (8 warps) per (split of the context, token, group of 16 heads). The 16 heads are the M
 * of mma.m16n8k16 (bf16 in, fp32 accumulate). An iteration takes MLA_TPI cache blocks (32 cached
 * rows), copied with cp.async into shared memory one iteration ahead (bf16: straight into the
 * bf16 tile) or two (fp8, int8: raw bytes), so that the syncs, the softmax round and the rescaling
 * of O come once per 32 rows. Every head uses each row read:
 *   scores  S (16 heads, 32 pos) = Q (16, R + dr) . K^T: a warp per (quarter of K, 16 positions),
 *           the queries' fragments held in registers for the whole block; the latent and rope
 *           parts accumulated apart and scaled per position before the 4 quarters are summed;
 *   softmax online, a thread per (head, 2 positions);
 *   values  O (16 heads, R) += P (16, 32) . C (32 pos, R); a warp owns 64 columns.
 * fp8 and int8 values are exact in bf16: the warps of the scores convert their own B fragments
 * from the raw bytes (integer and bf16 operations: the hardware conversions run at a quarter of
 * the rate) and store the latent part as the bf16 tile of P . C. Their per-token scales are
 * applied to the scores and folded into the probabilities, never to the values.
 * Long contexts are split over blocks (flash-decoding); a second kernel merges the splits (or, in
 * attn_mla_uv at one or two tokens, the uv GEMV's blocks merge their head's splits). Queries
 * are rounded to bf16 (as FlashMLA does). Takes R % 32 == 0, R <= 512, dr <= 64, dr % 4 == 0,
 * (R + dr) % 8 == 0 and the BF16/FP8/INT8/FP8_TENSOR formats; everything else, and exact mode,
 * goes to the fp32 SIMT kernel (attn_gqa.cu). */
#include "engine/backend/cuda/cu.h"
#include "engine/backend/cuda/gemv.cuh"

#define MLA_NW 8                   /* warps a block */
#define MLA_T 16                   /* positions per cache block == ENG_KV_BLOCK_TOKENS */
#define MLA_TPI 2                  /* cache blocks an iteration */
#define MLA_NP (MLA_T * MLA_TPI)   /* positions an iteration */
#define MLA_SRS (MLA_NP + 8)       /* row stride of the partial scores in floats (no bank conflicts) */
#define MLA_PS (MLA_NP + 8)        /* row stride of P in bf16 (no bank conflicts for ldmatrix) */
#define MLA_MINTPS 2               /* tiles a split takes at least (a multiple of MLA_TPI) */
#define MLA_LONGTPS 8              /* ... and at least this many when the context allows */
#define MLA_SHORTNS 16             /* splits of a short context (KVGATE_CUDA_MLA_NS=k: k, for tuning) */

_Static_assert(MLA_T == ENG_KV_BLOCK_TOKENS, "an MLA tile is one cache block");
_Static_assert(MLA_NP == 32 && MLA_NW == 8, "the warp layout below: 4 quarters of K x 2 halves of 32 positions");
_Static_assert(MLA_MINTPS % MLA_TPI == 0, "splits take whole iterations");

struct mla_args {
	const uint8_t *pool;
	size_t lbb;
	int n_layers, layer;
	const int32_t *bp;
	int n, maxb;
	size_t scales_off;
	int P;
	float tscale;
	const float *q_lat, *q_pe;
	int nh, R, dr, W, WS; /* W = R + dr rounded up to 16; WS = W + 8 (row stride in smem) */
	float scale;
	int n_split, tps;
	int nst; /* stages of the raw 8-bit rows in flight (2 or 3; bf16 always 2) */
	float *out, *po, *pml;
};

/* The 8-bit formats' bf16 tile row (bf16; a multiple of 64: see mla_sw) and raw row (bytes; 32 or
 * 96 past a multiple of 128: a thread's 8 bytes of rows g = 0..3 then hit different banks). */
static inline __host__ __device__ int mla_ks(int R)
{
	return (R + 63) / 64 * 64;
}

static inline __host__ __device__ int mla_rsb(int E)
{
	return (E + 63) / 64 * 64 + 32;
}

/* Shared memory of a block (bytes): the bf16 tiles (nst of them for bf16: they are the copies'
 * destination, rows of W + 8; one for the 8-bit formats, the latent only, swizzled), the raw 8-bit
 * stages, the staged per-token scales, the partial scores, P, and the per-head alpha / sum / max.
 * The kernel carves it in this order. */
static inline size_t mla_smem(int fmt, int R, int W, int E, int nst)
{
	int q8 = fmt != ENG_KV_BF16, psc = fmt == ENG_KV_FP8 || fmt == ENG_KV_INT8;
	return (size_t)(q8 ? 1 : nst) * MLA_NP * (q8 ? mla_ks(R) : W + 8) * 2 +
	       (q8 ? (size_t)nst * MLA_NP * mla_rsb(E) : 0) + (psc ? (size_t)nst * MLA_NP * 2 * sizeof(float) : 0) +
	       (size_t)4 * 16 * MLA_SRS * sizeof(float) + (size_t)16 * MLA_PS * 2 + 48 * sizeof(float);
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel)
{
	uint32_t r;
	asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
	return r;
}

/* d = a * b + c on two bf16 (exact in both uses below; bf16 has no flush-to-zero) */
__device__ __forceinline__ uint32_t fma_bf16x2(uint32_t a, uint32_t b, uint32_t c)
{
	uint32_t d;
	asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
	return d;
}

/* Two e4m3 (the bytes that sel picks, sign-extended into 16-bit lanes: 0x9180 bytes 0-1, 0xb3a2
 * bytes 2-3) -> bf16x2, exactly, with integer and bf16 operations (the hardware conversions run at
 * a quarter of the rate and were this kernel's limit for the 8-bit formats): sign to bit 15 and
 * eeeemmm to bits 10..4 make a bf16 of the value times 2^-120 (normal and subnormal e4m3 alike:
 * a subnormal e4m3 becomes a subnormal bf16), times 2^120 (0x7b80) then. e4m3 NaN (0x7f / 0xff,
 * never written to the cache) comes out as +-480. */
__device__ __forceinline__ uint32_t fp8x2_bf16x2(uint32_t w, uint32_t sel)
{
	uint32_t x = prmt(w, 0, sel);
	uint32_t r = (x & 0x087f087fu) << 4;
	return fma_bf16x2(r, 0x7b807b80u, 0x80008000u); /* + (-0): keeps the sign of zeros */
}

/* Two int8 (the bytes that sel picks, zero-extended into 16-bit lanes: 0x4140 bytes 0-1, 0x4342
 * bytes 2-3) -> bf16x2, exactly: (128 + low 7 bits) - (128 + 128 * sign), both bf16. */
__device__ __forceinline__ uint32_t int8x2_bf16x2(uint32_t w, uint32_t sel)
{
	uint32_t y = prmt(w, 0, sel);
	uint32_t v = (y & 0x007f007fu) | 0x43004300u, c = (y & 0x00800080u) | 0x43004300u;
	return fma_bf16x2(c, 0xbf80bf80u, v); /* v - c */
}

/* 8 cached 8-bit values -> 8 bf16 */
template <int FMT> __device__ __forceinline__ uint4 mla_cvt8(uint2 raw)
{
	if constexpr (FMT == ENG_KV_INT8)
		return make_uint4(int8x2_bf16x2(raw.x, 0x4140u), int8x2_bf16x2(raw.x, 0x4342u),
				  int8x2_bf16x2(raw.y, 0x4140u), int8x2_bf16x2(raw.y, 0x4342u));
	else
		return make_uint4(fp8x2_bf16x2(raw.x, 0x9180u), fp8x2_bf16x2(raw.x, 0xb3a2u),
				  fp8x2_bf16x2(raw.y, 0x9180u), fp8x2_bf16x2(raw.y, 0xb3a2u));
}

/* The swizzle of the 8-bit formats' bf16 tile (rows of KS bf16, KS a multiple of 64): 16-byte
 * chunk c of row r lies at chunk c ^ mla_sw(r). ldmatrix's 8 rows hit 8 different bank groups, and
 * so do the converting threads' stores (rows 2m and 2m + 1, 4 chunks each). */
__device__ __forceinline__ int mla_sw(int r)
{
	return ((r & 1) << 2) | ((r >> 1) & 3);
}

/* One split of one token's context for 16 heads. RC: R fixed at compile time (512 with dr 64, the
 * DeepSeek-V2 shape: every index below folds to constants), or 0 for the runtime shape. */
template <int FMT, int RC> __global__ void __launch_bounds__(MLA_NW * 32, 2) mla_mma_kernel(mla_args a)
{
	constexpr bool Q8 = FMT != ENG_KV_BF16;                       /* 8-bit rows: staged raw, converted */
	constexpr bool PSC = FMT == ENG_KV_FP8 || FMT == ENG_KV_INT8; /* per-token per-part scales */
	extern __shared__ __align__(16) uint8_t smem[];
	const int R = RC ? RC : a.R, dr = RC ? 64 : a.dr, E = R + dr;
	const int W = RC ? RC + 64 : a.W;
	/* bf16: k-steps of 16, nkl latent then nkr rope (the last one zero-padded up to W); a quarter
	 * of K is LQ latent k-steps and the rope k-step nkl + quarter. 8-bit: the latent in chunks of
	 * 32 columns (two k-steps), LQ of them a quarter, and the rope columns 16 q .. 16 q + 15. */
	const int nkl = R / 16, nkr = W / 16 - nkl;
	const int LQ = Q8 ? (RC ? RC / 128 : (R / 32 + 3) / 4) : (RC ? RC / 64 : (nkl + 3) / 4);
	const int nst = Q8 ? a.nst : 2;
	const int KS = Q8 ? mla_ks(R) : W + 8;  /* row stride of the bf16 tile */
	const int RSB = Q8 ? mla_rsb(E) : 0;    /* row stride of the raw 8-bit stage (bytes) */
	const size_t kst = (size_t)MLA_NP * KS; /* bf16 of one tile buffer */
	__nv_bfloat16 *Kb = (__nv_bfloat16 *)smem;                          /* (Q8 ? 1 : nst) x (NP, KS) */
	uint8_t *Rb = (uint8_t *)(Kb + (Q8 ? 1 : nst) * kst);               /* Q8: nst x (NP, RSB) bytes */
	float *Sc = (float *)(Rb + (Q8 ? (size_t)nst * MLA_NP * RSB : 0));  /* PSC: nst x (NP, 2) */
	float *Sr = Sc + (PSC ? nst * MLA_NP * 2 : 0);                      /* (4 quarters, 16, SRS) */
	__nv_bfloat16 *Ps = (__nv_bfloat16 *)(Sr + 4 * 16 * MLA_SRS);      /* (16, PS) */
	float *alpha = (float *)(Ps + 16 * MLA_PS), *lrow = alpha + 16, *mrow = lrow + 16;

	int s = blockIdx.x, i = blockIdx.y, hg0 = blockIdx.z * 16;
	int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g = lane >> 2, t4 = lane & 3;
	cu_pdl_wait(); /* the cache rows and queries come from the kernels before */
	int ctx = a.bp[i] + 1, seq = a.bp[a.n + i];
	const int32_t *tab = a.bp + 2 * a.n + (size_t)seq * a.maxb;
	/* tiles per split: at least a.tps, and enough that n_split splits cover this token's context
	 * (a recorded step fixes n_split and a.tps for every context up to its table length), whole
	 * iterations (rounding up never adds an iteration to a split and may leave the last empty) */
	int ntiles = (ctx + MLA_T - 1) / MLA_T, tps = max(a.tps, (ntiles + a.n_split - 1) / a.n_split);
	tps = (tps + MLA_TPI - 1) / MLA_TPI * MLA_TPI;
	int t0 = s * tps, t1 = min(ntiles, t0 + tps);
	size_t pidx = (((size_t)i * a.n_split + s) * gridDim.z + blockIdx.z) * 16;
	if (t0 >= t1) { /* an empty split: weight 0 in the merge, which then never reads its partials */
		if (tid < 16)
			a.pml[(pidx + tid) * 2] = -INFINITY, a.pml[(pidx + tid) * 2 + 1] = 0.0f;
		return;
	}
	const int nit = (t1 - t0 + MLA_TPI - 1) / MLA_TPI; /* iterations; a missing last tile is masked */

	/* Copies of iteration `it`'s rows into stage stg: warp w copies tile w / 4 (blk: its cache
	 * block, -1 past the split), rows 4 (w % 4) .. + 3. Rows past the context, and missing tiles,
	 * are zero-filled (no garbage may reach the P . C product). */
	const int lu = w >> 2, lq = w & 3;
	auto issue = [&](int it, int blk, int stg) {
		int t = t0 + it * MLA_TPI + lu;
		int rows = blk >= 0 ? min(MLA_T, ctx - t * MLA_T) - lq * 4 : 0; /* valid of these 4 (may be <= 0) */
		const uint8_t *lb = a.pool + ((size_t)(blk >= 0 ? blk : 0) * a.n_layers + a.layer) * a.lbb;
		if constexpr (!Q8) { /* straight into the bf16 tile */
			__nv_bfloat16 *dst = Kb + stg * kst + (size_t)(lu * MLA_T + lq * 4) * KS;
			const uint8_t *src = lb + (size_t)lq * 4 * E * 2;
			const int cpr = E / 8; /* 16-byte chunks a row */
#pragma unroll
			for (int r = 0; r < 4; r++) {
				int sz = r < rows ? 16 : 0;
#pragma unroll
				for (int k = 0; k < 3; k++) {
					int ch = lane + 32 * k;
					if (ch < cpr)
						cu_cp_async16(dst + r * KS + ch * 8, src + ((size_t)r * E + ch * 8) * 2,
							      sz);
				}
			}
		} else {
			/* the 4 rows are 4 E contiguous bytes, staged at row stride RSB (16-byte copies when
			 * E is known to be a multiple of 16, else 8-byte ones) */
			constexpr int CB = RC ? 16 : 8;
			uint8_t *dst = Rb + (size_t)stg * MLA_NP * RSB + (size_t)(lu * MLA_T + lq * 4) * RSB;
			const uint8_t *src = lb + (size_t)lq * 4 * E;
			const int cpr = E / CB;
#pragma unroll
			for (int k = 0; k < (RC ? (4 * (RC + 64) / CB + 31) / 32 : 4 * 576 / CB / 32); k++) {
				int c = lane + 32 * k;
				if (c < 4 * cpr) {
					int rr = c / cpr, sz = rr < rows ? CB : 0;
					uint8_t *d = dst + rr * RSB + (c - rr * cpr) * CB;
					if constexpr (CB == 16)
						cu_cp_async16(d, src + c * CB, sz);
					else
						cu_cp_async8(d, src + c * CB, sz);
				}
			}
			if constexpr (PSC) { /* the tile's 16 x 2 scales: 128 bytes */
				if (lq == 0 && lane < 8)
					cu_cp_async16(Sc + (size_t)stg * MLA_NP * 2 + lu * MLA_T * 2 + lane * 4,
						   lb + a.scales_off + lane * 16, blk >= 0 ? 16 : 0);
			}
		}
	};

	/* the first iterations' copies go out before the queries' loads */
	for (int p = 0; p < nst - 1; p++) {
		if (p < nit) {
			int t = t0 + p * MLA_TPI + lu;
			issue(p, t < t1 ? tab[t] : -1, p);
		}
		cu_cp_async_commit();
	}
	if constexpr (RC == 0 && !Q8) { /* padding columns: zero in every tile buffer (never copied into) */
		int pad = W - E;
		for (int x = tid; x < nst * MLA_NP * pad; x += blockDim.x)
			Kb[(size_t)(x / pad) * KS + E + x % pad] = __float2bfloat16_rn(0.0f);
	}

	/* The queries' A fragments of this warp's quarter of K, for the whole block. bf16: qa[j] is
	 * latent k-step q LQ + j, qa[8] the rope k-step nkl + q. 8-bit: the K order within a k-step is
	 * the converting thread's (any order of k serves, the same for Q and K): in latent chunk
	 * q LQ + j (32 columns from c0), qa[2j] takes columns c0 + 8 t4 + 0..3 and qa[2j + 1] columns
	 * c0 + 8 t4 + 4..7; qa[8] rope columns 16 q + 4 t4 + 0..3. Zero where there is none. */
	const int q = w & 3, ng = w >> 2;
	uint32_t qa[9][4];
	{
		int h0 = hg0 + g;
		bool o0 = h0 < a.nh, o1 = h0 + 8 < a.nh;
		const float *l0 = a.q_lat + ((size_t)i * a.nh + h0) * R, *l1 = l0 + (size_t)8 * R;
		const float *p0 = a.q_pe + ((size_t)i * a.nh + h0) * dr, *p1 = p0 + (size_t)8 * dr;
		if constexpr (Q8) {
			float4 f[4][4], fr[2];
			const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
			for (int j = 0; j < 4; j++) {
				int cj = q * LQ + j, c = cj * 32 + 8 * t4;
				bool ok = RC || (j < LQ && cj < R / 32);
				f[j][0] = ok && o0 ? *(const float4 *)(l0 + c) : z;
				f[j][1] = ok && o0 ? *(const float4 *)(l0 + c + 4) : z;
				f[j][2] = ok && o1 ? *(const float4 *)(l1 + c) : z;
				f[j][3] = ok && o1 ? *(const float4 *)(l1 + c + 4) : z;
			}
			int cr = q * 16 + 4 * t4;
			fr[0] = cr < dr && o0 ? *(const float4 *)(p0 + cr) : z;
			fr[1] = cr < dr && o1 ? *(const float4 *)(p1 + cr) : z;
#pragma unroll
			for (int j = 0; j < 4; j++) {
				qa[2 * j][0] = cu_pack_bf16(f[j][0].x, f[j][0].y);
				qa[2 * j][1] = cu_pack_bf16(f[j][2].x, f[j][2].y);
				qa[2 * j][2] = cu_pack_bf16(f[j][0].z, f[j][0].w);
				qa[2 * j][3] = cu_pack_bf16(f[j][2].z, f[j][2].w);
				qa[2 * j + 1][0] = cu_pack_bf16(f[j][1].x, f[j][1].y);
				qa[2 * j + 1][1] = cu_pack_bf16(f[j][3].x, f[j][3].y);
				qa[2 * j + 1][2] = cu_pack_bf16(f[j][1].z, f[j][1].w);
				qa[2 * j + 1][3] = cu_pack_bf16(f[j][3].z, f[j][3].w);
			}
			qa[8][0] = cu_pack_bf16(fr[0].x, fr[0].y), qa[8][1] = cu_pack_bf16(fr[1].x, fr[1].y);
			qa[8][2] = cu_pack_bf16(fr[0].z, fr[0].w), qa[8][3] = cu_pack_bf16(fr[1].z, fr[1].w);
		} else {
			float2 f[9][4];
			const float2 z = make_float2(0.0f, 0.0f);
#pragma unroll
			for (int j = 0; j < 9; j++) {
				bool lat = j < 8;
				int ks = lat ? q * LQ + j : nkl + q;
				bool ok = RC || (lat ? j < LQ && ks < nkl : q < nkr);
				int c = lat ? ks * 16 + 2 * t4 : q * 16 + 2 * t4, lim = lat ? R : dr;
				const float *b0 = lat ? l0 : p0, *b1 = lat ? l1 : p1;
				f[j][0] = ok && o0 && c < lim ? *(const float2 *)(b0 + c) : z;
				f[j][1] = ok && o1 && c < lim ? *(const float2 *)(b1 + c) : z;
				f[j][2] = ok && o0 && c + 8 < lim ? *(const float2 *)(b0 + c + 8) : z;
				f[j][3] = ok && o1 && c + 8 < lim ? *(const float2 *)(b1 + c + 8) : z;
			}
#pragma unroll
			for (int j = 0; j < 9; j++)
#pragma unroll
				for (int e = 0; e < 4; e++)
					qa[j][e] = cu_pack_bf16(f[j][e].x, f[j][e].y);
		}
	}

	float m_run = -INFINITY, l_run = 0.0f;
	float acc[8][4];
#pragma unroll
	for (int j = 0; j < 8; j++)
		acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
	const float sscale = FMT == ENG_KV_FP8_TENSOR ? a.scale * a.tscale : a.scale;
	int blk_pf = -1; /* the cache block of the next copies this warp issues, read an iteration ahead */
	{
		int t = t0 + (nst - 1) * MLA_TPI + lu;
		if (nst - 1 < nit && t < t1)
			blk_pf = tab[t];
	}
	int st = 0, stn = nst - 1; /* the stage computed, the stage copied into */

	for (int it = 0; it < nit; it++) {
		if (Q8 && nst == 3)
			cu_cp_async_wait<1>();
		else
			cu_cp_async_wait<0>();
		__syncthreads(); /* this iteration's rows are in; everyone is done with the previous one */
		{
			int nx = it + nst - 1;
			if (nx < nit)
				issue(nx, blk_pf, stn);
			cu_cp_async_commit();
			int t = t0 + (nx + 1) * MLA_TPI + lu;
			blk_pf = nx + 1 < nit && t < t1 ? tab[t] : -1;
		}
		const int tc = t0 + it * MLA_TPI;
		const int vt0 = min(MLA_T, ctx - tc * MLA_T); /* valid rows of the two tiles */
		const int vt1 = tc + 1 < t1 ? min(MLA_T, ctx - (tc + 1) * MLA_T) : 0;
		const __nv_bfloat16 *Kc = Kb + (Q8 ? 0 : st * kst);

		/* scores of this warp's 16 positions (n8 tiles 2 ng, 2 ng + 1) over its quarter of K */
		float sl[2][4], sr[2][4];
#pragma unroll
		for (int nt = 0; nt < 2; nt++)
#pragma unroll
			for (int e = 0; e < 4; e++)
				sl[nt][e] = sr[nt][e] = 0.0f;
		if constexpr (Q8) {
			/* a thread's B fragments are 8 raw bytes of rows ng 16 + g and + 8: converted to
			 * bf16 once, they go to the mma and, for the latent, to the bf16 tile for P . C */
			const uint8_t *r0 = Rb + (size_t)st * MLA_NP * RSB + (size_t)(ng * 16 + g) * RSB + 8 * t4;
			__nv_bfloat16 *k0 = Kb + (size_t)(ng * 16 + g) * KS;
			const int sw = mla_sw(g);
#pragma unroll
			for (int j = 0; j < 4; j++) {
				int cj = q * LQ + j;
				if (RC || (j < LQ && cj < R / 32)) {
					uint4 c0 = mla_cvt8<FMT>(*(const uint2 *)(r0 + cj * 32));
					uint4 c1 = mla_cvt8<FMT>(*(const uint2 *)(r0 + 8 * RSB + cj * 32));
					int ch = ((cj * 4 + t4) ^ sw) * 8;
					*(uint4 *)(k0 + ch) = c0;
					*(uint4 *)(k0 + 8 * KS + ch) = c1;
					cu_mma_bf16(sl[0], qa[2 * j], c0.x, c0.y);
					cu_mma_bf16(sl[1], qa[2 * j], c1.x, c1.y);
					cu_mma_bf16(sl[0], qa[2 * j + 1], c0.z, c0.w);
					cu_mma_bf16(sl[1], qa[2 * j + 1], c1.z, c1.w);
				}
			}
			if (RC || q < nkr) { /* 4 rope bytes (none past the row: dr % 4 == 0) */
				int col = R + 16 * q;
				bool in = RC || col + 4 * t4 < E;
				uint32_t y0 = in ? *(const uint32_t *)(r0 - 8 * t4 + col + 4 * t4) : 0u;
				uint32_t y1 = in ? *(const uint32_t *)(r0 + 8 * RSB - 8 * t4 + col + 4 * t4) : 0u;
				uint4 c = mla_cvt8<FMT>(make_uint2(y0, y1));
				cu_mma_bf16(sr[0], qa[8], c.x, c.y);
				cu_mma_bf16(sr[1], qa[8], c.z, c.w);
			}
		} else {
			/* ldmatrix x4: matrices (pos 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) */
			const __nv_bfloat16 *kp =
				Kc + (size_t)(ng * 16 + (lane & 7) + ((lane >> 4) << 3)) * KS + ((lane >> 3) & 1) * 8;
#pragma unroll
			for (int j = 0; j < 8; j++) {
				int ks = q * LQ + j;
				if (RC || (j < LQ && ks < nkl)) {
					uint32_t b0, b1, b2, b3;
					cu_ldsm_x4(b0, b1, b2, b3, kp + ks * 16);
					cu_mma_bf16(sl[0], qa[j], b0, b1);
					cu_mma_bf16(sl[1], qa[j], b2, b3);
				}
			}
			if (RC || q < nkr) {
				uint32_t b0, b1, b2, b3;
				cu_ldsm_x4(b0, b1, b2, b3, kp + (nkl + q) * 16);
				cu_mma_bf16(sr[0], qa[8], b0, b1);
				cu_mma_bf16(sr[1], qa[8], b2, b3);
			}
		}
		/* latent and rope each with its scale per position, then to the quarter's partials */
		const float *scs = Sc + (size_t)st * MLA_NP * 2;
#pragma unroll
		for (int nt = 0; nt < 2; nt++) {
			int pr = ng * 16 + nt * 8 + 2 * t4;
			float v[4];
#pragma unroll
			for (int e = 0; e < 4; e++)
				v[e] = sl[nt][e];
			if constexpr (PSC) { /* (latent, rope) scales of positions pr, pr + 1 */
				float4 sc = *(const float4 *)&scs[pr * 2];
				v[0] = v[0] * sc.x + sr[nt][0] * sc.y, v[1] = v[1] * sc.z + sr[nt][1] * sc.w;
				v[2] = v[2] * sc.x + sr[nt][2] * sc.y, v[3] = v[3] * sc.z + sr[nt][3] * sc.w;
			} else {
#pragma unroll
				for (int e = 0; e < 4; e++)
					v[e] += sr[nt][e];
			}
			*(float2 *)&Sr[(q * 16 + g) * MLA_SRS + pr] = make_float2(v[0], v[1]);
			*(float2 *)&Sr[(q * 16 + g + 8) * MLA_SRS + pr] = make_float2(v[2], v[3]);
		}
		__syncthreads();

		/* online softmax: a thread per (head, 2 positions), 16 lanes a head */
		{
			int h = tid >> 4, pp = (tid & 15) * 2, vu = pp < MLA_T ? vt0 : vt1, p = pp & (MLA_T - 1);
			float2 x = *(const float2 *)&Sr[h * MLA_SRS + pp];
#pragma unroll
			for (int qq = 1; qq < 4; qq++) {
				float2 y = *(const float2 *)&Sr[(qq * 16 + h) * MLA_SRS + pp];
				x.x += y.x, x.y += y.y;
			}
			bool ok0 = p < vu, ok1 = p + 1 < vu;
			float s0 = ok0 ? x.x * sscale : -INFINITY, s1 = ok1 ? x.y * sscale : -INFINITY;
			float tmax = fmaxf(s0, s1);
#pragma unroll
			for (int o = 1; o < 16; o <<= 1)
				tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
			float mn = fmaxf(m_run, tmax), al = expf(m_run - mn), e0 = expf(s0 - mn), e1 = expf(s1 - mn);
			float es = e0 + e1;
#pragma unroll
			for (int o = 1; o < 16; o <<= 1)
				es += __shfl_xor_sync(0xffffffffu, es, o);
			l_run = l_run * al + es;
			m_run = mn;
			/* the values' scale folded into P (selected, not multiplied: a row past the context
			 * may have any scale) */
			float f0 = 1.0f, f1 = 1.0f;
			if constexpr (PSC) {
				float4 sc = *(const float4 *)&scs[pp * 2];
				f0 = ok0 ? sc.x : 0.0f, f1 = ok1 ? sc.z : 0.0f;
			} else if constexpr (FMT == ENG_KV_FP8_TENSOR) {
				f0 = f1 = a.tscale;
			}
			*(uint32_t *)&Ps[h * MLA_PS + pp] = cu_pack_bf16(e0 * f0, e1 * f1);
			if ((tid & 15) == 0)
				alpha[h] = al;
		}
		__syncthreads();

		/* O += P . C: warp w owns the column pairs of n8 tiles (2 pi, 2 pi + 1), pi = w + 8 jj */
		{
			float al0 = alpha[g], al1 = alpha[g + 8];
#pragma unroll
			for (int j = 0; j < 8; j++)
				acc[j][0] *= al0, acc[j][1] *= al0, acc[j][2] *= al1, acc[j][3] *= al1;
#pragma unroll
			for (int kk = 0; kk < MLA_NP / 16; kk++) {
				uint32_t pa0, pa1, pa2, pa3;
				cu_ldsm_x4(pa0, pa1, pa2, pa3, &Ps[(lane & 15) * MLA_PS + kk * 16 + (lane >> 4) * 8]);
				/* x4.trans: (pos 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) */
				const __nv_bfloat16 *cp = Kc + (size_t)(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * KS;
#pragma unroll
				for (int jj = 0; jj < 4; jj++) {
					int pi = w + MLA_NW * jj;
					if (RC || 2 * pi < R / 8) {
						/* 8-bit: the swizzled tile (this lane's row is lane % 8 modulo 8) */
						int ch = Q8 ? (2 * pi + (lane >> 4)) ^ mla_sw(lane & 7) : 2 * pi + (lane >> 4);
						uint32_t b0, b1, b2, b3;
						cu_ldsm_x4_trans(b0, b1, b2, b3, cp + ch * 8);
						cu_mma_bf16(acc[2 * jj], pa0, pa1, pa2, pa3, b0, b1);
						cu_mma_bf16(acc[2 * jj + 1], pa0, pa1, pa2, pa3, b2, b3);
					}
				}
			}
		}
		st = st + 1 == nst ? 0 : st + 1;
		stn = stn + 1 == nst ? 0 : stn + 1;
	}
	cu_cp_async_wait<0>(); /* only empty groups are left; none may outlive the block */

	if ((tid & 15) == 0)
		lrow[tid >> 4] = l_run, mrow[tid >> 4] = m_run;
	__syncthreads();
#pragma unroll
	for (int jj = 0; jj < 4; jj++) {
		int pi = w + MLA_NW * jj;
		if (!RC && 2 * pi >= R / 8)
			break;
#pragma unroll
		for (int b = 0; b < 2; b++) {
			int col = (2 * pi + b) * 8 + 2 * t4;
#pragma unroll
			for (int half = 0; half < 2; half++) {
				int row = g + half * 8, hh = hg0 + row;
				float v0 = acc[2 * jj + b][half * 2], v1 = acc[2 * jj + b][half * 2 + 1];
				if (a.n_split == 1) {
					if (hh < a.nh) {
						float inv = 1.0f / lrow[row];
						*(float2 *)(a.out + ((size_t)i * a.nh + hh) * R + col) =
							make_float2(v0 * inv, v1 * inv);
					}
				} else {
					*(float2 *)(a.po + (pidx + row) * R + col) = make_float2(v0, v1);
				}
			}
		}
	}
	if (a.n_split > 1 && tid < 16)
		a.pml[(pidx + tid) * 2] = mrow[tid], a.pml[(pidx + tid) * 2 + 1] = lrow[tid];
}

/* out (n, nh, R) from the splits' unnormalised partials and their (max, sum) per head: the split
 * weights first (shared memory), then every column's sum with its loads independent. */
#define MLA_MAXSPLIT 1024
__global__ void mla_combine_kernel(const float *po, const float *pml, int n_split, int hgroups, int nh, int R,
				   float *out)
{
	__shared__ float wsm[MLA_MAXSPLIT], red[32];
	cu_pdl_wait();
	int h = blockIdx.x, i = blockIdx.y, z = h / 16, row = h % 16, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	int nw = blockDim.x >> 5;
	size_t base = ((size_t)i * n_split * hgroups + z) * 16 + row, step = (size_t)hgroups * 16;
	/* the splits' max and weighted sum, reduced over the block (a serial loop over hundreds of
	 * splits was most of this kernel's time) */
	float M = -INFINITY;
	for (int s = threadIdx.x; s < n_split; s += blockDim.x) {
		wsm[s] = pml[(base + s * step) * 2];
		M = fmaxf(M, wsm[s]);
	}
	M = cu_warp_max(M);
	if (lane == 0)
		red[w] = M;
	__syncthreads();
	M = -INFINITY;
	for (int k = 0; k < nw; k++)
		M = fmaxf(M, red[k]);
	__syncthreads(); /* red is reused below */
	float L = 0.0f;
	for (int s = threadIdx.x; s < n_split; s += blockDim.x) {
		float l = pml[(base + s * step) * 2 + 1];
		wsm[s] = l > 0.0f ? expf(wsm[s] - M) : 0.0f;
		L += l * wsm[s];
	}
	L = cu_warp_sum(L);
	if (lane == 0)
		red[w] = L;
	__syncthreads();
	L = 0.0f;
	for (int k = 0; k < nw; k++)
		L += red[k];
	float inv = 1.0f / L;
	for (int d = blockIdx.z * blockDim.x + threadIdx.x; d < R; d += gridDim.z * blockDim.x) {
		float v = 0.0f;
#pragma unroll 8
		for (int s = 0; s < n_split; s++)
			if (wsm[s] != 0.0f) /* empty splits wrote no partials */
				v += wsm[s] * po[(base + s * step) * R + d];
		out[((size_t)i * nh + h) * R + d] = v * inv;
	}
}

/* attn_mla_uv's second kernel: each block of head h's uv GEMV (16 rows of uv[h], gemv_mma) merges
 * the head's splits for its nt tokens itself, as mla_combine_kernel does (the same weights, the
 * values summed in the same order; the weights' total in another past 32 splits), into a bf16 copy
 * in shared memory, and multiplies: no out round trip and one launch fewer. The (dv / 16) blocks of
 * a head each read its splits' partials (L2). */
#define MLA_UV_MAXT 2
#define MLA_UV_MAXSPLIT 64
__global__ void __launch_bounds__(MMA_WARPS * 32)
mla_uv_kernel(const float *po, const float *pml, int n_split, int hgroups, int R, int nt, const void *const *tab,
	      size_t ld, int rows, float *att, int ldy, int hy)
{
	extern __shared__ __align__(16) uint8_t uv_smem[]; /* nt rows of R + 8 bf16 */
	__shared__ float red[MMA_WARPS][32][4];
	__shared__ float wsm[MLA_UV_MAXT][MLA_UV_MAXSPLIT], inv[MLA_UV_MAXT];
	int h = blockIdx.y, row0 = blockIdx.x * 16, z = h / 16, hr = h % 16;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
	const uint16_t *w[1] = {(const uint16_t *)tab[h]};
	gemv_prefetch<uint16_t, 2>(w[0], ld, row0 + 2 * warp, rows, R);
	cu_pdl_wait();
	size_t step = (size_t)hgroups * 16;
	/* a warp a token: the splits' max, their weights and the sum */
	if (warp < nt) {
		size_t base = ((size_t)warp * n_split * hgroups + z) * 16 + hr;
		float M = -INFINITY, L = 0.0f;
		for (int s = lane; s < n_split; s += 32)
			M = fmaxf(M, pml[(base + s * step) * 2]);
		M = cu_warp_max(M);
		for (int s = lane; s < n_split; s += 32) {
			float l = pml[(base + s * step) * 2 + 1];
			wsm[warp][s] = l > 0.0f ? expf(pml[(base + s * step) * 2] - M) : 0.0f;
			L += l * wsm[warp][s];
		}
		L = cu_warp_sum(L);
		if (lane == 0)
			inv[warp] = 1.0f / L;
	}
	__syncthreads();
	uint16_t *xs = (uint16_t *)uv_smem;
	for (int i = 0; i < nt; i++) {
		size_t base = ((size_t)i * n_split * hgroups + z) * 16 + hr;
		for (int d = 2 * threadIdx.x; d < R; d += 2 * blockDim.x) {
			float vx = 0.0f, vy = 0.0f;
#pragma unroll 8
			for (int s = 0; s < n_split; s++)
				if (wsm[i][s] != 0.0f) { /* empty splits wrote no partials */
					float2 p = *(const float2 *)(po + (base + s * step) * R + d);
					vx += wsm[i][s] * p.x, vy += wsm[i][s] * p.y;
				}
			*(uint32_t *)(xs + (size_t)i * (R + 8) + d) = cu_pack_bf16(vx * inv[i], vy * inv[i]);
		}
	}
	__syncthreads();
	float c[1][4] = {}, v[1][4];
	gemv_mma_acc<1, MMA_U, true>(w, ld, row0, rows, R, xs + (size_t)min(g, nt - 1) * (R + 8), c);
	if (!gemv_mma_red<1>(c, red, v))
		return;
#pragma unroll
	for (int j = 0; j < 4; j++) {
		int row = row0 + g + (j >= 2 ? 8 : 0), tok = 2 * t4 + (j & 1);
		if (row < rows && tok < nt)
			att[(size_t)tok * ldy + (size_t)h * hy + row] = v[0][j];
	}
}

template <int FMT, int RC> static void mla_launch_rc(struct cu *c, dim3 grid, size_t smem, const mla_args &a)
{
	static size_t raised; /* the largest limit set so far (set outside recorded steps' hot path) */
	if (smem > 48 * 1024 && smem > raised) {
		CU_CHECK(cudaFuncSetAttribute(mla_mma_kernel<FMT, RC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
					      (int)smem));
		/* two blocks an SM need most of its shared memory (a hint: L1 keeps the rest) */
		CU_CHECK(cudaFuncSetAttribute(mla_mma_kernel<FMT, RC>, cudaFuncAttributePreferredSharedMemoryCarveout,
					      (int)cudaSharedmemCarveoutMaxShared));
		raised = smem;
	}
	cu_launch(c, mla_mma_kernel<FMT, RC>, grid, MLA_NW * 32, smem, a);
}

template <int FMT> static void mla_launch(struct cu *c, dim3 grid, size_t smem, const mla_args &a)
{
	if (a.R == 512 && a.dr == 64)
		mla_launch_rc<FMT, 512>(c, grid, smem, a);
	else
		mla_launch_rc<FMT, 0>(c, grid, smem, a);
}

/* Whether attn_mla_uv may merge the splits in the uv GEMV: its shapes (as matmul_heads's tensor-core
 * path takes them) and few tokens (each block merges all of its head's). */
static int mla_uv_ok(struct cu *c, const struct eng_w *uv, int nh, int R, int n)
{
	if (!uv || c->exact || n > MLA_UV_MAXT || c->prop.major < 8 || R % 32 || uv[0].cols != R)
		return 0;
	for (int h = 0; h < nh; h++)
		if (uv[h].dt != ENG_DT_BF16 || uv[h].rows != uv[0].rows || uv[h].cols != R || uv[h].ld != uv[0].ld ||
		    (uintptr_t)uv[h].data % 16 || (uv[h].ld * 2) % 16)
			return 0;
	return 1;
}

/* attn_mla into out; with uv, then att = each head's out through uv[h] (attn_mla_uv) */
static void mla_attend(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		       const float *q_lat, const float *q_pe, int nh, int R, int dr, float scale, float *out,
		       const struct eng_w *uv, float *att)
{
	struct cu *c = CU(be);
	if (b->n <= 0)
		return;
	int fmt = kv->fmt;
	int mma_ok = !c->exact && fmt != ENG_KV_F32 && R > 0 && R % 32 == 0 && R <= 512 && dr <= 64 &&
		     dr % 4 == 0 && (R + dr) % 8 == 0 && kv->shape.n_parts == 2 && kv->block_tokens == MLA_T &&
		     kv->shape.part_off[1] == R && (uintptr_t)q_lat % 16 == 0 && (uintptr_t)q_pe % 16 == 0 &&
		     (uintptr_t)out % 8 == 0;
	if (!mma_ok) {
		cu_attn_paged_simt(c, kv, layer, b, q_lat, nh * R, R, 0, 0, q_pe, nh * dr, dr, R, 1, nh, nh, 0, 0, R,
				   scale, out, nh * R);
		if (uv)
			cu_matmul_heads(be, out, nh * R, R, b->n, nh, uv, att, nh * uv[0].rows, uv[0].rows);
		return;
	}
	mla_args a;
	a.pool = kv->pool;
	a.lbb = kv->layer_block_bytes;
	a.n_layers = kv->shape.n_layers;
	a.layer = layer;
	a.bp = cu_batch(c, b, &a.maxb);
	a.n = b->n;
	a.scales_off = eng_kv_scales_off(fmt, (size_t)kv->block_tokens, (size_t)kv->shape.row_elems);
	a.P = kv->shape.n_parts;
	a.tscale = kv->tensor_scale;
	a.q_lat = q_lat, a.q_pe = q_pe, a.nh = nh, a.R = R, a.dr = dr;
	a.W = (R + dr + 15) / 16 * 16;
	a.WS = a.W + 8;
	a.scale = scale;
	a.out = out;

	/* splits: two blocks an SM, at least MLA_MINTPS tiles each. Inside a step the count must not
	 * depend on the positions (the step may be recorded and replayed at others): it is sized for
	 * the table length, the kernel spreads each token's tiles over the splits and splits past a
	 * short context exit at once. Run 7's profile had one tile a split at 512 context take 48 us
	 * (4,900 instructions a warp, mostly staging the queries); the queries now cost ~20 a thread. */
	int tiles, hgroups = cu_div_up(nh, 16);
	if (c->step.active) {
		tiles = a.maxb; /* one tile per cache block */
	} else {
		int max_ctx = 1;
		for (int i = 0; i < b->n; i++)
			max_ctx = SH_MAX(max_ctx, b->pos[i] + 1);
		tiles = cu_div_up(max_ctx, MLA_T);
	}
	/* long contexts: at least MLA_LONGTPS tiles a split, so that a split's partial output (16 x R
	 * fp32, 32 KB: two bf16 tiles) stays a small share of what it reads (run 9: 256 splits of 2
	 * tiles at batch 1 and 8192 context took 67 us, 140 GB/s); short ones: up to MLA_SHORTNS
	 * splits, for latency; never more than two blocks an SM */
	static int shortns = -1;
	if (shortns < 0) {
		const char *e = getenv("KVGATE_CUDA_MLA_NS");
		shortns = e && atoi(e) > 0 ? atoi(e) : MLA_SHORTNS;
	}
	int want = cu_div_up(2L * c->prop.multiProcessorCount, (long)b->n * hgroups);
	int ns = SH_MAX(cu_div_up(tiles, MLA_LONGTPS), SH_MIN(shortns, cu_div_up(tiles, MLA_MINTPS)));
	ns = SH_MAX(1, SH_MIN(SH_MIN(want, ns), MLA_MAXSPLIT));
	a.tps = c->step.active ? MLA_MINTPS : cu_div_up(cu_div_up(tiles, ns), MLA_TPI) * MLA_TPI;
	a.n_split = c->step.active ? ns : cu_div_up(tiles, a.tps);
	a.po = a.pml = NULL;
	if (a.n_split > 1) {
		size_t rows = (size_t)b->n * a.n_split * hgroups * 16;
		a.po = (float *)cu_scratch(c, CU_SCR_OP, rows * ((size_t)R + 2) * sizeof(float));
		a.pml = a.po + rows * R;
	}
	/* 8-bit rows: three stages in flight (two iterations ahead) where two blocks an SM still fit */
	a.nst = 2;
	if (fmt != ENG_KV_BF16) {
		size_t s3 = mla_smem(fmt, R, a.W, R + dr, 3);
		if (s3 <= c->prop.sharedMemPerBlockOptin &&
		    2 * (s3 + c->prop.reservedSharedMemPerBlock) <= c->prop.sharedMemPerMultiprocessor)
			a.nst = 3;
	}
	size_t smem = mla_smem(fmt, R, a.W, R + dr, a.nst);
	dim3 grid(a.n_split, b->n, hgroups);
	switch (fmt) {
	case ENG_KV_BF16:
		mla_launch<ENG_KV_BF16>(c, grid, smem, a);
		break;
	case ENG_KV_FP8:
		mla_launch<ENG_KV_FP8>(c, grid, smem, a);
		break;
	case ENG_KV_INT8:
		mla_launch<ENG_KV_INT8>(c, grid, smem, a);
		break;
	default:
		mla_launch<ENG_KV_FP8_TENSOR>(c, grid, smem, a);
		break;
	}
	if (a.n_split > 1 && a.n_split <= MLA_UV_MAXSPLIT && mla_uv_ok(c, uv, nh, R, b->n)) {
		int dv = uv[0].rows;
		cu_launch(c, mla_uv_kernel, dim3(cu_div_up(dv, 16), nh), MMA_WARPS * 32, (size_t)b->n * (R + 8) * 2,
			  (const float *)a.po, (const float *)a.pml, a.n_split, hgroups, R, b->n, cu_heads_table(c, uv, nh),
			  uv[0].ld, dv, att, nh * dv, dv);
		return;
	}
	if (a.n_split > 1) {
		/* a block per (head, token, 128 columns): the partials are read by 4x more SMs */
		cu_launch(c, mla_combine_kernel, dim3(nh, b->n, cu_div_up(R, 128)), 128, 0, (const float *)a.po,
			  (const float *)a.pml, a.n_split, hgroups, nh, R, out);
	}
	if (uv)
		cu_matmul_heads(be, out, nh * R, R, b->n, nh, uv, att, nh * uv[0].rows, uv[0].rows);
}

void cu_attn_mla(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		 const float *q_lat, const float *q_pe, int nh, int R, int dr, float scale, float *out)
{
	mla_attend(be, kv, layer, b, q_lat, q_pe, nh, R, dr, scale, out, NULL, NULL);
}

void cu_attn_mla_uv(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		    const float *q_lat, const float *q_pe, int nh, int R, int dr, float scale, float *out,
		    const struct eng_w *uv, float *att)
{
	mla_attend(be, kv, layer, b, q_lat, q_pe, nh, R, dr, scale, out, uv, att);
}
