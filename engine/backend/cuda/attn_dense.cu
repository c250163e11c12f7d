/* attn_dense.cu: causal attention for one sequence over dense fp32 k/v (the naive MLA prefill):
 * q (n, nh, dq) at positions pos, k (ctx, nh, dq), v (ctx, nh, dv) -> out (n, nh, dv); token i sees
 * keys 0..pos[i] (n < ctx: a chunk that continues earlier positions).
 *
 * Fast path (sm_80+): q, k, v rounded to bf16 by one conversion kernel, then
 *  - flash_kernel (dq 192, dv 128: DeepSeek-V2's shape), FlashAttention-2 style: a block per (head,
 *    64 queries), 4 warps of 16 queries (KVGATE_CUDA_FLASH=128: 128 queries, 8 warps, for A/B timing);
 *    key tiles of 64 up to the last key any of its queries sees,
 *    the next tile's K and V copied with cp.async during the current one's math; S = Q K^T and
 *    O += P V on mma.sync m16n8k16 (bf16 in, fp32 accumulation) with S, P and O in registers and
 *    an online softmax in fp32. No S in memory (the cuBLAS path below wrote 402 MB at 2048 tokens
 *    and took 274 us a call there). KVGATE_CUDA_FLASH=0 turns it off (A/B timing).
 *  - otherwise through cuBLAS (the SIMT kernel alone took 8.8 ms per call at 2048 tokens): S_h (n,
 *    ctx) = scale Q_h K_h^T in fp32 for all heads by one strided-batched GEMM; a softmax kernel (a
 *    block per row) masks the keys past pos[i], normalises and writes P_h in bf16 (zeros where
 *    masked); O_h = P_h V_h by a second batched GEMM, fp32 into out. S and P are materialised in the
 *    op's scratch (16 heads at 2048 tokens: 268 + 134 MB; more heads than fit DENSE_SP_MAX_BYTES go
 *    in groups, two GEMMs per group). Both GEMMs compute the whole (n, ctx) rectangle: causality is
 *    the mask's alone.
 *
 * Exact mode and devices before sm_80: the fp32 SIMT kernel, one block per (head, token), warps over
 * keys with online softmax, as attn_gqa.cu. */
#include <string.h>

#include "engine/backend/cuda/cu.h"

#define DENSE_WARPS 4
#define DENSE_MAXJ 8 /* dims per lane: up to 256 */

__global__ void __launch_bounds__(DENSE_WARPS * 32)
attn_dense_kernel(const float *q, const int32_t *pos, const float *k, const float *v, int ctx, int nh, int dq,
		  int dv, float scale, float *out)
{
	int h = blockIdx.x, i = blockIdx.y, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	int nk = min(pos[i] + 1, ctx);
	const float *qi = q + ((size_t)i * nh + h) * dq;
	float qr[DENSE_MAXJ], o[DENSE_MAXJ];
#pragma unroll
	for (int j = 0; j < DENSE_MAXJ; j++) {
		int d = lane + 32 * j;
		qr[j] = d < dq ? qi[d] : 0.0f;
		o[j] = 0.0f;
	}
	float m = -INFINITY, l = 0.0f;
	for (int p = w; p < nk; p += DENSE_WARPS) {
		const float *kp = k + ((size_t)p * nh + h) * dq, *vp = v + ((size_t)p * nh + h) * dv;
		float s = 0.0f;
#pragma unroll
		for (int j = 0; j < DENSE_MAXJ; j++) {
			int d = lane + 32 * j;
			if (d < dq)
				s += qr[j] * kp[d];
		}
		s = cu_warp_sum(s) * scale;
		float mn = fmaxf(m, s), al = expf(m - mn), e = expf(s - mn);
		l = l * al + e;
		m = mn;
#pragma unroll
		for (int j = 0; j < DENSE_MAXJ; j++) {
			int d = lane + 32 * j;
			if (d < dv)
				o[j] = o[j] * al + e * vp[d];
		}
	}
	__shared__ float sm[DENSE_WARPS], sl[DENSE_WARPS], so[DENSE_WARPS][32 * DENSE_MAXJ];
	if (lane == 0)
		sm[w] = m, sl[w] = l;
#pragma unroll
	for (int j = 0; j < DENSE_MAXJ; j++)
		so[w][lane + 32 * j] = o[j];
	__syncthreads();
	float M = -INFINITY, L = 0.0f, f[DENSE_WARPS];
#pragma unroll
	for (int x = 0; x < DENSE_WARPS; x++)
		M = fmaxf(M, sm[x]);
#pragma unroll
	for (int x = 0; x < DENSE_WARPS; x++) {
		f[x] = sl[x] > 0.0f ? expf(sm[x] - M) : 0.0f;
		L += sl[x] * f[x];
	}
	float *oi = out + ((size_t)i * nh + h) * dv;
	for (int d = threadIdx.x; d < dv; d += blockDim.x) {
		float a = 0.0f;
#pragma unroll
		for (int x = 0; x < DENSE_WARPS; x++)
			a += so[x][d] * f[x];
		oi[d] = a / L;
	}
}

