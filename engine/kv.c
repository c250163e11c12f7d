/* kv.c: paged KV cache (see kv.h) and the host row codecs of each format. */
#include "kv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#include <pthread.h>

static float fp8_table[256];
static pthread_once_t fp8_once = PTHREAD_ONCE_INIT;

static void fp8_table_init(void)
{
	for (int i = 0; i < 256; i++)
		fp8_table[i] = eng_fp8_to_f32((uint8_t)i);
}

const char *eng_kv_fmt_name(enum eng_kv_fmt f)
{
	static const char *const n[] = {"f32", "bf16", "fp8", "int8", "fp8_tensor"};
	return (unsigned)f < ENG_KV_NFMT ? n[f] : "?";
}

int eng_kv_fmt_parse(const char *s, enum eng_kv_fmt def)
{
	if (!strcmp(s, "auto"))
		return (int)def;
	if (!strcmp(s, "fp8") || !strcmp(s, "fp8_e4m3"))
		return ENG_KV_FP8;
	if (!strcmp(s, "int8"))
		return ENG_KV_INT8;
	if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16"))
		return ENG_KV_BF16;
	if (!strcmp(s, "f32") || !strcmp(s, "float32"))
		return ENG_KV_F32;
	if (!strcmp(s, "fp8_tensor"))
		return ENG_KV_FP8_TENSOR;
	return -1;
}

struct eng_kv *eng_kv_new(struct eng_backend *be, enum eng_kv_fmt fmt, const struct eng_kv_shape *shape,
			  int n_blocks, struct sh_err *err)
{
	if (shape->n_parts < 1 || shape->n_parts > ENG_KV_MAX_PARTS || shape->part_off[0] != 0 ||
	    shape->part_off[shape->n_parts] != shape->row_elems || n_blocks < 1) {
		sh_errf(err, "kv: bad shape (%d parts, row %d, %d blocks)", shape->n_parts, shape->row_elems, n_blocks);
		return NULL;
	}
	struct eng_kv *kv = sh_calloc(1, sizeof(*kv));
	kv->fmt = fmt;
	kv->shape = *shape;
	kv->block_tokens = ENG_KV_BLOCK_TOKENS;
	kv->n_blocks = n_blocks;
	kv->tensor_scale = 1.0f;
	kv->be = be;
	kv->layer_block_bytes = eng_kv_block_bytes(fmt, (size_t)kv->block_tokens, (size_t)shape->row_elems,
						   (size_t)shape->n_parts);
	size_t bytes = kv->layer_block_bytes * (size_t)shape->n_layers * (size_t)n_blocks;
	kv->pool = be->alloc(be, bytes);
	if (!kv->pool) {
		sh_errf(err, "kv: cannot allocate %zu bytes for %d blocks", bytes, n_blocks);
		free(kv);
		return NULL;
	}
	kv->ref = sh_calloc((size_t)n_blocks, sizeof(int32_t));
	kv->free_list = sh_malloc(sizeof(int32_t) * (size_t)n_blocks);
	for (int i = 0; i < n_blocks; i++)
		kv->free_list[i] = n_blocks - 1 - i; /* pop from the end: block 0 first */
	kv->n_free = n_blocks;
	return kv;
}

void eng_kv_free(struct eng_kv *kv)
{
	if (!kv)
		return;
	kv->be->release(kv->be, kv->pool);
	free(kv->ref);
	free(kv->free_list);
	free(kv);
}

double eng_kv_bytes_per_token_layer(const struct eng_kv *kv)
{
	return (double)kv->layer_block_bytes / kv->block_tokens;
}

void eng_kv_seq_init(struct eng_kv_seq *s)
{
	memset(s, 0, sizeof(*s));
}

static void unref(struct eng_kv *kv, int b)
{
	SH_BUG_ON(kv->ref[b] <= 0);
	if (--kv->ref[b] == 0)
		kv->free_list[kv->n_free++] = b;
}

void eng_kv_seq_release(struct eng_kv *kv, struct eng_kv_seq *s)
{
	for (int i = 0; i < s->n_blocks; i++)
		unref(kv, s->blocks[i]);
	free(s->blocks);
	eng_kv_seq_init(s);
}

