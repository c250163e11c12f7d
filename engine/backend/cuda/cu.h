/* cu.h: what the CUDA backend's files share: the backend's state, check macros, uploads of host
 * arrays, scratch, and the device helpers (16-byte weight loads, KV dequantisation, reductions).
 * One op per .cu file; backend.cu holds the table and the memory functions. */
#ifndef ENG_CU_H
#define ENG_CU_H

#if defined(__cplusplus) && !defined(_Static_assert)
#define _Static_assert static_assert /* kv_layout.h's size checks, in C++ */
#endif

extern "C" {
#include "engine/backend.h"
#include "engine/backend/cuda.h"
}

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

/* Every CUDA and cuBLAS call goes through these (STYLE.md rule 14): a failure here is a broken
 * device or a bug, so it prints where and aborts. */
void cu_die(const char *what, const char *msg, const char *file, int line) __attribute__((noreturn));
#define CU_CHECK(x)                                                                          \
	do {                                                                                 \
		cudaError_t e_ = (x);                                                        \
		if (e_ != cudaSuccess)                                                       \
			cu_die(#x, cudaGetErrorString(e_), __FILE__, __LINE__);              \
	} while (0)
#define CUBLAS_CHECK(x)                                                                      \
	do {                                                                                 \
		cublasStatus_t s_ = (x);                                                     \
		if (s_ != CUBLAS_STATUS_SUCCESS)                                             \
			cu_die(#x, cublasGetStatusString(s_), __FILE__, __LINE__);           \
	} while (0)
#define CU_LAUNCHED() CU_CHECK(cudaGetLastError())

/* Host arrays uploaded by content (see cu_upload). */
enum { CU_UP_IDS, CU_UP_POS, CU_UP_BATCH, CU_UP_POS2, CU_UP_N };

/* Scratch slots: an op's own workspace, the GEMM's converted activations (an op that holds
 * CU_SCR_OP may call cu_matmul), and the MoE prefill's buffers when it calls cu_matmul. */
enum { CU_SCR_OP, CU_SCR_GEMM, CU_SCR_MOE, CU_SCR_N };

struct cu_upload {
	int32_t *dev;
	size_t cap;   /* int32s */
	int32_t *host; /* last uploaded contents */
	size_t n;
};

/* Device tables of expert weight pointers, one per MoE layer (keyed by the host eng_w array). */
struct cu_experts {
	const struct eng_w *key;
	const void **dev; /* 3 * E: gate, up, down */
	const void **host; /* the same pointers on the host: the key's second half */
	int E;
};

/* Device tables of per-head weight pointers (matmul_heads), keyed like cu_experts. */
struct cu_heads {
	const struct eng_w *key;
	const void **dev;  /* nh */
	const void **host;
	int nh;
};

/* One recorded decode step (a CUDA graph) and what its launches baked in. */
struct cu_graph {
	const void *owner, *kv, *pool;
	int fmt, n, maxb, variant, exact;
	float tscale;
	unsigned gen;         /* c->gen when run eagerly / recorded: buffers baked in are still there */
	int recorded;         /* 0: ran once eagerly (allocations done), 1: exec holds the graph */
	cudaGraphExec_t exec;
	unsigned long used;   /* for eviction */
};

#define CU_MAX_GRAPHS 96
#define CU_TICKS 4096

/* The step in progress (backend.h step_begin/step_end). Its ids, positions, sequence indices and
 * block tables live at fixed addresses: [ids (n) | pos (n) | seq_idx (n) | table (n_seqs * maxb)],
 * filled in pinned host memory and copied with one memcpy before the step's first op, so that a
 * recorded step replays with new values. maxb is the block-table row length rounded up to a power
 * of two (a recording serves every context up to it). */
struct cu_step {
	int active, capturing, disabled;
	const struct eng_batch *b;
	int n, maxb;
	int32_t *hbuf, *dbuf; /* pinned host / device, cap int32s each */
	size_t cap;
	cudaEvent_t copied;   /* the last upload out of hbuf */
	struct cu_graph g[CU_MAX_GRAPHS];
	int n_g, cur;         /* cur: the entry being recorded, or -1 */
	unsigned long clock;
	long replays, records, eager;
};

struct cu {
	int device;
	cudaDeviceProp prop;
	cudaStream_t st;
	cublasHandle_t blas;
	int exact;
	int pdl;                /* programmatic dependent launch (sm_90+; KVGATE_CUDA_PDL=0 turns it off) */
	int fuse;               /* KVGATE_CUDA_FUSE=1: the fused decode ops (glu, moe_router, norm_matmul2,
				 * moe_ffn_shared, mla_prep, the two-launch MoE decode); see backend.cu */
	int down1;              /* with fuse, one token's MoE down as one GEMV over all its experts
				 * (moe_down1_kernel; KVGATE_CUDA_DOWN1=0: the per-expert blocks) */
	size_t l2pf;            /* the prefetch hint's budget in bytes (KVGATE_CUDA_L2PF, MB; 0: no hint) */
	struct cu_upload up[CU_UP_N];
	void *scratch[CU_SCR_N]; /* workspaces, grown on demand (see cu_scratch) */
	size_t scratch_bytes[CU_SCR_N];
	struct cu_experts *ex;
	int n_ex;
	int32_t *btmp;          /* host staging of cu_batch */
	size_t btmp_cap;
	struct cu_heads *hd;
	int n_hd;
	void *blas_ws;          /* cuBLAS workspace, set once: no allocation inside a recorded step */
	int *tick;              /* CU_TICKS arrival counters, zero between kernels: a kernel uses them after
				 * its wait, so all share them (see cu_arrive) */
	unsigned gen;           /* bumped whenever a buffer a recording may hold is freed */
	struct cu_step step;
};

static inline struct cu *CU(struct eng_backend *be)
{
	return (struct cu *)be->impl;
}

/* Device copy of n int32s at h in slot `slot`, re-uploaded only when the contents changed (the
 * forward pass hands the same positions to several ops). Valid until the next call on that slot. */
const int32_t *cu_upload(struct cu *c, int slot, const int32_t *h, size_t n);
/* A buffer that recorded steps may have baked in goes away: forget them (asserts no recording runs). */
void cu_buffers_moved(struct cu *c);
/* Scratch slot `slot` of at least bytes (device); contents live until the next call on that slot. */
void *cu_scratch(struct cu *c, int slot, size_t bytes);

/* The batch's positions, sequence indices and block tables as one device array:
 * [pos (n) | seq_idx (n) | table (n_seqs * maxb)]; *maxb gets the table row length. */
const int32_t *cu_batch(struct cu *c, const struct eng_batch *b, int *maxb);

/* y (n, rows) [ldy] = x (n, cols) [ldx] . W^T (+ bias) on the stream (matmul.cu); the grouped MoE
 * and the prefill paths use it too. */
void cu_matmul(struct cu *c, const float *x, int ldx, int n, const struct eng_w *w, const float *bias, float *y,
	       int ldy);
/* The device table of nh heads' weight pointers that matmul_heads reads (matmul.cu): made on first
 * use (never inside a recording) and kept. */
const void *const *cu_heads_table(struct cu *c, const struct eng_w *w, int nh);

/* ---- ops (one per file) ---- */
void cu_embed(struct eng_backend *be, const struct eng_w *tab, const int32_t *ids, int n, float *out);
void cu_matmul_op(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w, const float *bias,
		  float *y, int ldy);
void cu_matmul2(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1, float *y1, int ldy1,
		const struct eng_w *w2, float *y2, int ldy2);
void cu_rmsnorm(struct eng_backend *be, float *y, int ldy, const float *x, int ldx, int n, int dim, const float *w,
		float eps);
void cu_add_rmsnorm(struct eng_backend *be, float *x, const float *t, float *y, int n, int dim, const float *w,
		    float eps);
void cu_rope(struct eng_backend *be, float *x, int n, int n_heads, int ld_tok, int ld_head, const int32_t *pos,
	     const struct eng_rope *r);
void cu_silu_mul(struct eng_backend *be, float *g, int ldg, const float *u, int ldu, int n, int dim);
/* whether x (nt <= 8 tokens) . W^T takes the tensor-core GEMV (gemv.cuh's gemv_mma_tile) */
int cu_gemv_mma_ok(struct cu *c, const struct eng_w *w, const float *x, int ldx, int nt);
void cu_glu(struct eng_backend *be, const float *x, int ldx, int n, const struct eng_w *w1, const struct eng_w *w2,
	    float *g, float *u, int ld);
void cu_moe_router(struct eng_backend *be, const struct eng_prenorm *pn, int n, const struct eng_w *w,
		   const struct eng_moe_route *r, float *logits, int32_t *idx, float *wt);
void cu_norm_matmul2(struct eng_backend *be, const struct eng_prenorm *pn, int n, const struct eng_w *w1, float *y1,
		     int ldy1, const struct eng_w *w2, float *y2, int ldy2);
/* whether a prenorm GEMV (gemv.cuh) takes nt tokens of W's width; else cu_prenorm, then the op */
int cu_pn_ok(struct cu *c, const struct eng_w *w, const struct eng_prenorm *pn, int nt);
void cu_prenorm(struct eng_backend *be, const struct eng_prenorm *pn, int n, int dim);
void cu_add(struct eng_backend *be, float *y, const float *x, size_t n);
void cu_kv_write(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b, const float *rows,
		 int ld);
void cu_kv_gather(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_kv_seq *s,
		  int n_tokens, float *out);
void cu_attn_gqa(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		 const float *q, int n_heads, int n_kv_heads, int head_dim, float scale, float *out);
void cu_attn_mla(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		 const float *q_lat, const float *q_pe, int n_heads, int R, int dr, float scale, float *out);
void cu_attn_mla_uv(struct eng_backend *be, const struct eng_kv *kv, int layer, const struct eng_batch *b,
		    const float *q_lat, const float *q_pe, int nh, int R, int dr, float scale, float *out,
		    const struct eng_w *uv, float *att);
void cu_attn_dense(struct eng_backend *be, const float *q, const int32_t *pos, int n, const float *k, const float *v,
		   int ctx, int n_heads, int dq, int dv, float scale, float *out);
void cu_moe_ffn_shared(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx, const float *wt,
		       int K, int E, const struct eng_w *gate, const struct eng_w *up, const struct eng_w *down,
		       const struct eng_w *sh, float *g, float *u, float *out, float *scratch);
void cu_moe_route(struct eng_backend *be, const float *logits, int n, const struct eng_moe_route *r, int32_t *idx,
		  float *wt);
void cu_matmul_heads(struct eng_backend *be, const float *x, int ldx, int hx, int n, int nh, const struct eng_w *w,
		     float *y, int ldy, int hy);
void cu_moe_ffn(struct eng_backend *be, const float *x, int n, int dim, const int32_t *idx, const float *wt,
		int top_k, int n_experts, const struct eng_w *gate, const struct eng_w *up, const struct eng_w *down,
		float *out, float *scratch);
void cu_prefetch(struct eng_backend *be, const struct eng_w *const *w, int nw, int n_tok);
void cu_mla_prep(struct eng_backend *be, struct eng_kv *kv, int layer, const struct eng_batch *b, float *q, int nh,
		 int dn, int dr, float *kva, int R, const float *kv_norm, float eps, const struct eng_rope *rope,
		 const struct eng_w *uk, float *q_lat, float *q_pe_out);

/* SIMT attention over the paged cache, fp32 (attn_gqa.cu): GQA, and MLA where the tensor-core
 * kernel does not apply (F32 cache, exact mode, shapes it does not take). */
void cu_attn_paged_simt(struct cu *c, const struct eng_kv *kv, int layer, const struct eng_batch *b, const float *qa,
			int lda_tok, int da, int ka, int pa, const float *qb, int ldb_tok, int db, int kb, int pb,
			int n_heads, int heads_per_kv, int va, int pv, int dv, float scale, float *out, int ldo_tok);

/* ---- device helpers ---- */
#ifdef __CUDACC__

__device__ __forceinline__ float cu_bf16(uint16_t h)
{
	return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ float cu_f16(uint16_t h)
{
	return __half2float(__ushort_as_half(h));
}

/* e4m3 -> float, exact (hardware conversion on sm_89+, emulated before). */
__device__ __forceinline__ float cu_fp8(uint8_t v)
{
	__half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)v, __NV_E4M3);
	return __half2float(__half(h));
}

/* Weight element types: load VEC consecutive elements as floats. VEC 8 (16-bit) / 4 (f32) are one
 * 16-byte load; VEC 1 is the unaligned fallback. */
template <typename T, int VEC> struct cu_wload;
template <> struct cu_wload<uint16_t, 8> { /* bf16 */
	static __device__ __forceinline__ void load(const uint16_t *p, float *f)
	{
		uint4 v = __ldg((const uint4 *)p);
		uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
		for (int i = 0; i < 4; i++) {
			f[2 * i] = __uint_as_float(w[i] << 16);
			f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
		}
	}
};
struct cu_f16_t { uint16_t v; };
template <> struct cu_wload<cu_f16_t, 8> {
	static __device__ __forceinline__ void load(const cu_f16_t *p, float *f)
	{
		uint4 v = __ldg((const uint4 *)p);
		uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
		for (int i = 0; i < 4; i++) {
			float2 t = __half22float2(*(__half2 *)&w[i]);
			f[2 * i] = t.x;
			f[2 * i + 1] = t.y;
		}
	}
};
template <> struct cu_wload<float, 4> {
	static __device__ __forceinline__ void load(const float *p, float *f)
	{
		float4 v = __ldg((const float4 *)p);
		f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
	}
};
template <> struct cu_wload<uint16_t, 1> {
	static __device__ __forceinline__ void load(const uint16_t *p, float *f) { f[0] = cu_bf16(__ldg(p)); }
};
template <> struct cu_wload<cu_f16_t, 1> {
	static __device__ __forceinline__ void load(const cu_f16_t *p, float *f) { f[0] = cu_f16(__ldg(&p->v)); }
};
template <> struct cu_wload<float, 1> {
	static __device__ __forceinline__ void load(const float *p, float *f) { f[0] = __ldg(p); }
};

__device__ __forceinline__ float cu_warp_sum(float v)
{
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__device__ __forceinline__ float cu_warp_max(float v)
{
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

/* A block's sum of v, returned to every thread (part: 32 floats of shared memory; blockDim a
 * multiple of 32). */
__device__ __forceinline__ float cu_block_sum(float v, float *part)
{
	v = cu_warp_sum(v);
	if ((threadIdx.x & 31) == 0)
		part[threadIdx.x >> 5] = v;
	__syncthreads();
	if (threadIdx.x < 32) {
		float s = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
		s = cu_warp_sum(s);
		if (threadIdx.x == 0)
			part[0] = s;
	}
	__syncthreads();
	return part[0];
}

/* y (dim) = x / rms(x) * w by the whole block, as the CPU computes it up to the sum's order (y may
 * equal x; part: cu_block_sum's). */
__device__ __forceinline__ void cu_rmsnorm_row(float *y, const float *x, int dim, const float *w, float eps,
					       float *part)
{
	float ss = 0;
	for (int d = threadIdx.x; d < dim; d += blockDim.x)
		ss += x[d] * x[d];
	float inv = 1.0f / sqrtf(cu_block_sum(ss, part) / (float)dim + eps);
	for (int d = threadIdx.x; d < dim; d += blockDim.x)
		y[d] = w[d] * (x[d] * inv);
}

/* Rotates pair f (< r.dim / 2) of the head at v in place for position pos: cos and sin of
 * pos * inv_freq[f] in fp32, times mscale, as the CPU; pairs (2f, 2f + 1) or halves (f, f + dim / 2).
 * copy (NULL: none) gets the rotated pair at the same offsets. */
__device__ __forceinline__ void cu_rope_pair(float *v, float *copy, int f, int pos, const struct eng_rope &r)
{
	float a = (float)pos * r.inv_freq[f], sn, cs;
	sincosf(a, &sn, &cs);
	cs *= r.mscale;
	sn *= r.mscale;
	int i0 = r.interleaved ? 2 * f : f, i1 = r.interleaved ? 2 * f + 1 : f + r.dim / 2;
	float a0 = v[i0], b0 = v[i1], y0 = a0 * cs - b0 * sn, y1 = b0 * cs + a0 * sn;
	v[i0] = y0, v[i1] = y1;
	if (copy)
		copy[i0] = y0, copy[i1] = y1;
}

/* ---- tensor-core and async-copy instructions (sm_80+; every CUDA arch built is) ---- */

__device__ __forceinline__ uint32_t cu_pack_bf16(float lo, float hi) /* lo in the low half */
{
	__nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
	return *(uint32_t *)&v;
}

/* c (16x8 fp32) += A (16x16 bf16, row) . B (16x8 bf16, col): mma.m16n8k16 */
__device__ __forceinline__ void cu_mma_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
					    uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
		     "{%0,%1,%2,%3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cu_mma_bf16(float *c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
	cu_mma_bf16(c, a[0], a[1], a[2], a[3], b0, b1);
}

/* ldmatrix x4 (.trans: transposed) from shared memory */
__device__ __forceinline__ void cu_ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const void *p)
{
	unsigned addr = (unsigned)__cvta_generic_to_shared(p);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
		     : "r"(addr));
}

