/* config.c: config.json (see config.h). */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fields read, per architecture family, and fields that change nothing at inference. */
static const char *const common_keys[] = {
	"architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
	"num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
	"rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings", "attention_bias", "mlp_bias",
	"hidden_act", "bos_token_id", "eos_token_id", NULL};
static const char *const llama_keys[] = {"sliding_window", "use_sliding_window", "max_window_layers",
					 "layer_types", NULL};
static const char *const ds_keys[] = {
	"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "qk_head_dim", "v_head_dim",
	"n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
	"first_k_dense_replace", "moe_layer_freq", "topk_method", "n_group", "topk_group", "norm_topk_prob",
	"routed_scaling_factor", "scoring_func", NULL};
static const char *const inert_keys[] = {
	"transformers_version", "torch_dtype", "dtype", "use_cache", "initializer_range", "pretraining_tp",
	"attention_dropout", "auto_map", "aux_loss_alpha", "seq_aux", "ep_size", "pad_token_id",
	"_name_or_path", "bos_token", "eos_token", "output_attentions", "output_hidden_states",
	"return_dict", "use_return_dict", "generation_config", "chunk_size_feed_forward", NULL};
static const char *const rope_keys[] = {
	"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings", "low_freq_factor",
	"high_freq_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
	"truncate", "partial_rotary_factor", NULL};

static int in_list(const char *const *l, const char *k)
{
	for (; *l; l++)
		if (!strcmp(*l, k))
			return 1;
	return 0;
}

static void list_keys(char *buf, size_t cap, const char *const *a, const char *const *b)
{
	size_t n = 0;
	buf[0] = 0;
	for (const char *const *l = a; l && *l && n + 2 < cap; l++)
		n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? "," : "", *l);
	for (const char *const *l = b; l && *l && n + 2 < cap; l++)
		n += (size_t)snprintf(buf + n, cap - n, ",%s", *l);
	if (n >= cap)
		buf[cap - 1] = 0;
}

static double num(const cJSON *o, const char *k, double def)
{
	const cJSON *v = cJSON_GetObjectItem(o, k);
	if (cJSON_IsNumber(v))
		return v->valuedouble;
	if (cJSON_IsBool(v))
		return cJSON_IsTrue(v);
	return def;
}

static int get_int(const cJSON *o, const char *k, int def, int *out, struct sh_err *err)
{
	const cJSON *v = cJSON_GetObjectItem(o, k);
	if (!v || cJSON_IsNull(v)) {
		if (def < -1)
			return sh_errf(err, "config.json: %s is required", k);
		*out = def;
		return SH_OK;
	}
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
	    v->valuedouble > 1e9)
		return sh_errf(err, "config.json: %s must be a non-negative integer", k);
	*out = (int)v->valuedouble;
	return SH_OK;
}

#define REQ -2