int eng_kv_seq_prepare(struct eng_kv *kv, struct eng_kv_seq *s, int pos0, int n, struct sh_err *err)
{
	int B = kv->block_tokens;
	int need = (pos0 + n + B - 1) / B;
	int first = pos0 / B;
	int fresh = need > s->n_blocks ? need - s->n_blocks : 0;
	int cow = 0;
	for (int i = first; i < s->n_blocks && i < need; i++)
		cow += kv->ref[s->blocks[i]] > 1;
	if (fresh + cow > kv->n_free) {
		sh_errf(err, "kv cache full: %d blocks needed, %d free", fresh + cow, kv->n_free);
		return SH_TOOBIG;
	}
	if (need > s->cap) {
		s->cap = need * 2;
		s->blocks = sh_realloc(s->blocks, sizeof(int32_t) * (size_t)s->cap);
	}
	for (int i = first; i < s->n_blocks && i < need; i++) {
		int b = s->blocks[i];
		if (kv->ref[b] == 1)
			continue;
		int nb = kv->free_list[--kv->n_free];
		kv->ref[nb] = 1;
		size_t stride = kv->layer_block_bytes * (size_t)kv->shape.n_layers;
		kv->be->to_dev(kv->be, kv->pool + (size_t)nb * stride, kv->pool + (size_t)b * stride, stride);
		unref(kv, b);
		s->blocks[i] = nb;
	}
	while (s->n_blocks < need) {
		int nb = kv->free_list[--kv->n_free];
		kv->ref[nb] = 1;
		s->blocks[s->n_blocks++] = nb;
	}
	return SH_OK;
}

void eng_kv_seq_fork(struct eng_kv *kv, struct eng_kv_seq *dst, const struct eng_kv_seq *src, int n_tokens)
{
	int nb = (n_tokens + kv->block_tokens - 1) / kv->block_tokens;
	SH_BUG_ON(dst->n_blocks || nb > src->n_blocks || n_tokens > src->n_tokens);
	dst->cap = nb > 0 ? nb : 1;
	dst->blocks = sh_realloc(dst->blocks, sizeof(int32_t) * (size_t)dst->cap);
	for (int i = 0; i < nb; i++) {
		dst->blocks[i] = src->blocks[i];
		kv->ref[src->blocks[i]]++;
	}
	dst->n_blocks = nb;
	dst->n_tokens = n_tokens;
}

/* ---- row codecs ---- */

void eng_kv_row_store(const struct eng_kv *kv, uint8_t *lb, int slot, const float *row)
{
	int E = kv->shape.row_elems, P = kv->shape.n_parts;
	const int *off = kv->shape.part_off;
	switch (kv->fmt) {
	case ENG_KV_F32:
		memcpy(lb + (size_t)slot * E * 4, row, (size_t)E * 4);
		break;
	case ENG_KV_BF16: {
		uint16_t *d = (uint16_t *)(lb + (size_t)slot * E * 2);
		for (int i = 0; i < E; i++)
			d[i] = eng_f32_to_bf16(row[i]);
		break;
	}
	case ENG_KV_FP8_TENSOR: {
		uint8_t *d = lb + (size_t)slot * E;
		float inv = 1.0f / kv->tensor_scale;
		for (int i = 0; i < E; i++)
			d[i] = eng_f32_to_fp8(row[i] * inv);
		break;
	}
	case ENG_KV_FP8:
	case ENG_KV_INT8: {
		uint8_t *d = lb + (size_t)slot * E;
		float *sc = (float *)(lb + eng_kv_scales_off(kv->fmt, (size_t)kv->block_tokens, (size_t)E)) +
			    (size_t)slot * P;
		float qmax = kv->fmt == ENG_KV_FP8 ? ENG_FP8_MAX : ENG_INT8_MAX;
		for (int p = 0; p < P; p++) {
			float amax = 0;
			for (int i = off[p]; i < off[p + 1]; i++)
				amax = fmaxf(amax, fabsf(row[i]));
			float s = amax > 0 ? amax / qmax : 1.0f;
			float inv = 1.0f / s;
			sc[p] = s;
			if (kv->fmt == ENG_KV_FP8) {
				for (int i = off[p]; i < off[p + 1]; i++)
					d[i] = eng_f32_to_fp8(row[i] * inv);
			} else {
				for (int i = off[p]; i < off[p + 1]; i++) {
					float q = rintf(row[i] * inv);
					q = q > 127 ? 127 : q < -127 ? -127 : q;
					d[i] = (uint8_t)(int8_t)q;
				}
			}
		}
		break;
	}
	default:
		SH_BUG_ON(1);
	}
}