/* ---- fast path ---- */

#define DENSE_SP_MAX_BYTES ((size_t)1 << 30) /* S and P of one GEMM batch: more heads go in groups */
#define SOFTMAX_THREADS 256

/* dst (n values, 8-byte aligned) = bf16(src) for three arrays in one launch; float4 loads when src
 * is 16-byte aligned. */
struct dense_cvt {
	const float *src[3];
	__nv_bfloat16 *dst[3];
	size_t n[3];
};

struct __align__(8) dense_bf16x4 {
	__nv_bfloat162 a, b;
};

__global__ void dense_to_bf16_kernel(dense_cvt a)
{
	size_t stride = (size_t)gridDim.x * blockDim.x, t0 = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
#pragma unroll
	for (int j = 0; j < 3; j++) {
		const float *src = a.src[j];
		__nv_bfloat16 *dst = a.dst[j];
		size_t n = a.n[j], n4 = (uintptr_t)src % 16 == 0 ? n / 4 : 0;
		for (size_t t = t0; t < n4; t += stride) {
			float4 f = ((const float4 *)src)[t];
			dense_bf16x4 o;
			o.a = __floats2bfloat162_rn(f.x, f.y);
			o.b = __floats2bfloat162_rn(f.z, f.w);
			((dense_bf16x4 *)dst)[t] = o;
		}
		for (size_t t = n4 * 4 + t0; t < n; t += stride)
			dst[t] = __float2bfloat16_rn(src[t]);
	}
}

__device__ __forceinline__ float dense_block_reduce(float v, int is_max, float *sh)
{
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	v = is_max ? cu_warp_max(v) : cu_warp_sum(v);
	if (lane == 0)
		sh[w] = v;
	__syncthreads();
	v = lane < SOFTMAX_THREADS / 32 ? sh[lane] : is_max ? -INFINITY : 0.0f;
	v = is_max ? cu_warp_max(v) : cu_warp_sum(v);
	__syncthreads(); /* sh is reused by the next reduction */
	return v;
}

/* One block per row (head of the group, token i) of S (g * n rows, stride lds): p = softmax over
 * keys 0..nk-1 (nk = min(pos[i] + 1, ctx)), zeros for keys nk..ctx-1. Each thread keeps J scores
 * in registers (keys tid + 256 j); keys past 256 J are read again from S in each pass. */