__device__ __forceinline__ void cu_ldsm_x4_trans(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
						 const void *p)
{
	unsigned addr = (unsigned)__cvta_generic_to_shared(p);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
		     : "r"(addr));
}

__device__ __forceinline__ void cu_ldsm_x4(uint32_t (&r)[4], const void *p)
{
	cu_ldsm_x4(r[0], r[1], r[2], r[3], p);
}

__device__ __forceinline__ void cu_ldsm_x4_trans(uint32_t (&r)[4], const void *p)
{
	cu_ldsm_x4_trans(r[0], r[1], r[2], r[3], p);
}

/* cp.async of 16 (8) bytes global -> shared; src_bytes 0 writes zeros and reads nothing */
__device__ __forceinline__ void cu_cp_async16(void *dst, const void *src, int src_bytes)
{
	unsigned d = (unsigned)__cvta_generic_to_shared(dst);
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cu_cp_async8(void *dst, const void *src, int src_bytes)
{
	unsigned d = (unsigned)__cvta_generic_to_shared(dst);
	asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cu_cp_async_commit()
{
	asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N> __device__ __forceinline__ void cu_cp_async_wait()
{
	asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* One element of a cached row, dequantised: values area vals (layer-block base), scales at sc
 * (NULL for unscaled formats), slot, element e of part p. */
struct cu_kvfmt {
	int fmt, E, P;
	size_t scales_off;
	float tscale;
};

__device__ __forceinline__ float cu_kv_elem(const cu_kvfmt &f, const uint8_t *lb, int slot, int e, int p)
{
	size_t i = (size_t)slot * f.E + e;
	switch (f.fmt) {
	case ENG_KV_F32:
		return ((const float *)lb)[i];
	case ENG_KV_BF16:
		return cu_bf16(((const uint16_t *)lb)[i]);
	case ENG_KV_FP8_TENSOR:
		return cu_fp8(lb[i]) * f.tscale;
	case ENG_KV_FP8:
		return cu_fp8(lb[i]) * ((const float *)(lb + f.scales_off))[(size_t)slot * f.P + p];
	default: /* ENG_KV_INT8 */
		return (float)(int8_t)lb[i] * ((const float *)(lb + f.scales_off))[(size_t)slot * f.P + p];
	}
}

static inline cu_kvfmt cu_kvfmt_of(const struct eng_kv *kv)
{
	cu_kvfmt f;
	f.fmt = kv->fmt;
	f.E = kv->shape.row_elems;
	f.P = kv->shape.n_parts;
	f.scales_off = eng_kv_scales_off(kv->fmt, (size_t)kv->block_tokens, (size_t)kv->shape.row_elems);
	f.tscale = kv->tensor_scale;
	return f;
}

/* The layer-block holding position p of the batch token whose table row is tab. */
__device__ __forceinline__ const uint8_t *cu_kv_lb(const uint8_t *pool, size_t lbb, int n_layers, int layer,
						 const int32_t *tab, int p)
{
	return pool + ((size_t)tab[p / ENG_KV_BLOCK_TOKENS] * (size_t)n_layers + (size_t)layer) * lbb;
}

/* Where kv_write stores one layer's rows: the pool, the format, the parts (scale groups). */
struct cu_kvdst {
	uint8_t *pool;
	size_t lbb; /* layer-block bytes */
	int n_layers, layer;
	cu_kvfmt f;
	int off[ENG_KV_MAX_PARTS + 1]; /* part p is [off[p], off[p + 1]) */
};

static inline cu_kvdst cu_kvdst_of(const struct eng_kv *kv, int layer)
{
	cu_kvdst d;
	d.pool = kv->pool, d.lbb = kv->layer_block_bytes, d.n_layers = kv->shape.n_layers, d.layer = layer;
	d.f = cu_kvfmt_of(kv);
	memcpy(d.off, kv->shape.part_off, sizeof(int) * (size_t)(kv->shape.n_parts + 1));
	return d;
}

/* Batch token i's row (f.E values) to its position (bp: cu_batch's array of n tokens and table rows of
 * maxb), encoded with the host codec's arithmetic (kv_layout.h's conversions, the same scale rule: per
 * token per part, amax / 448 for fp8, amax / 127 for int8), so CPU and CUDA caches hold the same bytes
 * for the same rows. By the whole block; with scales, a warp a part. */
__device__ __forceinline__ void cu_kv_store(const cu_kvdst &d, const int32_t *bp, int n, int maxb, int i,
					    const float *row)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	int pos = bp[i], seq = bp[n + i];
	const int32_t *tab = bp + 2 * n + (size_t)seq * maxb;
	uint8_t *lb = (uint8_t *)cu_kv_lb(d.pool, d.lbb, d.n_layers, d.layer, tab, pos);
	int slot = pos % ENG_KV_BLOCK_TOKENS;
	const cu_kvfmt &f = d.f;
	switch (f.fmt) {
	case ENG_KV_F32:
		for (int e = threadIdx.x; e < f.E; e += blockDim.x)
			((float *)lb)[(size_t)slot * f.E + e] = row[e];
		return;
	case ENG_KV_BF16:
		for (int e = threadIdx.x; e < f.E; e += blockDim.x)
			((uint16_t *)lb)[(size_t)slot * f.E + e] = eng_f32_to_bf16(row[e]);
		return;
	case ENG_KV_FP8_TENSOR: {
		float inv = 1.0f / f.tscale;
		for (int e = threadIdx.x; e < f.E; e += blockDim.x)
			lb[(size_t)slot * f.E + e] = eng_f32_to_fp8(row[e] * inv);
		return;
	}
	default:
		break;
	}
	uint8_t *q8 = lb + (size_t)slot * f.E;
	float *sc = (float *)(lb + f.scales_off) + (size_t)slot * f.P;
	float qmax = f.fmt == ENG_KV_FP8 ? ENG_FP8_MAX : ENG_INT8_MAX;
	for (int p = warp; p < f.P; p += nw) {
		int e0 = d.off[p], e1 = d.off[p + 1];
		float amax = 0;
		for (int e = e0 + lane; e < e1; e += 32)
			amax = fmaxf(amax, fabsf(row[e]));
		amax = cu_warp_max(amax);
		float s = amax > 0 ? amax / qmax : 1.0f;
		float inv = 1.0f / s;
		if (lane == 0)
			sc[p] = s;
		if (f.fmt == ENG_KV_FP8) {
			for (int e = e0 + lane; e < e1; e += 32)
				q8[e] = eng_f32_to_fp8(row[e] * inv);
		} else {
			for (int e = e0 + lane; e < e1; e += 32) {
				float q = rintf(row[e] * inv);
				q = q > 127 ? 127 : q < -127 ? -127 : q;
				q8[e] = (uint8_t)(int8_t)q;
			}
		}
	}
}

#endif /* __CUDACC__ */

static inline int cu_div_up(long a, long b)
{
	return (int)((a + b - 1) / b);
}

/* ---- programmatic dependent launch (PDL, sm_90+) ----
 * A kernel launched by cu_launch may start while the kernel before it in the stream is still
 * running (once every block of that one has started), so that its launch, its blocks' start and
 * its prologue overlap the previous kernel's tail. The rule that keeps it correct: such a kernel
 * calls cu_pdl_wait() before it reads anything an earlier kernel wrote and before it writes
 * anything (the wait returns when the previous kernel has finished and its writes are visible);
 * before the wait it may only read what no kernel of the step writes (the weights), or what a
 * kernel at least two launches back wrote: the kernel in between triggered its own dependents only
 * after its wait returned (cu_pdl_wait), so that one had finished. A kernel that
 * was launched without the attribute passes the wait at once. Kernels launched with <<<>>> and
 * cuBLAS's start after the previous kernel ends, as always. */
#ifdef __CUDACC__
__device__ __forceinline__ void cu_pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;\n" ::: "memory");
	asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* A hint: the 128-byte line at p into L2 (weights a kernel is about to stream, before its wait). */
__device__ __forceinline__ void cu_prefetch_l2(const void *p)
{
	asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

/* A hint: bytes (a multiple of 16) at p (16-byte aligned) into L2 by the copy engine, one
 * instruction however long (cp.async.bulk.prefetch, sm_90+; nothing before). */
__device__ __forceinline__ void cu_bulk_prefetch_l2(const void *p, unsigned bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#else
	(void)p, (void)bytes;
#endif
}

/* Last-block-done: a block calls this (every thread) after writing its part of a result; it
 * returns 1 in the block that arrives last of `expect` on counter *tick, which may then read the
 * other blocks' parts (with __ldcg: not through L1) and leaves the counter at 0 for the next use. */
__device__ __forceinline__ int cu_arrive(int *tick, int expect)
{
	__shared__ int last;
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0) {
		last = atomicAdd(tick, 1) == expect - 1;
		if (last)
			*tick = 0;
	}
	__syncthreads();
	if (last)
		__threadfence();
	return last;
}

template <typename... K, typename... A>
static inline void cu_launch(struct cu *c, void (*kernel)(K...), dim3 grid, dim3 block, size_t smem, A... args)
{
	cudaLaunchConfig_t cfg = {};
	cudaLaunchAttribute at[1];
	cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = c->st;
	at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[0].val.programmaticStreamSerializationAllowed = c->pdl;
	cfg.attrs = at, cfg.numAttrs = 1;
	CU_CHECK(cudaLaunchKernelEx(&cfg, kernel, ((K)args)...));
}
#endif

#endif
