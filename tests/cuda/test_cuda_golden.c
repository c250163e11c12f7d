/* test_cuda_golden.c: the golden models of tests/data/golden run on CUDA and on the CPU, for every
 * KV format, in the CUDA backend's exact mode (fp32 everywhere) and its fast mode (bf16 tensor cores
 * for prefill GEMMs and MLA). Per (model, format, mode): NMSE of CUDA's prefill logits against the
 * CPU's and against transformers' (logits.f32), and how many of the 4 x 32 greedy tokens equal the
 * CPU's before the first divergence. Checks: exact mode continues exactly as the CPU in F32 and BF16
 * and stays within 1e-8 NMSE of it; fast mode within the bounds of test_engine_golden.c against
 * transformers. Needs a GPU (tests/cuda/run.sh); exit status = failed checks. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/backend/cuda.h"
#include "engine/model.h"

#define GOLDEN "tests/data/golden"

static int fails, checks;

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "cannot open %s\n", path);
		exit(2);
	}
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	if (fread(b, 1, (size_t)n, f) != (size_t)n)
		exit(2);
	fclose(f);
	b[n] = 0;
	if (len)
		*len = (size_t)n;
	return b;
}

static int argmax(const float *v, int n)
{
	int b = 0;
	for (int i = 1; i < n; i++)
		if (v[i] > v[b])
			b = i;
	return b;
}

/* prefill with every token's logits into lg (n, V), then n_gen greedy tokens into gen */
static void run_prompt(struct eng_model *m, struct eng_kv *kv, const int32_t *ids, int n, float *lg, int32_t *gen,
		       int n_gen)
{
	int V = m->cfg.vocab;
	struct eng_kv_seq seq, *seqs[1] = {&seq};
	struct sh_err err;
	eng_kv_seq_init(&seq);
	int32_t *pos = malloc(sizeof(int32_t) * n), *si = calloc((size_t)n, sizeof(int32_t));
	uint8_t *want = malloc((size_t)n);
	for (int i = 0; i < n; i++)
		pos[i] = i, want[i] = 1;
	if (eng_kv_seq_prepare(kv, &seq, 0, n, &err))
		exit(2);
	struct eng_batch b = {n, ids, pos, si, seqs, 1, want};
	if (eng_model_forward(m, kv, &b, lg, &err)) {
		fprintf(stderr, "forward: %s\n", err.msg);
		exit(2);
	}
	seq.n_tokens = n;
	float *one = malloc(sizeof(float) * V);
	const float *last = lg + (size_t)(n - 1) * V;
	for (int s = 0; s < n_gen; s++) {
		gen[s] = argmax(last, V);
		if (s == n_gen - 1)
			break;
		int32_t p = seq.n_tokens, z = 0;
		if (eng_kv_seq_prepare(kv, &seq, p, 1, &err))
			exit(2);
		struct eng_batch d = {1, &gen[s], &p, &z, seqs, 1, NULL};
		if (eng_model_forward(m, kv, &d, one, &err))
			exit(2);
		seq.n_tokens++;
		last = one;
	}
	eng_kv_seq_release(kv, &seq);
	free(pos), free(si), free(want), free(one);
}

struct bound {
	enum eng_kv_fmt fmt;
	double hf_nmse; /* fast mode: prefill NMSE against transformers (test_engine_golden.c's bounds; f32 gets
			 * bf16's: fast mode rounds the prefill GEMMs' activations to bf16) */
};

static const struct bound bounds[] = {
	{ENG_KV_F32, 5e-4}, {ENG_KV_BF16, 5e-4}, {ENG_KV_INT8, 3e-3}, {ENG_KV_FP8, 5e-3}, {ENG_KV_FP8_TENSOR, 1e30},
};