template <int J>
__global__ void __launch_bounds__(SOFTMAX_THREADS)
dense_softmax_kernel(const float *s, size_t lds, const int32_t *pos, int n, int ctx, __nv_bfloat16 *p)
{
	__shared__ float sh[SOFTMAX_THREADS / 32];
	int row = blockIdx.x, tid = threadIdx.x;
	int nk = max(min(pos[row % n] + 1, ctx), 0);
	const float *sr = s + (size_t)row * lds;
	__nv_bfloat16 *pr = p + (size_t)row * lds;
	float x[J], m = -INFINITY, l = 0.0f;
#pragma unroll
	for (int j = 0; j < J; j++) {
		int key = tid + j * SOFTMAX_THREADS;
		x[j] = key < nk ? sr[key] : -INFINITY;
		m = fmaxf(m, x[j]);
	}
	for (int key = tid + J * SOFTMAX_THREADS; key < nk; key += SOFTMAX_THREADS)
		m = fmaxf(m, sr[key]);
	m = dense_block_reduce(m, 1, sh);
#pragma unroll
	for (int j = 0; j < J; j++) {
		x[j] = tid + j * SOFTMAX_THREADS < nk ? expf(x[j] - m) : 0.0f;
		l += x[j];
	}
	for (int key = tid + J * SOFTMAX_THREADS; key < nk; key += SOFTMAX_THREADS)
		l += expf(sr[key] - m);
	l = dense_block_reduce(l, 0, sh);
	float inv = nk > 0 ? 1.0f / l : 0.0f; /* nk == 0 (a negative position): a zero row, as the CPU */
#pragma unroll
	for (int j = 0; j < J; j++) {
		int key = tid + j * SOFTMAX_THREADS;
		if (key < ctx)
			pr[key] = __float2bfloat16_rn(x[j] * inv);
	}
	for (int key = tid + J * SOFTMAX_THREADS; key < ctx; key += SOFTMAX_THREADS)
		pr[key] = __float2bfloat16_rn(key < nk ? expf(sr[key] - m) * inv : 0.0f);
}

/* ---- flash attention (sm_80+) ----
 * A block: queries i0..i0+BM-1 of head h (BM = 16 W for W warps: 64 or 128; i0 = BM qt), warp w
 * rows w*16..w*16+15 of them; lane (g = lane / 4, t4 = lane % 4) holds, as mma fragments do, rows g
 * and g + 8 of its warp's 16: S (16 x 64 a tile) as 8 n8 tiles x 4 fp32, O (16 x DV) as DV/8 n8
 * tiles x 4 fp32, Q (16 x DQ) as DQ/16 A fragments of 4 x bf16x2 (loaded once). The accumulator of
 * S tiles 2kk, 2kk + 1 is, rounded to bf16, the A fragment of P for keys 16kk..16kk+15 (no trip
 * through shared memory). W = 8 (KVGATE_CUDA_FLASH=128): each K/V tile copied to shared memory
 * serves 128 queries, half the L2 -> shared traffic of W = 4 per flop; not faster on the H200 (run
 * 17: 118 vs 113 us at 2048 tokens: shared-memory reads per mma are the same), so W = 4 is the default.
 * Shared memory: two stages, each K (64 rows x (DQ + 8) bf16) then V (64 x (DV + 8)) (rows 16
 * bytes apart modulo 128: ldmatrix's 8 row addresses hit 8 different bank groups); the queries
 * (BM rows x (DQ + 8)) are staged once from stage 1 on (over stage 1, and past it for W = 8), read
 * into registers before the first loop barrier, after which tile 1 goes there. Keys past ctx and
 * queries past n are zero-filled by cp.async (src-size 0), never read. One barrier a key tile: it
 * publishes tile kt (waited for by every thread before it) and retires tile kt - 1's stage, into
 * which tile kt + 1 is then copied during tile kt's math. A warp skips the math of tiles past the
 * last key its own rows see (all masked: no contribution). */
#define FL_BN 64 /* keys a tile */

__device__ __forceinline__ float fl_ex2(float x) /* 2^x; 2^-inf = 0 */
{
	float y;
	asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
	return y;
}

/* Rows row0..row0+R-1 of src (row stride lds elements, C 16-byte chunks a row) into dst (row stride
 * S elements), by the block's 32 W threads; rows from lim on are zero-filled. Thread t copies chunks
 * t % 8 + 8k of rows t / 8 + 4W r: 8 threads read a row's 128 contiguous bytes (whole lines) and
 * write 128 contiguous bytes of shared memory (conflict-free), and a thread's addresses are one base
 * plus uniform steps. */
