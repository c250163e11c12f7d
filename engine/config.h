/* config.h: a model directory's config.json, as the Hub ships it (rope_scaling and rope_theta at the
 * top level) or as transformers 5 writes it (rope_parameters). Fields we do not implement are
 * refused by name, never ignored. */
#ifndef ENG_CONFIG_H
#define ENG_CONFIG_H

#include "sh.h"

enum eng_arch { ENG_ARCH_LLAMA = 0, ENG_ARCH_DEEPSEEK2 };
enum eng_rope_type { ENG_ROPE_DEFAULT = 0, ENG_ROPE_LINEAR, ENG_ROPE_LLAMA3, ENG_ROPE_YARN };
enum eng_topk { ENG_TOPK_GREEDY = 0, ENG_TOPK_GROUP_LIMITED };

struct eng_rope_cfg {
	enum eng_rope_type type;
	int dim;               /* rotated dims per head (even) */
	double theta;
	double factor;
	int orig_max_pos;      /* original_max_position_embeddings (llama3, yarn) */
	double low_freq_factor, high_freq_factor;         /* llama3 */
	double beta_fast, beta_slow, mscale, mscale_all_dim; /* yarn; 0 = absent */
	double attention_factor;                          /* yarn; < 0 = absent */
	int interleaved;       /* 1: pairs (x[2i], x[2i+1]) (DeepSeek-V2); 0: halves (Llama) */
};

struct eng_config {
	enum eng_arch arch;
	char arch_name[64];        /* architectures[0] */
	int vocab, hidden, n_layers, n_heads, n_kv_heads, head_dim, intermediate, max_pos;
	float rms_eps;
	int tie_embeddings;
	int qkv_bias, o_bias;      /* Llama attention_bias: all four; Qwen2: q, k, v */
	int bos_id, eos_id;        /* -1 when absent; eos: the first of a list */
	struct eng_rope_cfg rope;
	/* DeepseekV2 */
	int q_lora_rank;           /* 0: q_proj directly */
	int kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim;
	int n_routed, n_shared, top_k, moe_intermediate, first_k_dense, moe_layer_freq;
	enum eng_topk topk_method;
	int n_group, topk_group, norm_topk_prob;
	float routed_scaling;
	float softmax_scale;       /* attention logits scale, YaRN mscale^2 included */
};

/* Parses dir/config.json into *cfg. Refuses with a message naming the field: unknown architecture,
 * unsupported values (hidden_act, scoring_func, topk_method, rope type, sliding windows, biases on
 * MLPs, quantization_config) and any unknown field, listing what is supported. */
int eng_config_load(const char *dir, struct eng_config *cfg, struct sh_err *err);
/* Same, from JSON text (tests). */
int eng_config_parse(const char *json, struct eng_config *cfg, struct sh_err *err);
/* Whether layer l uses the MoE MLP (DeepSeek-V2: first_k_dense_replace, moe_layer_freq). */
int eng_config_layer_is_moe(const struct eng_config *cfg, int l);

#endif
