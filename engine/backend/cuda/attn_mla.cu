/* attn_mla.cu: MLA decode in latent space over the paged cache, on the tensor cores.
 *
 * One block (8 warps) per (split of the context, token, group of 16 heads). The 16 heads are the M
 * of mma.m16n8k16 (bf16 in, fp32 accumulate): each tile of 16 cached rows (one cache block) is read
 * from memory once, turned into bf16 in shared memory (fp8 and int8 values are exact in bf16; their
 * per-token scales are applied to the scores and folded into the probabilities, never to the
 * values), and serves every head:
 *   scores  S (16 heads, 16 pos) = Q (16, R + dr) . K^T, the latent and rope parts accumulated
 *           apart so that each gets its own scale; warps split the K dimension;
 *   softmax online, a thread per (head, position);
 *   values  O (16 heads, R) += P (16, 16) . C (16 pos, R); warps split the columns.
 * The next tile's loads are issued before the current tile is computed (register double
 * buffering). Long contexts are split over blocks (flash-decoding); a second kernel merges the
 * splits. Queries are rounded to bf16 (as FlashMLA does). Takes R % 32 == 0, R <= 512, dr <= 64,
 * (R + dr) % 8 == 0 and the BF16/FP8/INT8/FP8_TENSOR formats; everything else, and exact mode,
 * goes to the fp32 SIMT kernel (attn_gqa.cu). */
#include "engine/backend/cuda/cu.h"

#define MLA_NW 8     /* warps a block */
#define MLA_T 16     /* positions per tile == ENG_KV_BLOCK_TOKENS */
#define MLA_PS 24    /* row stride of P in bf16 (16 + 8: no bank conflicts) */
#define MLA_MAXNT 8  /* n8 tiles of O per warp: R / 8 / MLA_NW */
#define MLA_LD 5     /* 8-value chunks each thread loads per tile: 16 * 576 / 8 / 256, rounded up */
#define MLA_MINTPS 2 /* tiles a split takes at least: its fixed cost (queries, merge) over more rows */

_Static_assert(MLA_T == ENG_KV_BLOCK_TOKENS, "an MLA tile is one cache block");

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
	float *out, *po, *pml;
};

__device__ __forceinline__ void mma_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
					 uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
		     "{%0,%1,%2,%3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x2_trans(uint32_t &b0, uint32_t &b1, const void *p)
{
	unsigned addr = (unsigned)__cvta_generic_to_shared(p);
	asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
	__nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
	return *(uint32_t *)&v;
}

/* 8 cached values of a row -> 8 bf16 (exact for every format but F32, which never comes here). */
template <int FMT> __device__ __forceinline__ uint4 mla_cvt8(uint4 raw)
{
	if constexpr (FMT == ENG_KV_BF16) {
		return raw;
	} else {
		uint32_t w[2] = {raw.x, raw.y}, o[4];
#pragma unroll
		for (int k = 0; k < 4; k++) {
			uint32_t two = (w[k >> 1] >> ((k & 1) * 16)) & 0xffffu;
			float f0, f1;
			if constexpr (FMT == ENG_KV_INT8) {
				f0 = (float)(int8_t)(two & 0xff);
				f1 = (float)(int8_t)(two >> 8);
			} else {
				__half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, __NV_E4M3);
				float2 f = __half22float2(*(__half2 *)&h);
				f0 = f.x, f1 = f.y;
			}
			o[k] = pack_bf16(f0, f1);
		}
		return make_uint4(o[0], o[1], o[2], o[3]);
	}
}

/* The raw bytes of 8 cached values (16 for bf16, 8 for the 8-bit formats), converted after the
 * load so that a tile's loads are all in flight while the previous tile is computed. */
template <int FMT> __device__ __forceinline__ uint4 mla_raw8(const uint8_t *vals, size_t e)
{
	if constexpr (FMT == ENG_KV_BF16) {
		return *(const uint4 *)(vals + e * 2);
	} else {
		uint2 r = *(const uint2 *)(vals + e);
		return make_uint4(r.x, r.y, 0, 0);
	}
}

/* One split of one token's context for 16 heads. RC: R fixed at compile time (512 with dr 64, the
 * DeepSeek-V2 shape: every index below folds to shifts), or 0 for the runtime shape. */