template <int C, int S, int R, int W>
__device__ __forceinline__ void fl_load(__nv_bfloat16 *dst, const __nv_bfloat16 *src, size_t lds, int row0, int lim)
{
	constexpr int RP = 4 * W; /* rows a pass */
	static_assert(C % 8 == 0 && R % RP == 0, "8 threads a row, 4 W rows a pass");
	int tr = (int)threadIdx.x >> 3, tc = ((int)threadIdx.x & 7) * 8;
	const __nv_bfloat16 *sb = src + (size_t)(row0 + tr) * lds + tc;
	__nv_bfloat16 *db = dst + tr * S + tc;
#pragma unroll
	for (int r = 0; r < R / RP; r++) {
		int ok = row0 + tr + RP * r < lim;
#pragma unroll
		for (int k = 0; k < C / 8; k++)
			cu_cp_async16(db + RP * r * S + 64 * k, ok ? sb + (size_t)RP * r * lds + 64 * k : src,
				      ok ? 16 : 0);
	}
}

/* elements (bf16) of a stage (K then V of a tile), and the block's shared memory in bytes */
template <int DQ, int DV> __host__ __device__ static constexpr int flash_stage()
{
	return FL_BN * ((DQ + 8) + (DV + 8));
}

template <int DQ, int DV, int W> static constexpr size_t flash_smem()
{
	return (size_t)(flash_stage<DQ, DV>() + (flash_stage<DQ, DV>() > 16 * W * (DQ + 8) ? flash_stage<DQ, DV>()
											    : 16 * W * (DQ + 8))) *
	       sizeof(__nv_bfloat16);
}

/* grid (nh, ceil(n / BM)): blockIdx.y counts query tiles from the last (the most keys under
 * causality) so that the longest blocks start first. sl2 = scale * log2(e). */