static int parse_rope(const cJSON *root, struct eng_config *c, struct sh_err *err)
{
	const cJSON *rp = cJSON_GetObjectItem(root, "rope_parameters");
	const cJSON *rs = cJSON_GetObjectItem(root, "rope_scaling");
	const cJSON *r = cJSON_IsObject(rp) ? rp : cJSON_IsObject(rs) ? rs : NULL;
	struct eng_rope_cfg *p = &c->rope;
	char list[512];

	p->theta = num(root, "rope_theta", 10000.0);
	p->type = ENG_ROPE_DEFAULT;
	p->attention_factor = -1;
	if (!r)
		return SH_OK;
	for (const cJSON *it = r->child; it; it = it->next)
		if (!in_list(rope_keys, it->string)) {
			list_keys(list, sizeof(list), rope_keys, NULL);
			return sh_errf(err, "config.json: rope field %s is not supported (supported: %s)", it->string,
				       list);
		}
	p->theta = num(r, "rope_theta", p->theta);
	const cJSON *t = cJSON_GetObjectItem(r, "rope_type");
	if (!cJSON_IsString(t))
		t = cJSON_GetObjectItem(r, "type");
	const char *type = cJSON_IsString(t) ? t->valuestring : "default";
	if (num(r, "partial_rotary_factor", 1.0) != 1.0)
		return sh_errf(err, "config.json: partial_rotary_factor != 1 is not supported");
	if (cJSON_IsFalse(cJSON_GetObjectItem(r, "truncate")))
		return sh_errf(err, "config.json: rope truncate=false is not supported");
	p->factor = num(r, "factor", 1.0);
	if (get_int(r, "original_max_position_embeddings", 0, &p->orig_max_pos, err))
		return SH_ERR;
	if (!strcmp(type, "default")) {
		p->type = ENG_ROPE_DEFAULT;
	} else if (!strcmp(type, "linear")) {
		p->type = ENG_ROPE_LINEAR;
	} else if (!strcmp(type, "llama3")) {
		p->type = ENG_ROPE_LLAMA3;
		p->low_freq_factor = num(r, "low_freq_factor", 1.0);
		p->high_freq_factor = num(r, "high_freq_factor", 4.0);
		if (p->orig_max_pos <= 0)
			return sh_errf(err, "config.json: llama3 rope needs original_max_position_embeddings");
	} else if (!strcmp(type, "yarn") || !strcmp(type, "deepseek_yarn")) {
		p->type = ENG_ROPE_YARN;
		p->beta_fast = num(r, "beta_fast", 32);
		p->beta_slow = num(r, "beta_slow", 1);
		p->mscale = num(r, "mscale", 0);
		p->mscale_all_dim = num(r, "mscale_all_dim", 0);
		p->attention_factor = num(r, "attention_factor", -1);
		if (p->orig_max_pos <= 0)
			return sh_errf(err, "config.json: yarn rope needs original_max_position_embeddings");
		if (!cJSON_GetObjectItem(r, "factor"))
			p->factor = (double)c->max_pos / p->orig_max_pos;
	} else {
		return sh_errf(err, "config.json: rope type %s is not supported (default, linear, llama3, yarn)",
			       type);
	}
	return SH_OK;
}

