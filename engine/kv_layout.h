/* kv_layout.h: the byte layout of one KV-cache block, shared by the CPU backend and CUDA.
 *
 * A block holds the cache of BLOCK_TOKENS consecutive tokens of one sequence for one layer. A token's
 * "row" is everything one layer caches for it:
 *   MLA (DeepSeek-V2): the normed latent (kv_lora_rank) then the roped key (qk_rope_head_dim): 2 parts;
 *   GQA (Llama family): K of each kv head, then V of each kv head: 2 * n_kv_heads parts of head_dim.
 * Layout of one layer-block, for B tokens, row of E values in P parts:
 *   values: B * E elements of the format's element type (token-major, row after row)
 *   scales: B * P float32 (one per token per part), only for ENG_KV_FP8 and ENG_KV_INT8
 * The values area is padded to 16 bytes so that the scales are aligned for vector loads.
 *
 * Formats:
 *   F32, BF16        plain values ("auto" is F32 on the CPU backend, the model dtype on CUDA)
 *   FP8              e4m3, per token per part scale = amax / 448 (ours)
 *   INT8             symmetric int8, per token per part scale = amax / 127 (ours)
 *   FP8_TENSOR       e4m3 with one per-tensor scale (1.0 unless set), saturating at +-448: vLLM's
 *                    scheme for MLA, kept to measure against (not offered as a CLI choice by default)
 * Every function here is pure and usable from C and CUDA (ENG_HD). */
#ifndef ENG_KV_LAYOUT_H
#define ENG_KV_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#ifdef __CUDACC__
#define ENG_HD __host__ __device__ __forceinline__
#else
#define ENG_HD static inline
#endif

#define ENG_KV_BLOCK_TOKENS 16
#define ENG_KV_MAX_PARTS 130 /* 2 * 64 kv heads + 2 */

enum eng_kv_fmt {
	ENG_KV_F32 = 0,
	ENG_KV_BF16 = 1,
	ENG_KV_FP8 = 2,
	ENG_KV_INT8 = 3,
	ENG_KV_FP8_TENSOR = 4,
	ENG_KV_NFMT
};

#define ENG_FP8_MAX 448.0f
#define ENG_INT8_MAX 127.0f

/* Bytes of one element of a format. */
ENG_HD size_t eng_kv_elem_bytes(int fmt)
{
	return fmt == ENG_KV_F32 ? 4 : fmt == ENG_KV_BF16 ? 2 : 1;
}

ENG_HD int eng_kv_has_scales(int fmt)
{
	return fmt == ENG_KV_FP8 || fmt == ENG_KV_INT8;
}

/* Offset of the scales area in a layer-block (bytes), 16-aligned. */
ENG_HD size_t eng_kv_scales_off(int fmt, size_t block_tokens, size_t row_elems)
{
	return (block_tokens * row_elems * eng_kv_elem_bytes(fmt) + 15) & ~(size_t)15;
}

/* Bytes of one layer-block. */
ENG_HD size_t eng_kv_block_bytes(int fmt, size_t block_tokens, size_t row_elems, size_t n_parts)
{
	size_t s = eng_kv_scales_off(fmt, block_tokens, row_elems);
	if (eng_kv_has_scales(fmt))
		s += block_tokens * n_parts * sizeof(float);
	return (s + 15) & ~(size_t)15;
}

/* Pinned sizes (the CUDA kernels rely on them). DeepSeek-Coder-V2-Lite: row 576 = 512 + 64, 2 parts. */
#define ENG_KV_MLA_ROW 576
_Static_assert(ENG_KV_BLOCK_TOKENS == 16, "block size is part of the prefix-hash contract");
_Static_assert(sizeof(float) == 4 && sizeof(uint16_t) == 2, "element sizes");
_Static_assert((16 * ENG_KV_MLA_ROW * 2 + 15) / 16 * 16 == 18432, "bf16 MLA block values");
_Static_assert(16 * ENG_KV_MLA_ROW * 1 + 16 * 2 * 4 == 9344, "fp8/int8 MLA block: 9216 values + 128 scales");
_Static_assert(16 * ENG_KV_MLA_ROW * 1 == 9216, "fp8_tensor MLA block");

/* ---- element conversions ---- */

ENG_HD float eng_bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Round to nearest even; NaN stays NaN. */
ENG_HD uint16_t eng_f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

ENG_HD float eng_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
	if (exp == 0) {
		if (man == 0) {
			u = sign;
		} else { /* subnormal: normalise */
			exp = 127 - 15 + 1;
			while (!(man & 0x400)) {
				man <<= 1;
				exp--;
			}
			man &= 0x3ff;
			u = sign | (exp << 23) | (man << 13);
		}
	} else if (exp == 31) {
		u = sign | 0x7f800000u | (man << 13);
	} else {
		u = sign | ((exp + 127 - 15) << 23) | (man << 13);
	}
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* e4m3 (OCP "e4m3fn": no infinities, 0x7f/0xff NaN, max 448) to float. */
ENG_HD float eng_fp8_to_f32(uint8_t v)
{
	int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
	float f;
	if (exp == 0xf && man == 7)
		return NAN;
	if (exp == 0)
		f = ldexpf((float)man, -9); /* subnormal: man/8 * 2^-6 */
	else
		f = ldexpf((float)(8 + man), exp - 10); /* (1 + man/8) * 2^(exp-7) */
	return sign ? -f : f;
}

/* float to e4m3, round to nearest even, saturating to +-448 (as CUDA's __NV_SATFINITE). */
ENG_HD uint8_t eng_f32_to_fp8(float f)
{
	uint8_t sign = signbit(f) ? 0x80 : 0;
	float a = fabsf(f);
	if (a != a)
		return 0x7f;
	if (a >= ENG_FP8_MAX)
		return sign | 0x7e;
	if (a < ldexpf(1.0f, -6)) { /* subnormal range: step 2^-9 */
		float q = rintf(a * 512.0f); /* rintf: ties to even in the default rounding mode */
		return sign | (uint8_t)q;     /* q == 8 is the smallest normal, encoded the same way */
	}
	int e;
	float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
	float q = rintf(m * 16.0f); /* 8..16: 1 + 3 mantissa bits */
	if (q == 16.0f) {
		q = 8.0f;
		e++;
	}
	int exp = e - 1 + 7;
	if (exp > 15 || (exp == 15 && q - 8.0f > 6.0f))
		return sign | 0x7e;
	return sign | (uint8_t)(exp << 3) | (uint8_t)(q - 8.0f);
}

#endif