void eng_kv_row_load(const struct eng_kv *kv, const uint8_t *lb, int slot, float *row)
{
	pthread_once(&fp8_once, fp8_table_init);
	int E = kv->shape.row_elems, P = kv->shape.n_parts;
	const int *off = kv->shape.part_off;
	switch (kv->fmt) {
	case ENG_KV_F32:
		memcpy(row, lb + (size_t)slot * E * 4, (size_t)E * 4);
		break;
	case ENG_KV_BF16: {
		const uint16_t *d = (const uint16_t *)(lb + (size_t)slot * E * 2);
		for (int i = 0; i < E; i++)
			row[i] = eng_bf16_to_f32(d[i]);
		break;
	}
	case ENG_KV_FP8_TENSOR: {
		const uint8_t *d = lb + (size_t)slot * E;
		for (int i = 0; i < E; i++)
			row[i] = fp8_table[d[i]] * kv->tensor_scale;
		break;
	}
	case ENG_KV_FP8:
	case ENG_KV_INT8: {
		const uint8_t *d = lb + (size_t)slot * E;
		const float *sc = (const float *)(lb + eng_kv_scales_off(kv->fmt, (size_t)kv->block_tokens, (size_t)E)) +
				  (size_t)slot * P;
		for (int p = 0; p < P; p++) {
			float s = sc[p];
			if (kv->fmt == ENG_KV_FP8)
				for (int i = off[p]; i < off[p + 1]; i++)
					row[i] = fp8_table[d[i]] * s;
			else
				for (int i = off[p]; i < off[p + 1]; i++)
					row[i] = (float)(int8_t)d[i] * s;
		}
		break;
	}
	default:
		SH_BUG_ON(1);
	}
}

void eng_kv_part_load(const struct eng_kv *kv, const uint8_t *lb, int slot, int p, float *out)
{
	int E = kv->shape.row_elems, P = kv->shape.n_parts;
	int b = kv->shape.part_off[p], n = kv->shape.part_off[p + 1] - b;
	pthread_once(&fp8_once, fp8_table_init);
	switch (kv->fmt) {
	case ENG_KV_F32:
		memcpy(out, lb + ((size_t)slot * E + b) * 4, (size_t)n * 4);
		break;
	case ENG_KV_BF16: {
		const uint16_t *d = (const uint16_t *)(lb + ((size_t)slot * E + b) * 2);
		for (int i = 0; i < n; i++)
			out[i] = eng_bf16_to_f32(d[i]);
		break;
	}
	case ENG_KV_FP8_TENSOR: {
		const uint8_t *d = lb + (size_t)slot * E + b;
		for (int i = 0; i < n; i++)
			out[i] = fp8_table[d[i]] * kv->tensor_scale;
		break;
	}
	case ENG_KV_FP8:
	case ENG_KV_INT8: {
		const uint8_t *d = lb + (size_t)slot * E + b;
		float s = ((const float *)(lb + eng_kv_scales_off(kv->fmt, (size_t)kv->block_tokens, (size_t)E)))
			[(size_t)slot * P + p];
		if (kv->fmt == ENG_KV_FP8)
			for (int i = 0; i < n; i++)
				out[i] = fp8_table[d[i]] * s;
		else
			for (int i = 0; i < n; i++)
				out[i] = (float)(int8_t)d[i] * s;
		break;
	}
	default:
		SH_BUG_ON(1);
	}
}
