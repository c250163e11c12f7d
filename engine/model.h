/* model.h: a loaded model (config, weights in backend memory, workspace) and its forward pass. */
#ifndef ENG_MODEL_H
#define ENG_MODEL_H

#include <stdint.h>

#include "backend.h"
#include "config.h"
#include "kv.h"
#include "rope.h"
#include "st.h"

struct eng_layer {
	float *attn_norm, *mlp_norm;          /* (hidden) */
	/* Llama family */
	struct eng_w wq, wk, wv, wo;
	float *bq, *bk, *bv, *bo;             /* NULL without bias */
	/* DeepSeek-V2 MLA */
	struct eng_w q_a, q_b, q;             /* q_a/q_b with q_lora_rank, else q */
	float *q_a_norm;                      /* (q_lora_rank) */
	struct eng_w kv_a;                    /* (R + dr, hidden) */
	float *kv_a_norm;                     /* (R) */
	struct eng_w kv_b;                    /* (nh * (dn + dv), R) */
	struct eng_w *uk_t;                   /* per head: (R, dn), kv_b's K rows transposed (absorption) */
	struct eng_w *uv;                     /* per head: (dv, R), views into kv_b */
	/* MLP: dense, or MoE (router, experts, shared experts as one dense MLP) */
	struct eng_w gate, up, down;
	int moe;
	struct eng_w router;                  /* (E, hidden) */
	struct eng_w *e_gate, *e_up, *e_down; /* (E) */
};

struct eng_model_opts {
	int dtype;          /* ENG_DT_* to convert weights to, or -1: as stored */
	int max_tokens;     /* tokens per forward call (workspace size); 0: 256 */
	int mla_prefill;    /* 0: auto (naive for n > 1 on one sequence), 1: always absorbed, 2: always naive */
	int progress;       /* 1: bar on a terminal / lines otherwise, on stderr */
};

struct eng_model {
	struct eng_config cfg;
	struct eng_model_opts opts;
	struct eng_backend *be;
	struct eng_st *st;
	struct eng_rope rope;
	struct eng_w embed, lm_head;
	float *final_norm;
	struct eng_layer *layers;
	void **owned;            /* backend buffers made at load (conversions, norms) */
	int n_owned, cap_owned;
	size_t weight_bytes;
	/* workspace (backend memory), sized for opts.max_tokens */
	float *ws;
	size_t ws_floats;
	int32_t *ws_idx;         /* MoE expert ids */
};

/* Loads dir (config.json + safetensors) onto be. Every tensor's name, shape and dtype is checked; a
 * missing or unexpected tensor stops the load (SH_ERR, err names it). *out is the caller's. */
int eng_model_load(const char *dir, const struct eng_model_opts *o, struct eng_backend *be,
		   struct eng_model **out, struct sh_err *err);
void eng_model_free(struct eng_model *m);

/* The KV row shape of this model (for eng_kv_new). */
void eng_model_kv_shape(const struct eng_model *m, struct eng_kv_shape *shape);

/* Runs b (b->n <= opts.max_tokens) through the model: writes every token's KV rows (the caller has
 * prepared the blocks with eng_kv_seq_prepare) and the logits of the tokens b->want_logits marks
 * (NULL: the last one), in order, to logits (host memory, (count, vocab)). The caller advances
 * each sequence's n_tokens. */
int eng_model_forward(struct eng_model *m, struct eng_kv *kv, const struct eng_batch *b, float *logits,
		      struct sh_err *err);

/* Architecture forward passes (arch/llama.c, arch/deepseek2.c); hidden (n, hidden) in, normed out. */
void eng_llama_forward(struct eng_model *m, struct eng_kv *kv, const struct eng_batch *b, float *x);
void eng_deepseek2_forward(struct eng_model *m, struct eng_kv *kv, const struct eng_batch *b, float *x);
/* Whether the DeepSeek-V2 forward takes the naive (non-absorbed) MLA prefill for b. */
int eng_deepseek2_naive(const struct eng_model *m, const struct eng_batch *b);
/* Largest batch (tokens) a backend may record as one step (backend.h step_begin). */
#define ENG_STEP_MAX_TOKENS 32
/* Workspace floats each needs for n tokens and a longest context of ctx. */
size_t eng_llama_ws(const struct eng_config *c, int n);
size_t eng_deepseek2_ws(const struct eng_config *c, int n, int ctx);

#endif