template <int DQ, int DV, int W>
__global__ void __launch_bounds__(W * 32, 8 / W)
flash_kernel(const __nv_bfloat16 *qb, const int32_t *pos, const __nv_bfloat16 *kb, const __nv_bfloat16 *vb, int n,
	     int ctx, int nh, float sl2, float *out)
{
	constexpr int BM = 16 * W;              /* queries a block */
	static_assert(DQ % 16 == 0 && DV % 16 == 0 && (W == 4 || W == 8) && FL_BN % (4 * W) == 0, "shape");
	constexpr int KS = DQ + 8, VS = DV + 8; /* shared row strides (bf16) */
	constexpr int STG = flash_stage<DQ, DV>();
	constexpr int NT = FL_BN / 8;           /* n8 tiles of S */
	constexpr int KQ = DQ / 16;             /* k16 steps of Q K^T */
	constexpr int OT = DV / 8;              /* n8 tiles of O */
	extern __shared__ __align__(16) uint8_t fl_smem[];
	__nv_bfloat16 *sm = (__nv_bfloat16 *)fl_smem; /* stage s: K at sm + s STG, V at + FL_BN KS */

	int h = blockIdx.x, i0 = ((int)gridDim.y - 1 - (int)blockIdx.y) * BM;
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
	size_t ldq = (size_t)nh * DQ, ldv = (size_t)nh * DV;
	const __nv_bfloat16 *qh = qb + (size_t)h * DQ, *kh = kb + (size_t)h * DQ, *vh = vb + (size_t)h * DV;

	/* the last key each of my two rows sees (< 0: none; rows past n see none and are not written),
	 * the last any row of my warp sees, and the last any row of the block sees (each warp finds it
	 * alone: rows lane + 32 x) */
	int r0 = i0 + w * 16 + g, r1 = r0 + 8;
	int lim0 = r0 < n ? min(pos[r0], ctx - 1) : -1, lim1 = r1 < n ? min(pos[r1], ctx - 1) : -1;
	int wmax = __reduce_max_sync(0xffffffffu, max(lim0, lim1));
	int kmax = -1;
#pragma unroll
	for (int x = 0; x < W / 2; x++) {
		int ra = i0 + lane + 32 * x;
		kmax = max(kmax, ra < n ? min(pos[ra], ctx - 1) : -1);
	}
	kmax = __reduce_max_sync(0xffffffffu, kmax);
	int nkt = kmax < 0 ? 0 : kmax / FL_BN + 1;  /* key tiles of the block */
	int wkt = wmax < 0 ? 0 : wmax / FL_BN + 1;  /* of them, those my warp computes */

	/* the queries (from stage 1 on) and key tile 0 (stage 0) */
	fl_load<DQ / 8, KS, BM, W>(sm + STG, qh, ldq, i0, n);
	if (nkt > 0) {
		fl_load<DQ / 8, KS, FL_BN, W>(sm, kh, ldq, 0, ctx);
		fl_load<DV / 8, VS, FL_BN, W>(sm + FL_BN * KS, vh, ldv, 0, ctx);
	}
	cu_cp_async_commit();
	cu_cp_async_wait<0>();
	__syncthreads();

	/* Q fragments, ldmatrix x4: matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
	 * of the warp's 16 rows and the k-step's 16 columns = a0, a1, a2, a3; lane l gives row l % 8
	 * of matrix l / 8. Stage 1 is overwritten only after the loop's first barrier. */
	uint32_t qf[KQ][4];
	{
		const __nv_bfloat16 *qs = sm + STG + (w * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * KS + (lane >> 4) * 8;
#pragma unroll
		for (int ks = 0; ks < KQ; ks++)
			cu_ldsm_x4(qf[ks], qs + ks * 16);
	}

	/* K (non-trans, key rows): matrices (keys 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) =
	 * b0, b1 of S tile 2np, b0, b1 of tile 2np + 1. V (trans, key rows): (keys 0-7, cols 0-7),
	 * (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) = b0, b1 of O tile 2np, b0, b1 of tile 2np + 1. */
	const int koff = ((lane & 7) + (lane >> 4) * 8) * KS + ((lane >> 3) & 1) * 8;
	const int voff = FL_BN * KS + ((lane & 7) + ((lane >> 3) & 1) * 8) * VS + (lane >> 4) * 8;
	float o[OT][4];
#pragma unroll
	for (int t = 0; t < OT; t++)
		o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
	float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* running max (log2 units), partial sums */
	int limlo = min(lim0, lim1);

	for (int kt = 0; kt < nkt; kt++) {
		int st = kt & 1;
		if (kt > 0)
			cu_cp_async_wait<0>(); /* tile kt (this thread's part) has landed */
		__syncthreads(); /* everyone's part of it has; stage st ^ 1 (tile kt - 1, or Q) is free */
		if (kt + 1 < nkt) {
			fl_load<DQ / 8, KS, FL_BN, W>(sm + (st ^ 1) * STG, kh, ldq, (kt + 1) * FL_BN, ctx);
			fl_load<DV / 8, VS, FL_BN, W>(sm + (st ^ 1) * STG + FL_BN * KS, vh, ldv, (kt + 1) * FL_BN, ctx);
			cu_cp_async_commit();
		}
		if (kt >= wkt)
			continue; /* every key of the tile is past my warp's rows' last */

		/* S = Q K^T */
		float s[NT][4];
#pragma unroll
		for (int j = 0; j < NT; j++)
			s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
		const __nv_bfloat16 *kp = sm + st * STG + koff;
#pragma unroll
		for (int ks = 0; ks < KQ; ks++) {
#pragma unroll
			for (int np = 0; np < NT / 2; np++) {
				uint32_t b[4];
				cu_ldsm_x4(b, kp + np * 16 * KS + ks * 16);
				cu_mma_bf16(s[2 * np], qf[ks], b[0], b[1]);
				cu_mma_bf16(s[2 * np + 1], qf[ks], b[2], b[3]);
			}
		}

		/* online softmax in log2 units; s[j][e] is (row g, key kt*64 + 8j + 2t4 + e), s[j][2 + e]
		 * row g + 8. A row with no key yet keeps m = -inf: its exponents are taken against 0
		 * (2^-inf = 0, never -inf - -inf). */
		int key0 = kt * FL_BN + 2 * t4;
		bool msk = kt * FL_BN + FL_BN - 1 > limlo;
		float mx0 = m0, mx1 = m1;
#pragma unroll
		for (int j = 0; j < NT; j++) {
#pragma unroll
			for (int e = 0; e < 2; e++) {
				float x0 = s[j][e] * sl2, x1 = s[j][2 + e] * sl2;
				if (msk) {
					int key = key0 + 8 * j + e;
					x0 = key > lim0 ? -INFINITY : x0;
					x1 = key > lim1 ? -INFINITY : x1;
				}
				s[j][e] = x0, s[j][2 + e] = x1;
				mx0 = fmaxf(mx0, x0), mx1 = fmaxf(mx1, x1);
			}
		}
#pragma unroll
		for (int x = 1; x < 4; x <<= 1) { /* the 4 lanes of a row */
			mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
			mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
		}
		float mu0 = mx0 == -INFINITY ? 0.0f : mx0, mu1 = mx1 == -INFINITY ? 0.0f : mx1;
		float al0 = fl_ex2(m0 - mu0), al1 = fl_ex2(m1 - mu1);
		m0 = mx0, m1 = mx1;
		float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
		for (int j = 0; j < NT; j++) {
#pragma unroll
			for (int e = 0; e < 2; e++) {
				s[j][e] = fl_ex2(s[j][e] - mu0), s[j][2 + e] = fl_ex2(s[j][2 + e] - mu1);
				ps0 += s[j][e], ps1 += s[j][2 + e];
			}
		}
		l0 = l0 * al0 + ps0, l1 = l1 * al1 + ps1; /* this lane's columns only: summed at the end */
#pragma unroll
		for (int t = 0; t < OT; t++)
			o[t][0] *= al0, o[t][1] *= al0, o[t][2] *= al1, o[t][3] *= al1;

		/* O += P V: P's A fragment for keys 16kk.. = S tiles 2kk (a0, a1) and 2kk + 1 (a2, a3) */
		const __nv_bfloat16 *vp = sm + st * STG + voff;
#pragma unroll
		for (int kk = 0; kk < FL_BN / 16; kk++) {
			uint32_t a[4] = {cu_pack_bf16(s[2 * kk][0], s[2 * kk][1]),
					 cu_pack_bf16(s[2 * kk][2], s[2 * kk][3]),
					 cu_pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
					 cu_pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
			for (int np = 0; np < OT / 2; np++) {
				uint32_t b[4];
				cu_ldsm_x4_trans(b, vp + kk * 16 * VS + np * 16);
				cu_mma_bf16(o[2 * np], a, b[0], b[1]);
				cu_mma_bf16(o[2 * np + 1], a, b[2], b[3]);
			}
		}
	}
	/* nothing is left in flight (the last tile issues no copy); none may outlive the block */
	cu_cp_async_wait<0>();

#pragma unroll
	for (int x = 1; x < 4; x <<= 1) {
		l0 += __shfl_xor_sync(0xffffffffu, l0, x);
		l1 += __shfl_xor_sync(0xffffffffu, l1, x);
	}
	/* no key (a negative position): a zero row, as the CPU */
	float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
	if (r0 < n) {
		float *op = out + ((size_t)r0 * nh + h) * DV + 2 * t4;
#pragma unroll
		for (int t = 0; t < OT; t++)
			*(float2 *)(op + 8 * t) = make_float2(o[t][0] * inv0, o[t][1] * inv0);
	}
	if (r1 < n) {
		float *op = out + ((size_t)r1 * nh + h) * DV + 2 * t4;
#pragma unroll
		for (int t = 0; t < OT; t++)
			*(float2 *)(op + 8 * t) = make_float2(o[t][2] * inv1, o[t][3] * inv1);
	}
}

template <int DQ, int DV, int W>
static void flash_launch(struct cu *c, const __nv_bfloat16 *qb, const int32_t *dpos, int n, const __nv_bfloat16 *kb,
			 const __nv_bfloat16 *vb, int ctx, int nh, float scale, float *out)
{
	static size_t raised; /* set once a variant (prefill runs outside recorded steps) */
	constexpr size_t smem = flash_smem<DQ, DV, W>();
	if (smem > 48 * 1024 && smem > raised) {
		CU_CHECK(cudaFuncSetAttribute(flash_kernel<DQ, DV, W>, cudaFuncAttributeMaxDynamicSharedMemorySize,
					      (int)smem));
		/* W = 4: two blocks an SM need most of its shared memory (a hint: L1 keeps the rest) */
		CU_CHECK(cudaFuncSetAttribute(flash_kernel<DQ, DV, W>, cudaFuncAttributePreferredSharedMemoryCarveout,
					      (int)cudaSharedmemCarveoutMaxShared));
		raised = smem;
	}
	flash_kernel<DQ, DV, W><<<dim3(nh, cu_div_up(n, 16 * W)), W * 32, smem, c->st>>>(
		qb, dpos, kb, vb, n, ctx, nh, scale * 1.4426950408889634f, out);
	CU_LAUNCHED();
}

/* The flash kernel takes the shape (dq 192, dv 128), out 8-byte aligned (float2 stores), the
 * device's shared memory, and KVGATE_CUDA_FLASH is not 0. Returns its warps a block (4: 64 queries
 * a block, the default; 8: 128, with KVGATE_CUDA_FLASH=128 where its shared memory fits), 0 for the
 * cuBLAS path. */
static int flash_env = -1; /* 0 off, 4 or 8 warps */

static int flash_ok(struct cu *c, int n, int dq, int dv, const float *out)
{
	if (flash_env < 0) {
		const char *e = getenv("KVGATE_CUDA_FLASH");
		/* 4 warps (64 queries) by default: run 17 timed 113 us a call at 2048 against 118 us for
		 * 8 warps (128 queries, KVGATE_CUDA_FLASH=128) */
		flash_env = e && *e == '0' ? 0 : e && !strcmp(e, "128") ? 8 : 4;
	}
	if (!flash_env || dq != 192 || dv != 128 || (uintptr_t)out % 8 != 0)
		return 0;
	size_t optin = c->prop.sharedMemPerBlockOptin;
	if (flash_env == 8 && optin >= flash_smem<192, 128, 8>() && cu_div_up(n, 128) <= 65535)
		return 8;
	return optin >= flash_smem<192, 128, 4>() && cu_div_up(n, 64) <= 65535 ? 4 : 0;
}

static size_t dense_up256(size_t b)
{
	return (b + 255) & ~(size_t)255;
}

static void dense_fast(struct cu *c, const float *q, const int32_t *dpos, int n, const float *k, const float *v,
		       int ctx, int nh, int dq, int dv, float scale, float *out)
{
	/* rows of S and P: ctx rounded up to 8 elements, so that every row of P starts 16-byte aligned
	 * for the second GEMM; heads in groups of hg whose S and P fit DENSE_SP_MAX_BYTES (all of them
	 * at 16 heads and 2048 tokens: 402 MB) */
	size_t lds = ((size_t)ctx + 7) & ~(size_t)7, head_sp = (size_t)n * lds * 6;
	int hg = (int)SH_MAX((size_t)1, SH_MIN(DENSE_SP_MAX_BYTES / head_sp, (size_t)nh));
	size_t nq = (size_t)n * nh * dq, nkk = (size_t)ctx * nh * dq, nv = (size_t)ctx * nh * dv;
	size_t ns = (size_t)hg * n * lds;
	size_t oq = 0, ok = oq + dense_up256(nq * 2), ov = ok + dense_up256(nkk * 2), os = ov + dense_up256(nv * 2);
	size_t op = os + dense_up256(ns * 4);
	int flash = flash_ok(c, n, dq, dv, out); /* warps a block; no S, P */
	uint8_t *ws = (uint8_t *)cu_scratch(c, CU_SCR_OP, flash ? ov + nv * 2 : op + ns * 2);
	__nv_bfloat16 *qb = (__nv_bfloat16 *)(ws + oq); /* (n, nh, dq) */
	__nv_bfloat16 *kb = (__nv_bfloat16 *)(ws + ok); /* (ctx, nh, dq) */
	__nv_bfloat16 *vb = (__nv_bfloat16 *)(ws + ov); /* (ctx, nh, dv) */

	/* 1. q, k, v to bf16 */
	dense_cvt a = {{q, k, v}, {qb, kb, vb}, {nq, nkk, nv}};
	int blocks = (int)SH_MIN(((nq + nkk + nv) / 4 + 255) / 256 + 1, (size_t)4096);
	dense_to_bf16_kernel<<<blocks, 256, 0, c->st>>>(a);
	CU_LAUNCHED();
	if (flash) {
		if (flash == 8)
			flash_launch<192, 128, 8>(c, qb, dpos, n, kb, vb, ctx, nh, scale, out);
		else
			flash_launch<192, 128, 4>(c, qb, dpos, n, kb, vb, ctx, nh, scale, out);
		return;
	}
	float *s = (float *)(ws + os);                 /* (hg, n, lds) */
	__nv_bfloat16 *p = (__nv_bfloat16 *)(ws + op); /* (hg, n, lds) */

	const float zero = 0.0f, one = 1.0f;
	for (int h0 = 0; h0 < nh; h0 += hg) {
		int g = SH_MIN(hg, nh - h0), rows = g * n;
		/* 2. S_h = scale Q_h K_h^T, row-major (n, ctx) [lds], i.e. column-major (ctx, n) = K_h Q_h^T:
		 * A = K_h, stored column-major as (dq, ctx) [nh*dq], transposed; B = Q_h, stored
		 * column-major as (dq, n) [nh*dq]; head h at + h*dq in both, S_h at + h*n*lds */
		CUBLAS_CHECK(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, ctx, n, dq, &scale,
							kb + (size_t)h0 * dq, CUDA_R_16BF, nh * dq, dq,
							qb + (size_t)h0 * dq, CUDA_R_16BF, nh * dq, dq, &zero, s,
							CUDA_R_32F, (int)lds, (long long)n * (long long)lds, g,
							CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));

		/* 3. P = softmax of each row of S, masked, bf16 */
		if (ctx <= SOFTMAX_THREADS)
			dense_softmax_kernel<1><<<rows, SOFTMAX_THREADS, 0, c->st>>>(s, lds, dpos, n, ctx, p);
		else if (ctx <= 2 * SOFTMAX_THREADS)
			dense_softmax_kernel<2><<<rows, SOFTMAX_THREADS, 0, c->st>>>(s, lds, dpos, n, ctx, p);
		else if (ctx <= 4 * SOFTMAX_THREADS)
			dense_softmax_kernel<4><<<rows, SOFTMAX_THREADS, 0, c->st>>>(s, lds, dpos, n, ctx, p);
		else
			dense_softmax_kernel<8><<<rows, SOFTMAX_THREADS, 0, c->st>>>(s, lds, dpos, n, ctx, p);
		CU_LAUNCHED();

		/* 4. O_h = P_h V_h, row-major (n, dv) [nh*dv], i.e. column-major (dv, n) = V_h^T P_h^T:
		 * A = V_h, stored column-major as (dv, ctx) [nh*dv]; B = P_h, stored column-major as
		 * (ctx, n) [lds]; C = O_h at out + h*dv, stored column-major as (dv, n) [nh*dv] */
		CUBLAS_CHECK(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, dv, n, ctx, &one,
							vb + (size_t)h0 * dv, CUDA_R_16BF, nh * dv, dv, p, CUDA_R_16BF,
							(int)lds, (long long)n * (long long)lds, &zero,
							out + (size_t)h0 * dv, CUDA_R_32F, nh * dv, dv, g,
							CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	}
}

void cu_attn_dense(struct eng_backend *be, const float *q, const int32_t *pos, int n, const float *k, const float *v,
		   int ctx, int n_heads, int dq, int dv, float scale, float *out)
{
	struct cu *c = CU(be);
	if (n <= 0)
		return;
	const int32_t *dpos = cu_upload(c, CU_UP_POS, pos, (size_t)n);
	if (!c->exact && c->prop.major >= 8 && ctx > 0) {
		dense_fast(c, q, dpos, n, k, v, ctx, n_heads, dq, dv, scale, out);
		return;
	}
	SH_BUG_ON(dq > 32 * DENSE_MAXJ || dv > 32 * DENSE_MAXJ);
	attn_dense_kernel<<<dim3(n_heads, n), DENSE_WARPS * 32, 0, c->st>>>(q, dpos, k, v, ctx, n_heads, dq, dv, scale,
									     out);
	CU_LAUNCHED();
}