/* (RC + 64 is a multiple of 16: no padding columns) */
template <int FMT, int RC> __global__ void __launch_bounds__(MLA_NW * 32, 2) mla_mma_kernel(mla_args a)
{
	extern __shared__ __align__(16) uint8_t smem[];
	const int R = RC ? RC : a.R, dr = RC ? 64 : a.dr, E = R + dr;
	const int W = RC ? RC + 64 : a.W, WS = W + 8, cpr = E / 8;
	__nv_bfloat16 *Qs = (__nv_bfloat16 *)smem;  /* (16, WS) */
	__nv_bfloat16 *Ks = Qs + 16 * WS;           /* (16, WS) */
	__nv_bfloat16 *Ps = Ks + 16 * WS;           /* (16, MLA_PS) */
	float *Sr = (float *)(Ps + 16 * MLA_PS);    /* (warps, 2, 16, 16) partial scores */
	float *scl = Sr + MLA_NW * 2 * 256, *scr = scl + 16, *alpha = scr + 16, *lrow = alpha + 16, *mrow = lrow + 16;

	int s = blockIdx.x, i = blockIdx.y, hg0 = blockIdx.z * 16;
	int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g = lane >> 2, t4 = lane & 3;
	cu_pdl_wait(); /* the cache rows and queries come from the kernels before */
	int ctx = a.bp[i] + 1, seq = a.bp[a.n + i];
	const int32_t *tab = a.bp + 2 * a.n + (size_t)seq * a.maxb;
	/* tiles per split: at least a.tps, and enough that n_split splits cover this token's context
	 * (a recorded step fixes n_split and a.tps for every context up to its table length) */
	int ntiles = (ctx + MLA_T - 1) / MLA_T, tps = max(a.tps, (ntiles + a.n_split - 1) / a.n_split);
	int t0 = s * tps, t1 = min(ntiles, t0 + tps);
	size_t pidx = (((size_t)i * a.n_split + s) * gridDim.z + blockIdx.z) * 16;
	if (t0 >= t1) { /* an empty split: weight 0 in the merge, which then never reads its partials */
		if (tid < 16)
			a.pml[(pidx + tid) * 2] = -INFINITY, a.pml[(pidx + tid) * 2 + 1] = 0.0f;
		return;
	}

	/* the first tile's loads go out before the queries' (both are waited for together) */
	uint4 v[MLA_LD];
	float sc_l = 1.0f, sc_r = 1.0f;
	int blk_next = t0 + 1 < t1 ? tab[t0 + 1] : 0;
	auto load_tile = [&](int t, int blk) {
		int valid = min(MLA_T, ctx - t * MLA_T);
		const uint8_t *lb = a.pool + ((size_t)blk * a.n_layers + a.layer) * a.lbb;
#pragma unroll
		for (int j = 0; j < MLA_LD; j++) {
			int x = tid + j * MLA_NW * 32, p = x / cpr, ch = x - p * cpr;
			v[j] = make_uint4(0, 0, 0, 0);
			if (x < MLA_T * cpr && p < valid)
				v[j] = mla_raw8<FMT>(lb, (size_t)p * E + (size_t)ch * 8);
		}
		if (tid < MLA_T) {
			sc_l = sc_r = 0.0f;
			if (tid < valid) {
				if constexpr (FMT == ENG_KV_FP8 || FMT == ENG_KV_INT8) {
					const float *sc = (const float *)(lb + a.scales_off) + (size_t)tid * a.P;
					sc_l = sc[0], sc_r = sc[1];
				} else if constexpr (FMT == ENG_KV_FP8_TENSOR) {
					sc_l = sc_r = a.tscale;
				} else {
					sc_l = sc_r = 1.0f;
				}
			}
		}
	};
	load_tile(t0, tab[t0]);

	/* queries: 16 threads a head, float4 loads all issued before the first use */
	{
		int h = tid >> 4, sub = tid & 15, hh = hg0 + h;
		float4 ql[8], qp = make_float4(0, 0, 0, 0);
#pragma unroll
		for (int j = 0; j < 8; j++) {
			int c4 = sub + 16 * j;
			ql[j] = make_float4(0, 0, 0, 0);
			if (c4 < R / 4 && hh < a.nh)
				ql[j] = *(const float4 *)(a.q_lat + ((size_t)i * a.nh + hh) * R + 4 * c4);
		}
		if (sub < dr / 4 && hh < a.nh)
			qp = *(const float4 *)(a.q_pe + ((size_t)i * a.nh + hh) * dr + 4 * sub);
#pragma unroll
		for (int j = 0; j < 8; j++) {
			int c4 = sub + 16 * j;
			if (c4 < R / 4)
				*(uint2 *)&Qs[h * WS + 4 * c4] = make_uint2(pack_bf16(ql[j].x, ql[j].y), pack_bf16(ql[j].z, ql[j].w));
		}
		if (sub < dr / 4)
			*(uint2 *)&Qs[h * WS + R + 4 * sub] = make_uint2(pack_bf16(qp.x, qp.y), pack_bf16(qp.z, qp.w));
		if constexpr (RC == 0) { /* padding columns: zero in Q and K (tiles never write them) */
			for (int x = tid; x < 16 * (W - E); x += blockDim.x) {
				int r = x / (W - E), col = E + x % (W - E);
				Qs[r * WS + col] = Ks[r * WS + col] = __float2bfloat16_rn(0.0f);
			}
		}
	}

	float m_run = -INFINITY, l_run = 0.0f;
	float acc[MLA_MAXNT][4];
#pragma unroll
	for (int j = 0; j < MLA_MAXNT; j++)
		acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
	const int nks = W / 16, nkl = R / 16, ntiles_n = R / 8;

	for (int t = t0; t < t1; t++) {
		__syncthreads(); /* the previous tile's readers are done with Ks, Ps */
		int valid = min(MLA_T, ctx - t * MLA_T);
#pragma unroll
		for (int j = 0; j < MLA_LD; j++) {
			int x = tid + j * MLA_NW * 32, p = x / cpr, ch = x - p * cpr;
			if (x < MLA_T * cpr)
				*(uint4 *)&Ks[p * WS + ch * 8] = mla_cvt8<FMT>(v[j]);
		}
		if (tid < MLA_T)
			scl[tid] = sc_l, scr[tid] = sc_r;
		if (t + 1 < t1) { /* the next tile's loads fly while this one is computed */
			load_tile(t + 1, blk_next);
			blk_next = t + 2 < t1 ? tab[t + 2] : 0;
		}
		__syncthreads();

		/* scores: warps split the K dimension in steps of 16 */
		float sl[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}}, sr[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
		for (int ks = w; ks < nks; ks += MLA_NW) {
			int k0 = ks * 16 + 2 * t4;
			uint32_t a0 = *(const uint32_t *)&Qs[g * WS + k0], a1 = *(const uint32_t *)&Qs[(g + 8) * WS + k0];
			uint32_t a2 = *(const uint32_t *)&Qs[g * WS + k0 + 8], a3 = *(const uint32_t *)&Qs[(g + 8) * WS + k0 + 8];
#pragma unroll
			for (int nt = 0; nt < 2; nt++) {
				uint32_t b0 = *(const uint32_t *)&Ks[(nt * 8 + g) * WS + k0];
				uint32_t b1 = *(const uint32_t *)&Ks[(nt * 8 + g) * WS + k0 + 8];
				if (ks < nkl)
					mma_bf16(sl[nt], a0, a1, a2, a3, b0, b1);
				else
					mma_bf16(sr[nt], a0, a1, a2, a3, b0, b1);
			}
		}
#pragma unroll
		for (int nt = 0; nt < 2; nt++) {
			float *d0 = Sr + (size_t)(w * 2) * 256, *d1 = Sr + (size_t)(w * 2 + 1) * 256;
			int col = nt * 8 + 2 * t4;
			*(float2 *)&d0[g * 16 + col] = make_float2(sl[nt][0], sl[nt][1]);
			*(float2 *)&d0[(g + 8) * 16 + col] = make_float2(sl[nt][2], sl[nt][3]);
			*(float2 *)&d1[g * 16 + col] = make_float2(sr[nt][0], sr[nt][1]);
			*(float2 *)&d1[(g + 8) * 16 + col] = make_float2(sr[nt][2], sr[nt][3]);
		}
		__syncthreads();

		/* online softmax: a thread per (head, position), 16 lanes a head */
		{
			int h = tid >> 4, p = tid & 15;
			float L = 0.0f, Rr = 0.0f;
#pragma unroll
			for (int x = 0; x < MLA_NW; x++) {
				L += Sr[(x * 2) * 256 + h * 16 + p];
				Rr += Sr[(x * 2 + 1) * 256 + h * 16 + p];
			}
			float sv = p < valid ? (L * scl[p] + Rr * scr[p]) * a.scale : -INFINITY;
			float tmax = sv;
#pragma unroll
			for (int o = 1; o < 16; o <<= 1)
				tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
			float mn = fmaxf(m_run, tmax), al = expf(m_run - mn), e = expf(sv - mn), es = e;
#pragma unroll
			for (int o = 1; o < 16; o <<= 1)
				es += __shfl_xor_sync(0xffffffffu, es, o);
			l_run = l_run * al + es;
			m_run = mn;
			Ps[h * MLA_PS + p] = __float2bfloat16_rn(e * scl[p]);
			if (p == 0)
				alpha[h] = al;
		}
		__syncthreads();

		/* O += P . C: warp w owns the n8 column tiles w, w + MLA_NW, ... */
		uint32_t pa0 = *(const uint32_t *)&Ps[g * MLA_PS + 2 * t4], pa1 = *(const uint32_t *)&Ps[(g + 8) * MLA_PS + 2 * t4];
		uint32_t pa2 = *(const uint32_t *)&Ps[g * MLA_PS + 8 + 2 * t4];
		uint32_t pa3 = *(const uint32_t *)&Ps[(g + 8) * MLA_PS + 8 + 2 * t4];
		float al0 = alpha[g], al1 = alpha[g + 8];
#pragma unroll
		for (int j = 0; j < MLA_MAXNT; j++) {
			int nt = w + j * MLA_NW;
			if (nt < ntiles_n) {
				acc[j][0] *= al0, acc[j][1] *= al0, acc[j][2] *= al1, acc[j][3] *= al1;
				uint32_t b0, b1;
				ldsm_x2_trans(b0, b1, &Ks[(lane & 15) * WS + nt * 8]);
				mma_bf16(acc[j], pa0, pa1, pa2, pa3, b0, b1);
			}
		}
	}

	if ((tid & 15) == 0)
		lrow[tid >> 4] = l_run, mrow[tid >> 4] = m_run;
	__syncthreads();
#pragma unroll
	for (int j = 0; j < MLA_MAXNT; j++) {
		int nt = w + j * MLA_NW;
		if (nt >= ntiles_n)
			break;
		int col = nt * 8 + 2 * t4;
#pragma unroll
		for (int half = 0; half < 2; half++) {
			int row = g + half * 8, hh = hg0 + row;
			float v0 = acc[j][half * 2], v1 = acc[j][half * 2 + 1];
			if (a.n_split == 1) {
				if (hh < a.nh) {
					float inv = 1.0f / lrow[row];
					*(float2 *)(a.out + ((size_t)i * a.nh + hh) * R + col) = make_float2(v0 * inv, v1 * inv);
				}
			} else {
				*(float2 *)(a.po + (pidx + row) * R + col) = make_float2(v0, v1);
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

template <int FMT, int RC> static void mla_launch_rc(struct cu *c, dim3 grid, size_t smem, const mla_args &a)
{
	static size_t raised; /* the largest limit set so far (set outside recorded steps' hot path) */
	if (smem > 48 * 1024 && smem > raised) {
		CU_CHECK(cudaFuncSetAttribute(mla_mma_kernel<FMT, RC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
					      (int)smem));
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

void cu_attn_mla(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		 const float *q_lat, const float *q_pe, int nh, int R, int dr, float scale, float *out)
{
	struct cu *c = CU(be);
	if (b->n <= 0)
		return;
	int fmt = kv->fmt;
	int mma_ok = !c->exact && fmt != ENG_KV_F32 && R % 32 == 0 && R <= 512 && dr <= 64 && dr % 4 == 0 &&
		     (R + dr) % 8 == 0 && 16 * (R + dr) / 8 <= MLA_LD * MLA_NW * 32 && kv->shape.n_parts == 2 &&
		     kv->shape.part_off[1] == R && (uintptr_t)q_lat % 16 == 0 && (uintptr_t)q_pe % 16 == 0 &&
		     (uintptr_t)out % 8 == 0;
	if (!mma_ok) {
		cu_attn_paged_simt(c, kv, layer, b, q_lat, nh * R, R, 0, 0, q_pe, nh * dr, dr, R, 1, nh, nh, 0, 0, R,
				   scale, out, nh * R);
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
	int want = cu_div_up(2L * c->prop.multiProcessorCount, (long)b->n * hgroups);
	int ns = SH_MAX(1, SH_MIN(SH_MIN(want, cu_div_up(tiles, MLA_MINTPS)), MLA_MAXSPLIT));
	a.tps = c->step.active ? MLA_MINTPS : cu_div_up(tiles, ns);
	a.n_split = c->step.active ? ns : cu_div_up(tiles, a.tps);
	a.po = a.pml = NULL;
	if (a.n_split > 1) {
		size_t rows = (size_t)b->n * a.n_split * hgroups * 16;
		a.po = (float *)cu_scratch(c, CU_SCR_OP, rows * ((size_t)R + 2) * sizeof(float));
		a.pml = a.po + rows * R;
	}
	size_t smem = (size_t)16 * a.WS * 2 * 2 + 16 * MLA_PS * 2 + (MLA_NW * 2 * 256 + 16 * 5) * sizeof(float);
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
	if (a.n_split > 1) {
		/* a block per (head, token, 128 columns): the partials are read by 4x more SMs */
		cu_launch(c, mla_combine_kernel, dim3(nh, b->n, cu_div_up(R, 128)), 128, 0, (const float *)a.po,
			  (const float *)a.pml, a.n_split, hgroups, nh, R, out);
	}
}