static double yarn_mscale(double scale, double m)
{
	return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

int eng_config_parse(const char *json, struct eng_config *c, struct sh_err *err)
{
	cJSON *root = cJSON_Parse(json);
	int rc = SH_ERR;
	char list[1400];

	memset(c, 0, sizeof(*c));
	if (!cJSON_IsObject(root)) {
		sh_errf(err, "config.json: not a JSON object");
		goto out;
	}
	const cJSON *archs = cJSON_GetObjectItem(root, "architectures");
	const cJSON *a0 = cJSON_GetArrayItem(archs, 0);
	if (!cJSON_IsString(a0)) {
		sh_errf(err, "config.json: no architectures");
		goto out;
	}
	snprintf(c->arch_name, sizeof(c->arch_name), "%s", a0->valuestring);
	const char *const *arch_keys;
	if (!strcmp(a0->valuestring, "DeepseekV2ForCausalLM")) {
		c->arch = ENG_ARCH_DEEPSEEK2;
		arch_keys = ds_keys;
	} else if (!strcmp(a0->valuestring, "LlamaForCausalLM") || !strcmp(a0->valuestring, "Qwen2ForCausalLM") ||
		   !strcmp(a0->valuestring, "MistralForCausalLM")) {
		c->arch = ENG_ARCH_LLAMA;
		arch_keys = llama_keys;
	} else {
		sh_errf(err, "config.json: architecture %s is not supported (DeepseekV2ForCausalLM, "
			     "LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)", a0->valuestring);
		goto out;
	}
	for (const cJSON *it = root->child; it; it = it->next)
		if (!in_list(common_keys, it->string) && !in_list(arch_keys, it->string) &&
		    !in_list(inert_keys, it->string)) {
			if (!strcmp(it->string, "quantization_config")) {
				sh_errf(err, "config.json: quantized checkpoints (quantization_config) are not supported");
				goto out;
			}
			list_keys(list, sizeof(list), common_keys, arch_keys);
			sh_errf(err, "config.json: field %.60s is not supported for %.60s (supported: %.100s...)",
				it->string, c->arch_name, list);
			goto out;
		}
	if (get_int(root, "vocab_size", REQ, &c->vocab, err) || get_int(root, "hidden_size", REQ, &c->hidden, err) ||
	    get_int(root, "num_hidden_layers", REQ, &c->n_layers, err) ||
	    get_int(root, "num_attention_heads", REQ, &c->n_heads, err) ||
	    get_int(root, "num_key_value_heads", c->n_heads, &c->n_kv_heads, err) ||
	    get_int(root, "intermediate_size", REQ, &c->intermediate, err) ||
	    get_int(root, "max_position_embeddings", 2048, &c->max_pos, err))
		goto out;
	if (c->vocab <= 0 || c->hidden <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
	    c->n_heads % c->n_kv_heads) {
		sh_errf(err, "config.json: bad sizes (vocab %d hidden %d layers %d heads %d kv heads %d)", c->vocab,
			c->hidden, c->n_layers, c->n_heads, c->n_kv_heads);
		goto out;
	}
	c->rms_eps = (float)num(root, "rms_norm_eps", 1e-6);
	c->tie_embeddings = num(root, "tie_word_embeddings", 0) != 0;
	const cJSON *act = cJSON_GetObjectItem(root, "hidden_act");
	if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu"))) {
		sh_errf(err, "config.json: hidden_act %s is not supported (silu)",
			cJSON_IsString(act) ? act->valuestring : "?");
		goto out;
	}
	if (num(root, "mlp_bias", 0)) {
		sh_errf(err, "config.json: mlp_bias is not supported");
		goto out;
	}
	const cJSON *bos = cJSON_GetObjectItem(root, "bos_token_id"), *eos = cJSON_GetObjectItem(root, "eos_token_id");
	c->bos_id = cJSON_IsNumber(bos) ? bos->valueint : -1;
	if (cJSON_IsArray(eos))
		eos = cJSON_GetArrayItem(eos, 0);
	c->eos_id = cJSON_IsNumber(eos) ? eos->valueint : -1;
	if (parse_rope(root, c, err))
		goto out;

	if (c->arch == ENG_ARCH_LLAMA) {
		int qwen = !strcmp(c->arch_name, "Qwen2ForCausalLM");
		if (get_int(root, "head_dim", c->hidden / c->n_heads, &c->head_dim, err))
			goto out;
		c->qkv_bias = qwen || num(root, "attention_bias", 0);
		c->o_bias = !qwen && num(root, "attention_bias", 0);
		double sw = num(root, "sliding_window", 0);
		int use_sw = qwen ? num(root, "use_sliding_window", 0) != 0 : sw > 0;
		if (use_sw && sw < c->max_pos) {
			sh_errf(err, "config.json: sliding_window %.0f < max_position_embeddings %d is not supported",
				sw, c->max_pos);
			goto out;
		}
		const cJSON *lt = cJSON_GetObjectItem(root, "layer_types");
		for (const cJSON *it = lt ? lt->child : NULL; it; it = it->next)
			if (!cJSON_IsString(it) || strcmp(it->valuestring, "full_attention")) {
				if (!use_sw)
					continue; /* transformers lists sliding layers even with the window off */
				sh_errf(err, "config.json: layer_types other than full_attention are not supported");
				goto out;
			}
		c->rope.dim = c->head_dim;
		c->rope.interleaved = 0;
		c->softmax_scale = (float)(1.0 / sqrt((double)c->head_dim));
		if (c->rope.type == ENG_ROPE_YARN) {
			sh_errf(err, "config.json: yarn rope is supported for DeepseekV2 only");
			goto out;
		}
	} else {
		const cJSON *ql = cJSON_GetObjectItem(root, "q_lora_rank");
		if (get_int(root, "q_lora_rank", 0, &c->q_lora_rank, err) ||
		    get_int(root, "kv_lora_rank", REQ, &c->kv_lora_rank, err) ||
		    get_int(root, "qk_nope_head_dim", REQ, &c->qk_nope_dim, err) ||
		    get_int(root, "qk_rope_head_dim", REQ, &c->qk_rope_dim, err) ||
		    get_int(root, "v_head_dim", REQ, &c->v_head_dim, err) ||
		    get_int(root, "n_routed_experts", 0, &c->n_routed, err) ||
		    get_int(root, "n_shared_experts", 0, &c->n_shared, err) ||
		    get_int(root, "num_experts_per_tok", 0, &c->top_k, err) ||
		    get_int(root, "moe_intermediate_size", 0, &c->moe_intermediate, err) ||
		    get_int(root, "first_k_dense_replace", 0, &c->first_k_dense, err) ||
		    get_int(root, "moe_layer_freq", 1, &c->moe_layer_freq, err) ||
		    get_int(root, "n_group", 1, &c->n_group, err) || get_int(root, "topk_group", 1, &c->topk_group, err))
			goto out;
		(void)ql;
		int qk;
		if (get_int(root, "qk_head_dim", c->qk_nope_dim + c->qk_rope_dim, &qk, err))
			goto out;
		if (qk != c->qk_nope_dim + c->qk_rope_dim || c->qk_rope_dim % 2 || c->moe_layer_freq < 1 ||
		    c->n_kv_heads != c->n_heads) {
			sh_errf(err, "config.json: inconsistent MLA sizes (qk_head_dim %d, rope %d, kv heads %d)", qk,
				c->qk_rope_dim, c->n_kv_heads);
			goto out;
		}
		const cJSON *sf = cJSON_GetObjectItem(root, "scoring_func");
		if (sf && (!cJSON_IsString(sf) || strcmp(sf->valuestring, "softmax"))) {
			sh_errf(err, "config.json: scoring_func %s is not supported (softmax)",
				cJSON_IsString(sf) ? sf->valuestring : "?");
			goto out;
		}
		const cJSON *tm = cJSON_GetObjectItem(root, "topk_method");
		const char *tms = cJSON_IsString(tm) ? tm->valuestring : "greedy";
		if (!strcmp(tms, "greedy")) {
			c->topk_method = ENG_TOPK_GREEDY;
		} else if (!strcmp(tms, "group_limited_greedy")) {
			c->topk_method = ENG_TOPK_GROUP_LIMITED;
		} else {
			sh_errf(err, "config.json: topk_method %s is not supported (greedy, group_limited_greedy)", tms);
			goto out;
		}
		if (c->n_routed && (c->top_k <= 0 || c->top_k > c->n_routed || c->n_group <= 0 ||
				    c->n_routed % c->n_group || c->topk_group > c->n_group || c->moe_intermediate <= 0)) {
			sh_errf(err, "config.json: inconsistent MoE sizes (experts %d, top-k %d, groups %d/%d)",
				c->n_routed, c->top_k, c->topk_group, c->n_group);
			goto out;
		}
		if (num(root, "attention_bias", 0)) {
			sh_errf(err, "config.json: attention_bias is not supported for DeepseekV2");
			goto out;
		}
		c->norm_topk_prob = num(root, "norm_topk_prob", 0) != 0;
		c->routed_scaling = (float)num(root, "routed_scaling_factor", 1.0);
		c->head_dim = c->qk_nope_dim + c->qk_rope_dim;
		c->rope.dim = c->qk_rope_dim;
		c->rope.interleaved = 1;
		double scale = 1.0 / sqrt((double)c->head_dim);
		if (c->rope.type == ENG_ROPE_YARN && c->rope.mscale_all_dim) {
			double m = yarn_mscale(c->rope.factor, c->rope.mscale_all_dim);
			scale *= m * m;
		}
		c->softmax_scale = (float)scale;
	}
	rc = SH_OK;
out:
	cJSON_Delete(root);
	return rc;
}

int eng_config_load(const char *dir, struct eng_config *cfg, struct sh_err *err)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	size_t n;
	char *buf = sh_read_file(path, 1u << 20, &n, err);
	if (!buf)
		return SH_ERR;
	int rc = eng_config_parse(buf, cfg, err);
	free(buf);
	return rc;
}

int eng_config_layer_is_moe(const struct eng_config *c, int l)
{
	return c->arch == ENG_ARCH_DEEPSEEK2 && c->n_routed > 0 && l >= c->first_k_dense &&
	       l % c->moe_layer_freq == 0;
}
