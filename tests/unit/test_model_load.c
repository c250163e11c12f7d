/* test_model_load.c: the loader's refusals (messages checked), both config.json shapes, rope tables
 * against transformers' own, weight dtype conversion. Works on copies of tests/data/golden models. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/backend.h"
#include "engine/model.h"

#define G "tests/data/golden/"

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "%s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	ck_assert(fread(b, 1, (size_t)n, f) == (size_t)n);
	b[n] = 0;
	fclose(f);
	*len = (size_t)n;
	return b;
}

static void put(const char *path, const char *data, size_t n)
{
	FILE *f = fopen(path, "wb");
	ck_assert(f != NULL);
	ck_assert(fwrite(data, 1, n, f) == n);
	fclose(f);
}

/* A temporary copy of a golden model directory (its model files only). */
static void copy_model(const char *name, char *tmp)
{
	static const char *const files[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
					    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
	strcpy(tmp, "/tmp/kvgate-test-XXXXXX");
	ck_assert(mkdtemp(tmp) != NULL);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char src[512], dst[512];
		size_t n;
		snprintf(src, sizeof(src), G "%s/%s", name, files[i]);
		if (access(src, F_OK))
			continue;
		snprintf(dst, sizeof(dst), "%s/%s", tmp, files[i]);
		char *b = slurp(src, &n);
		put(dst, b, n);
		free(b);
	}
}

static void rm_model(const char *tmp)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
	ck_assert(system(cmd) == 0);
}

/* Edits config.json: sets key (top level) to the JSON value v, or deletes it when v is NULL. */
static void edit_config(const char *dir, const char *key, const char *v)
{
	char path[512];
	size_t n;
	snprintf(path, sizeof(path), "%s/config.json", dir);
	char *t = slurp(path, &n);
	cJSON *root = cJSON_Parse(t);
	free(t);
	cJSON_DeleteItemFromObject(root, key);
	if (v)
		cJSON_AddItemToObject(root, key, cJSON_Parse(v));
	char *s = cJSON_Print(root);
	put(path, s, strlen(s));
	free(s);
	cJSON_Delete(root);
}

static void expect_load_error(const char *dir, const char *want)
{
	struct eng_backend *be = eng_cpu_new(1);
	struct eng_model *m = NULL;
	struct sh_err err = {{0}};
	struct eng_model_opts o = {.dtype = -1};
	ck_assert_int_eq(eng_model_load(dir, &o, be, &m, &err), SH_ERR);
	ck_assert_msg(strstr(err.msg, want) != NULL, "error \"%s\" lacks \"%s\"", err.msg, want);
	ck_assert(m == NULL);
	be->free(be);
}

struct edit_case {
	const char *model, *key, *value, *want;
};

static const struct edit_case edits[] = {
	{"llama", "architectures", "[\"GPT2LMHeadModel\"]", "architecture GPT2LMHeadModel is not supported"},
	{"llama", "intermediate_size", "100",
	 "tensor model.layers.0.mlp.gate_proj.weight: shape [128,64], config.json implies [100,64]"},
	{"llama", "num_hidden_layers", "3", "missing tensor model.layers.2.input_layernorm.weight"},
	{"llama", "num_hidden_layers", "1", "unexpected tensor model.layers.1."},
	{"llama", "foo_bar", "1", "field foo_bar is not supported for LlamaForCausalLM"},
	{"llama", "rope_scaling", "{\"rope_type\":\"dynamic\",\"factor\":2}", "rope type dynamic is not supported"},
	{"llama", "hidden_act", "\"gelu\"", "hidden_act gelu is not supported"},
	{"mistral", "sliding_window", "64", "sliding_window 64 < max_position_embeddings 512 is not supported"},
	{"deepseek_a", "scoring_func", "\"sigmoid\"", "scoring_func sigmoid is not supported"},
	{"deepseek_a", "topk_method", "\"noaux_tc\"", "topk_method noaux_tc is not supported"},
	{"deepseek_a", "n_routed_experts", "16", "tensor model.layers.1.mlp.gate.weight: shape [8,64]"},
	{"deepseek_a", "quantization_config", "{}", "quantized checkpoints"},
	{"qwen2", "tie_word_embeddings", "false", "missing tensor lm_head.weight"},
};

START_TEST(config_refusals)
{
	char dir[64];
	const struct edit_case *e = &edits[_i];
	copy_model(e->model, dir);
	edit_config(dir, e->key, e->value);
	expect_load_error(dir, e->want);
	rm_model(dir);
}
END_TEST

