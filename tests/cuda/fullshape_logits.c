/* fullshape_logits.c: the engine's logits for tools/fullshape_check.py (compared there with
 * transformers'). Loads MODEL_DIR on the CPU or CUDA backend, prefills the ids of IDS_FILE (raw
 * little-endian int32) into an empty KV cache with every position's logits, then decodes N_GEN
 * greedy tokens one step at a time (the decode path: absorbed MLA, recorded steps on CUDA).
 *   fullshape_logits cpu|cuda MODEL_DIR IDS_FILE N_GEN OUT_PREFIX [auto|bf16|f32|fp8|int8] [exact]
 * Writes OUT_PREFIX.prefill.f32 (n, V), OUT_PREFIX.decode.f32 (N_GEN - 1, V: the logits of decode
 * step s, which follow greedy token s) and OUT_PREFIX.json (greedy ids, timings, sizes). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/backend/cuda.h"
#include "engine/model.h"

static int argmax(const float *v, int n)
{
	int b = 0;
	for (int i = 1; i < n; i++)
		if (v[i] > v[b])
			b = i;
	return b;
}

static void die(const char *what, const struct sh_err *err)
{
	fprintf(stderr, "fullshape_logits: %s: %s\n", what, err ? err->msg : "");
	exit(2);
}

static void write_f32(const char *prefix, const char *ext, const float *v, size_t n)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s.%s", prefix, ext);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(v, sizeof(float), n, f) != n || fclose(f))
		die(path, NULL);
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: fullshape_logits cpu|cuda MODEL_DIR IDS_FILE N_GEN OUT_PREFIX [kv] [exact]\n");
		return 2;
	}
	int cuda = !strcmp(argv[1], "cuda"), n_gen = atoi(argv[4]);
	const char *dir = argv[2], *prefix = argv[5], *kvs = argc > 6 ? argv[6] : "auto";
	int exact = argc > 7 && !strcmp(argv[7], "exact");
	struct sh_err err = {{0}};

	FILE *f = fopen(argv[3], "rb");
	if (!f)
		die(argv[3], NULL);
	fseek(f, 0, SEEK_END);
	int n = (int)(ftell(f) / 4);
	fseek(f, 0, SEEK_SET);
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
	if (n < 1 || n_gen < 1 || fread(ids, 4, (size_t)n, f) != (size_t)n)
		die("ids", NULL);
	fclose(f);

	struct eng_backend *be = cuda ? eng_cuda_new(0, &err) : eng_cpu_new(0);
	if (!be)
		die("backend", &err);
	if (cuda && exact)
		eng_cuda_set_exact(be, 1);
	int64_t t0 = sh_now_us();
	struct eng_model_opts o = {.dtype = -1, .max_tokens = n, .mla_prefill = 1};
	struct eng_model *m = NULL;
	if (eng_model_load(dir, &o, be, &m, &err))
		die(dir, &err);
	int64_t t1 = sh_now_us();
	int V = m->cfg.vocab;
	int fmt = eng_kv_fmt_parse(kvs, cuda ? ENG_KV_BF16 : ENG_KV_F32);
	if (fmt < 0)
		die("kv format", NULL);
	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	struct eng_kv *kv = eng_kv_new(be, (enum eng_kv_fmt)fmt, &shape, (n + n_gen + 15) / 16 + 1, &err);
	if (!kv)
		die("kv", &err);

	struct eng_kv_seq seq, *seqs[1] = {&seq};
	eng_kv_seq_init(&seq);
	int32_t *pos = malloc(sizeof(int32_t) * (size_t)n), *si = calloc((size_t)n, sizeof(int32_t));
	uint8_t *want = malloc((size_t)n);
	float *lg = malloc(sizeof(float) * (size_t)n * V), *dec = malloc(sizeof(float) * (size_t)n_gen * V);
	int32_t *gen = malloc(sizeof(int32_t) * (size_t)n_gen);
	for (int i = 0; i < n; i++)
		pos[i] = i, want[i] = 1;
	if (eng_kv_seq_prepare(kv, &seq, 0, n, &err))
		die("prepare", &err);
	struct eng_batch b = {n, ids, pos, si, seqs, 1, want};
	int64_t t2 = sh_now_us();
	if (eng_model_forward(m, kv, &b, lg, &err))
		die("prefill", &err);
	int64_t t3 = sh_now_us();
	seq.n_tokens = n;
	const float *last = lg + (size_t)(n - 1) * V;
	for (int s = 0; s < n_gen; s++) {
		gen[s] = argmax(last, V);
		if (s == n_gen - 1)
			break;
		int32_t p = seq.n_tokens, z = 0;
		if (eng_kv_seq_prepare(kv, &seq, p, 1, &err))
			die("prepare", &err);
		struct eng_batch d = {1, &gen[s], &p, &z, seqs, 1, NULL};
		if (eng_model_forward(m, kv, &d, dec + (size_t)s * V, &err))
			die("decode", &err);
		seq.n_tokens++;
		last = dec + (size_t)s * V;
	}
	int64_t t4 = sh_now_us();
	write_f32(prefix, "prefill.f32", lg, (size_t)n * V);
	write_f32(prefix, "decode.f32", dec, (size_t)(n_gen - 1) * V);

	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "backend", be->name);
	cJSON_AddStringToObject(j, "kv_cache_dtype", eng_kv_fmt_name(kv->fmt));
	cJSON_AddBoolToObject(j, "exact", exact);
	cJSON_AddNumberToObject(j, "n_prompt", n);
	cJSON_AddNumberToObject(j, "vocab", V);
	cJSON_AddItemToObject(j, "greedy", cJSON_CreateIntArray(gen, n_gen));
	cJSON_AddNumberToObject(j, "weight_bytes", (double)m->weight_bytes);
	cJSON_AddNumberToObject(j, "load_s", (t1 - t0) / 1e6);
	cJSON_AddNumberToObject(j, "prefill_s", (t3 - t2) / 1e6);
	cJSON_AddNumberToObject(j, "decode_s", (t4 - t3) / 1e6);
	char path[4096];
	snprintf(path, sizeof(path), "%s.json", prefix);
	char *s = cJSON_Print(j);
	f = fopen(path, "w");
	if (!f || fputs(s, f) < 0 || fclose(f))
		die(path, NULL);
	printf("%s\n", s);
	free(s);
	cJSON_Delete(j);
	eng_kv_seq_release(kv, &seq);
	eng_kv_free(kv);
	eng_model_free(m);
	be->free(be);
	free(ids), free(pos), free(si), free(want), free(lg), free(dec), free(gen);
	return 0;
}
