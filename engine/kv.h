/* kv.h: the paged KV cache. One pool of blocks (ENG_KV_BLOCK_TOKENS tokens x all layers each, byte
 * layout in kv_layout.h), ref-counted so that sequences can share a prefix; a sequence owns a block
 * table. Writes to a shared block copy it first (copy on write).
 *
 * The pool lives in backend memory (host for the CPU, device for CUDA); block tables and counts live
 * on the host. */
#ifndef ENG_KV_H
#define ENG_KV_H

#include <stddef.h>
#include <stdint.h>

#include "kv_layout.h"
#include "sh.h"

struct eng_backend;

struct eng_kv_shape {
	int n_layers;
	int row_elems;                        /* values per token per layer */
	int n_parts;                          /* scale groups in a row */
	int part_off[ENG_KV_MAX_PARTS + 1];   /* part p is [part_off[p], part_off[p+1]) */
};

struct eng_kv {
	enum eng_kv_fmt fmt;
	struct eng_kv_shape shape;
	int block_tokens;
	int n_blocks;
	size_t layer_block_bytes;   /* eng_kv_block_bytes() */
	uint8_t *pool;              /* n_blocks * n_layers * layer_block_bytes, backend memory */
	float tensor_scale;         /* ENG_KV_FP8_TENSOR: x is stored as e4m3(x / tensor_scale) */
	int32_t *ref;               /* per block; 0 = free */
	int32_t *free_list;
	int n_free;
	struct eng_backend *be;
};

/* A sequence's block table. Embedded by value: eng_kv_seq_init / eng_kv_seq_release. */
struct eng_kv_seq {
	int32_t *blocks;
	int n_blocks, cap;
	int n_tokens;               /* tokens whose rows are written */
};

/* A batch of tokens, possibly of several sequences (flattened, vLLM style): token i of sequence
 * seqs[seq_idx[i]] at position pos[i]; it attends to positions 0..pos[i] of its sequence. */
struct eng_batch {
	int n;
	const int32_t *ids;      /* (n) */
	const int32_t *pos;      /* (n) */
	const int32_t *seq_idx;  /* (n) */
	struct eng_kv_seq **seqs;
	int n_seqs;
	const uint8_t *want_logits; /* (n) or NULL: the last token only */
};

const char *eng_kv_fmt_name(enum eng_kv_fmt f);
/* "auto" gives def; "fp8", "fp8_e4m3", "int8", "bf16"/"bfloat16", "f32"/"float32",
 * "fp8_tensor" (vLLM's scheme). Returns -1 for anything else. */
int eng_kv_fmt_parse(const char *s, enum eng_kv_fmt def);

/* Allocates n_blocks blocks in the backend's memory. Returns NULL (err filled) when that fails. */
struct eng_kv *eng_kv_new(struct eng_backend *be, enum eng_kv_fmt fmt, const struct eng_kv_shape *shape,
			  int n_blocks, struct sh_err *err);
void eng_kv_free(struct eng_kv *kv);
/* Bytes one token costs per layer in this format (values and scales). */
double eng_kv_bytes_per_token_layer(const struct eng_kv *kv);

void eng_kv_seq_init(struct eng_kv_seq *s);
/* Drops the sequence's references; its blocks return to the pool when no one else holds them. */
void eng_kv_seq_release(struct eng_kv *kv, struct eng_kv_seq *s);
/* Makes positions [pos0, pos0 + n) writable: allocates missing blocks, copies shared ones.
 * SH_TOOBIG (err filled) when the pool runs out; the sequence is unchanged then. */
int eng_kv_seq_prepare(struct eng_kv *kv, struct eng_kv_seq *s, int pos0, int n, struct sh_err *err);
/* dst (empty) shares src's first n_tokens tokens: full blocks by reference; the last partial block
 * is shared too and copied on dst's first write into it. */
void eng_kv_seq_fork(struct eng_kv *kv, struct eng_kv_seq *dst, const struct eng_kv_seq *src, int n_tokens);

/* Pointer to the layer-block of a block (backend memory). */
static inline uint8_t *eng_kv_block(const struct eng_kv *kv, int block, int layer)
{
	return kv->pool + ((size_t)block * (size_t)kv->shape.n_layers + (size_t)layer) * kv->layer_block_bytes;
}

/* Host-side row codecs over host-visible blocks (the CPU backend; tests). */
void eng_kv_row_store(const struct eng_kv *kv, uint8_t *lblock, int slot, const float *row);
void eng_kv_row_load(const struct eng_kv *kv, const uint8_t *lblock, int slot, float *row);
/* Only part p of the row: out gets part_off[p+1] - part_off[p] values. */
void eng_kv_part_load(const struct eng_kv *kv, const uint8_t *lblock, int slot, int p, float *out);

#endif