static void check_model(struct eng_backend *cpu, struct eng_backend *gpu, const char *name, int mla_prefill)
{
	char dir[256], path[512];
	struct sh_err err;
	snprintf(dir, sizeof(dir), GOLDEN "/%s", name);
	snprintf(path, sizeof(path), "%s/golden.json", dir);
	char *t = slurp(path, NULL);
	cJSON *root = cJSON_Parse(t);
	free(t);
	size_t nl;
	snprintf(path, sizeof(path), "%s/logits.f32", dir);
	float *ref = (float *)slurp(path, &nl);
	struct eng_model_opts o = {.dtype = -1, .max_tokens = 128, .mla_prefill = mla_prefill};
	struct eng_model *mc = NULL, *mg = NULL;
	if (eng_model_load(dir, &o, cpu, &mc, &err) || eng_model_load(dir, &o, gpu, &mg, &err)) {
		fprintf(stderr, "%s: %s\n", name, err.msg);
		exit(2);
	}
	int V = mc->cfg.vocab;
	struct eng_kv_shape shape;
	eng_model_kv_shape(mc, &shape);
	for (size_t f = 0; f < sizeof(bounds) / sizeof(bounds[0]); f++)
		for (int exact = 1; exact >= 0; exact--) {
			eng_cuda_set_exact(gpu, exact);
			struct eng_kv *kc = eng_kv_new(cpu, bounds[f].fmt, &shape, 16, &err);
			struct eng_kv *kg = eng_kv_new(gpu, bounds[f].fmt, &shape, 16, &err);
			double se_c = 0, sr_c = 0, se_h = 0, sr_h = 0;
			int same = 0, total = 0, top1 = 0, npos = 0;
			cJSON *p;
			cJSON_ArrayForEach(p, cJSON_GetObjectItem(root, "prompts"))
			{
				cJSON *ids = cJSON_GetObjectItem(p, "ids");
				int n = cJSON_GetArraySize(ids), ng = cJSON_GetArraySize(cJSON_GetObjectItem(p, "greedy"));
				int32_t *in = malloc(sizeof(int32_t) * n), gc[64], gg[64];
				for (int i = 0; i < n; i++)
					in[i] = cJSON_GetArrayItem(ids, i)->valueint;
				size_t off = (size_t)cJSON_GetObjectItem(p, "logits_offset")->valuedouble;
				float *lc = malloc(sizeof(float) * n * V), *lgp = malloc(sizeof(float) * n * V);
				run_prompt(mc, kc, in, n, lc, gc, ng);
				run_prompt(mg, kg, in, n, lgp, gg, ng);
				for (size_t i = 0; i < (size_t)n * V; i++) {
					double dc = (double)lgp[i] - lc[i], dh = (double)lgp[i] - ref[off + i];
					se_c += dc * dc, sr_c += (double)lc[i] * lc[i];
					se_h += dh * dh, sr_h += (double)ref[off + i] * ref[off + i];
				}
				for (int i = 0; i < n; i++, npos++)
					top1 += argmax(lgp + (size_t)i * V, V) == argmax(lc + (size_t)i * V, V);
				int agree = 1;
				for (int i = 0; i < ng; i++, total++) {
					agree &= gc[i] == gg[i];
					same += agree;
				}
				free(in), free(lc), free(lgp);
			}
			double nc = se_c / sr_c, nh = se_h / sr_h;
			int ok = 1;
			if (exact && (bounds[f].fmt == ENG_KV_F32 || bounds[f].fmt == ENG_KV_BF16))
				ok = same == total && nc < 1e-8;
			else if (exact)
				ok = nc < 1e-3;
			else
				ok = nh < bounds[f].hf_nmse;
			checks++;
			fails += !ok;
			printf("%-4s %-10s prefill %d kv %-10s %-5s: NMSE vs cpu %.2e, vs transformers %.2e, top-1 = cpu "
			       "%d/%d, greedy = cpu %d/%d\n",
			       ok ? "ok" : "FAIL", name, mla_prefill, eng_kv_fmt_name(bounds[f].fmt), exact ? "exact" : "fast",
			       nc, nh, top1, npos, same, total);
			fflush(stdout);
			eng_kv_free(kc);
			eng_kv_free(kg);
		}
	eng_cuda_set_exact(gpu, 0);
	eng_model_free(mc);
	eng_model_free(mg);
	cJSON_Delete(root);
	free(ref);
}

int main(void)
{
	struct sh_err err;
	struct eng_backend *cpu = eng_cpu_new(0), *gpu = eng_cuda_new(0, &err);
	if (!gpu) {
		fprintf(stderr, "no CUDA device: %s\n", err.msg);
		return 77;
	}
	const char *models[] = {"llama", "qwen2", "mistral", "deepseek_a", "deepseek_b"};
	for (int i = 0; i < 5; i++) {
		int ds = !strncmp(models[i], "deepseek", 8);
		check_model(cpu, gpu, models[i], 0);
		if (ds) {
			check_model(cpu, gpu, models[i], 1);
			check_model(cpu, gpu, models[i], 2);
		}
	}
	/* the decode steps above ran recorded (CUDA graphs) after their first run; the exact-mode
	 * greedy checks compared those replays with the CPU */
	long rep, rec, eag;
	eng_cuda_step_stats(gpu, &rep, &rec, &eag);
	checks++;
	fails += rep <= 0;
	printf("%-4s steps: %ld replayed, %ld recorded, %ld eager\n", rep > 0 ? "ok" : "FAIL", rep, rec, eag);
	printf("%d of %d checks failed\n", fails, checks);
	gpu->free(gpu);
	cpu->free(cpu);
	return fails;
}