START_TEST(file_refusals)
{
	char dir[64], path[512];
	/* a missing shard */
	copy_model("llama", dir);
	snprintf(path, sizeof(path), "%s/model-00002-of-00002.safetensors", dir);
	unlink(path);
	expect_load_error(dir, "missing shard model-00002-of-00002.safetensors");
	rm_model(dir);
	/* a truncated file */
	copy_model("mistral", dir);
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	ck_assert(truncate(path, 100000) == 0);
	expect_load_error(dir, "truncated");
	ck_assert(truncate(path, 5) == 0);
	expect_load_error(dir, "truncated");
	rm_model(dir);
	/* no weights at all */
	copy_model("qwen2", dir);
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	unlink(path);
	expect_load_error(dir, "no model.safetensors or model.safetensors.index.json");
	rm_model(dir);
	/* no config */
	expect_load_error("/nonexistent-model-dir", "/nonexistent-model-dir/config.json");
}
END_TEST

/* Both config shapes parse to the rope tables and softmax scale transformers used (golden meta). */
START_TEST(rope_matches_transformers)
{
	static const char *const names[] = {"deepseek_a", "deepseek_b", "llama", "qwen2", "mistral"};
	for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
		char dir[256], path[512];
		size_t n;
		struct eng_config c;
		struct eng_rope r;
		struct sh_err err;
		snprintf(dir, sizeof(dir), G "%s", names[k]);
		ck_assert_msg(eng_config_load(dir, &c, &err) == SH_OK, "%s", err.msg);
		ck_assert(eng_rope_init(&r, &c.rope, &err) == SH_OK);
		snprintf(path, sizeof(path), "%s/golden.json", dir);
		char *t = slurp(path, &n);
		cJSON *g = cJSON_Parse(t), *meta = cJSON_GetObjectItem(g, "meta");
		free(t);
		cJSON *inv = cJSON_GetObjectItem(meta, "inv_freq");
		ck_assert_int_eq(cJSON_GetArraySize(inv), r.dim / 2);
		for (int i = 0; i < r.dim / 2; i++) {
			double want = cJSON_GetArrayItem(inv, i)->valuedouble;
			ck_assert_msg(fabs(r.inv_freq[i] - want) <= 1e-6 * want, "%s inv_freq[%d] %g vs %g", names[k], i,
				      r.inv_freq[i], want);
		}
		ck_assert_float_eq_tol(r.mscale, cJSON_GetObjectItem(meta, "rope_attention_scaling")->valuedouble, 1e-6);
		cJSON *ss = cJSON_GetObjectItem(meta, "softmax_scale");
		if (ss)
			ck_assert_float_eq_tol(c.softmax_scale, ss->valuedouble, 1e-7);
		cJSON_Delete(g);
	}
}
END_TEST

/* --dtype: the same model as f32, bf16, f16 weights gives close logits. */
START_TEST(dtype_conversion)
{
	static const int dts[] = {-1, ENG_DT_F32, ENG_DT_F16, ENG_DT_BF16};
	float ref[300], got[300];
	for (size_t k = 0; k < 4; k++) {
		struct eng_backend *be = eng_cpu_new(1);
		struct eng_model *m = NULL;
		struct sh_err err;
		struct eng_model_opts o = {.dtype = dts[k], .max_tokens = 8};
		ck_assert_msg(eng_model_load(G "qwen2", &o, be, &m, &err) == SH_OK, "%s", err.msg);
		struct eng_kv_shape sh;
		eng_model_kv_shape(m, &sh);
		struct eng_kv *kv = eng_kv_new(be, ENG_KV_F32, &sh, 2, &err);
		struct eng_kv_seq s, *seqs[1] = {&s};
		int32_t ids[3] = {5, 6, 7}, pos[3] = {0, 1, 2}, z[3] = {0};
		eng_kv_seq_init(&s);
		ck_assert(eng_kv_seq_prepare(kv, &s, 0, 3, &err) == SH_OK);
		struct eng_batch b = {3, ids, pos, z, seqs, 1, NULL};
		ck_assert(eng_model_forward(m, kv, &b, k ? got : ref, &err) == SH_OK);
		if (k) {
			double md = 0, mr = 0;
			for (int v = 0; v < m->cfg.vocab; v++) {
				md = fmax(md, fabs(got[v] - ref[v]));
				mr = fmax(mr, fabs(ref[v]));
			}
			ck_assert_msg(md / mr < (dts[k] == ENG_DT_F32 ? 1e-6 : dts[k] == ENG_DT_F16 ? 5e-3 : 3e-2),
				      "dtype %d: %g", dts[k], md / mr);
		}
		eng_kv_seq_release(kv, &s);
		eng_kv_free(kv);
		eng_model_free(m);
		be->free(be);
	}
}
END_TEST

Suite *load_suite(void)
{
	Suite *s = suite_create("model_load");
	TCase *tc = tcase_create("load");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, config_refusals, 0, (int)(sizeof(edits) / sizeof(edits[0])));
	tcase_add_test(tc, file_refusals);
	tcase_add_test(tc, rope_matches_transformers);
	tcase_add_test(tc, dtype_conversion);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(load_suite());
	srunner_run_all(sr, CK_NORMAL);
	int nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
