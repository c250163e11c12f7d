/* main.c: kvgate-engine.
 *   kvgate-engine serve MODEL_DIR [flags]   the OpenAI-compatible server (vLLM's flags; --help)
 *   kvgate-engine generate MODEL_DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N]
 *       [--temperature T] [--seed S] [--ignore-eos] [--kv-cache-dtype auto|fp8|int8|bf16]
 *       [--dtype auto|bfloat16|float16|float32] [--threads N] [--device cpu|cuda] [--json]
 *     prints the continuation and tokens/s (text when the directory has a tokenizer, else ids).
 *   kvgate-engine perplexity MODEL_DIR --file TEXT [--kv-cache-dtype auto,fp8,int8,fp8_tensor]
 *       [--window 1024] [--max-windows N] [--reference heldout_ppl.json] [--device cpu|cuda] [--json] ...
 *     held-out perplexity with the recipe of eval/heldout_ppl.json (engine/ppl.h), one figure per
 *     KV format; with --reference, transformers' figure over the same windows beside it.
 *   kvgate-engine serve MODEL_DIR --config FILE [flags]
 *     flags from FILE first (conf/engine/NAME.yaml, the format of vllm serve --config), then the command line's,
 *     so an explicit flag overrides the preset.
 * generate samples exactly as the server does (same sampler, absorbed MLA attention for every
 * step), so the server's output for a seed equals generate's. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/api.h"
#include "engine/backend.h"
#ifdef KV_HAVE_CUDA
#include "engine/backend/cuda.h"
#endif
#include "engine/model.h"
#include "engine/ppl.h"
#include "engine/sampler.h"
#include "tok.h"

int eng_serve_main(int argc, char **argv);

static void usage(FILE *f)
{
	fprintf(f, "usage: kvgate-engine serve MODEL_DIR [flags]   (kvgate-engine serve --help lists them)\n");
	fprintf(f, "       kvgate-engine generate MODEL_DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N]\n"
		   "         [--temperature T] [--seed S] [--ignore-eos] [--kv-cache-dtype auto|fp8|int8|bf16]\n"
		   "         [--dtype auto|bfloat16|float16|float32] [--threads N] [--device cpu|cuda] [--json]\n");
	fprintf(f, "       kvgate-engine perplexity MODEL_DIR --file TEXT [--kv-cache-dtype auto|fp8|int8|fp8_tensor[,...]]\n"
		   "         [--window 1024] [--max-windows N] [--reference heldout_ppl.json] [--bos ID] [--chunk N]\n"
		   "         [--dtype auto|bfloat16|float16|float32] [--threads N] [--device cpu|cuda] [--json] [--quiet]\n");
	fprintf(f, "       kvgate-engine serve MODEL_DIR --config FILE [flags]   (FILE: conf/engine/*.yaml; flags override it)\n");
}

static int parse_ids(const char *s, int32_t **out, int *n)
{
	int cap = 16;
	*out = malloc(sizeof(int32_t) * (size_t)cap);
	*n = 0;
	while (*s) {
		char *end;
		errno = 0;
		long v = strtol(s, &end, 10);
		if (end == s || errno || v < 0 || v > INT32_MAX || (*end && *end != ','))
			return -1;
		if (*n == cap)
			*out = realloc(*out, sizeof(int32_t) * (size_t)(cap *= 2));
		(*out)[(*n)++] = (int32_t)v;
		s = *end ? end + 1 : end;
	}
	return *n ? 0 : -1;
}

/* --device: 1 for cuda, 0 for cpu, -1 (message printed) for anything else */
static int parse_device(const char *device)
{
	if (!strcmp(device, "cuda"))
		return 1;
	if (!strcmp(device, "cpu"))
		return 0;
	fprintf(stderr, "kvgate-engine: --device cpu|cuda, got '%s'\n", device);
	return -1;
}

/* The backend of --device (CUDA device 0, as serve), or NULL with a message. */
static struct eng_backend *make_backend(int cuda, int threads)
{
	if (!cuda)
		return eng_cpu_new(threads);
#ifdef KV_HAVE_CUDA
	struct sh_err err = {{0}};
	struct eng_backend *be = eng_cuda_new(0, &err);
	if (!be)
		fprintf(stderr, "kvgate-engine: --device cuda: %s\n", err.msg);
	return be;
#else
	fprintf(stderr, "kvgate-engine: --device cuda: this build has no CUDA backend (nvcc was not found at build time)\n");
	return NULL;
#endif
}

static int cmd_generate(int argc, char **argv)
{
	static const struct option opts[] = {
		{"prompt", required_argument, 0, 'p'},      {"prompt-ids", required_argument, 0, 'i'},
		{"max-tokens", required_argument, 0, 'n'},  {"temperature", required_argument, 0, 't'},
		{"seed", required_argument, 0, 's'},        {"ignore-eos", no_argument, 0, 'e'},
		{"kv-cache-dtype", required_argument, 0, 'k'}, {"dtype", required_argument, 0, 'd'},
		{"threads", required_argument, 0, 'j'},     {"json", no_argument, 0, 'J'},
		{"device", required_argument, 0, 'D'},      {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0}};
	const char *prompt = NULL, *prompt_ids = NULL, *kvs = "auto", *dts = "auto", *device = "cpu";
	int max_tokens = 32, ignore_eos = 0, json = 0, threads = 0, c, rc = 1;
	float temperature = 0;
	unsigned long long seed = 0;
	struct sh_err err = {{0}};
	struct eng_backend *be = NULL;
	struct eng_model *m = NULL;
	struct eng_kv *kv = NULL;
	struct sh_tok *tok = NULL;
	struct eng_kv_seq seq;
	struct eng_sampler smp = {0};
	int32_t *ids = NULL, *gen = NULL, *pos = NULL, *si = NULL;
	float *logits = NULL;
	char *text = NULL;
	int n_prompt = 0, n_gen = 0;

	eng_kv_seq_init(&seq);
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'p': prompt = optarg; break;
		case 'i': prompt_ids = optarg; break;
		case 'n': max_tokens = atoi(optarg); break;
		case 't': temperature = strtof(optarg, NULL); break;
		case 's': seed = strtoull(optarg, NULL, 10); break;
		case 'e': ignore_eos = 1; break;
		case 'k': kvs = optarg; break;
		case 'd': dts = optarg; break;
		case 'j': threads = atoi(optarg); break;
		case 'J': json = 1; break;
		case 'D': device = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	int cuda = parse_device(device);
	if (cuda < 0)
		return 2;
	if (optind != argc - 1 || !!prompt == !!prompt_ids || max_tokens < 1 || temperature < 0) {
		usage(stderr);
		return 2;
	}
	const char *dir = argv[optind];
	int dtype = !strcmp(dts, "auto") ? -1 : !strcmp(dts, "bfloat16") ? ENG_DT_BF16
		  : !strcmp(dts, "float16") ? ENG_DT_F16 : !strcmp(dts, "float32") ? ENG_DT_F32 : -2;
	/* auto: the CPU computes in f32; CUDA's auto is the model dtype (bf16), as serve */
	int fmt = eng_kv_fmt_parse(kvs, cuda ? ENG_KV_BF16 : ENG_KV_F32);
	if (dtype == -2 || fmt < 0) {
		fprintf(stderr, "kvgate-engine: --dtype auto|bfloat16|float16|float32, --kv-cache-dtype auto|fp8|int8|bf16\n");
		return 2;
	}

	char tpath[4096];
	snprintf(tpath, sizeof(tpath), "%s/tokenizer.json", dir);
	if (access(tpath, R_OK) == 0 && !(tok = sh_tok_new(dir, &err))) {
		fprintf(stderr, "kvgate-engine: %s\n", err.msg);
		goto out;
	}
	if (prompt) {
		struct sh_tok_ids v;
		if (!tok) {
			fprintf(stderr, "kvgate-engine: --prompt needs %s; use --prompt-ids\n", tpath);
			goto out;
		}
		sh_tok_ids_init(&v);
		if (sh_tok_encode(tok, prompt, strlen(prompt), SH_TOK_ADD_SPECIAL, &v, &err)) {
			fprintf(stderr, "kvgate-engine: --prompt: %s\n", err.msg);
			sh_tok_ids_release(&v);
			goto out;
		}
		n_prompt = (int)v.n;
		ids = malloc(sizeof(int32_t) * (v.n ? v.n : 1));
		memcpy(ids, v.ids, sizeof(int32_t) * v.n);
		sh_tok_ids_release(&v);
		if (!n_prompt) {
			fprintf(stderr, "kvgate-engine: the prompt encodes to no tokens\n");
			goto out;
		}
	} else if (parse_ids(prompt_ids, &ids, &n_prompt)) {
		fprintf(stderr, "kvgate-engine: --prompt-ids: comma-separated non-negative integers\n");
		goto out;
	}

	if (!(be = make_backend(cuda, threads)))
		goto out;
	struct eng_model_opts mo = {.dtype = dtype, .max_tokens = 256, .mla_prefill = 1, .progress = !json};
	int64_t t0 = sh_now_us();
	if (eng_model_load(dir, &mo, be, &m, &err)) {
		fprintf(stderr, "kvgate-engine: %s: %s\n", dir, err.msg);
		goto out;
	}
	int64_t t_load = sh_now_us() - t0;
	if (n_prompt + max_tokens > m->cfg.max_pos) {
		fprintf(stderr, "kvgate-engine: prompt (%d) + max tokens (%d) > max_position_embeddings (%d)\n", n_prompt,
			max_tokens, m->cfg.max_pos);
		goto out;
	}
	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	kv = eng_kv_new(be, (enum eng_kv_fmt)fmt, &shape, (n_prompt + max_tokens + 15) / 16, &err);
	if (!kv) {
		fprintf(stderr, "kvgate-engine: %s\n", err.msg);
		goto out;
	}
	int V = m->cfg.vocab, T = m->opts.max_tokens;
	gen = malloc(sizeof(int32_t) * (size_t)max_tokens);
	pos = malloc(sizeof(int32_t) * (size_t)T);
	si = calloc((size_t)T, sizeof(int32_t));
	logits = malloc(sizeof(float) * (size_t)V);
	struct eng_kv_seq *seqs[1] = {&seq};
	for (int i = 0; i < n_prompt; i++)
		if (ids[i] >= V) {
			fprintf(stderr, "kvgate-engine: prompt id %d >= vocab %d\n", ids[i], V);
			goto out;
		}

	/* prefill, in chunks of the workspace size; logits of the last token */
	int64_t t1 = sh_now_us();
	for (int p0 = 0; p0 < n_prompt; p0 += T) {
		int n = SH_MIN(T, n_prompt - p0);
		for (int i = 0; i < n; i++)
			pos[i] = p0 + i;
		struct eng_batch b = {n, ids + p0, pos, si, seqs, 1, NULL};
		if (eng_kv_seq_prepare(kv, &seq, p0, n, &err) || eng_model_forward(m, kv, &b, logits, &err)) {
			fprintf(stderr, "kvgate-engine: %s\n", err.msg);
			goto out;
		}
		seq.n_tokens += n;
	}
	int64_t t2 = sh_now_us();
	eng_sampler_init(&smp, temperature, seed);
	for (;;) {
		int32_t t = eng_sampler_sample(&smp, logits, V, ids, n_prompt, gen, n_gen);
		gen[n_gen++] = t;
		if ((!ignore_eos && t == m->cfg.eos_id) || n_gen == max_tokens)
			break;
		pos[0] = seq.n_tokens;
		struct eng_batch b = {1, &gen[n_gen - 1], pos, si, seqs, 1, NULL};
		if (eng_kv_seq_prepare(kv, &seq, pos[0], 1, &err) || eng_model_forward(m, kv, &b, logits, &err)) {
			fprintf(stderr, "kvgate-engine: %s\n", err.msg);
			goto out;
		}
		seq.n_tokens++;
	}
	int64_t t3 = sh_now_us();
	/* decode rate: tokens produced by decode steps over their time (the first comes from prefill) */
	double tps = n_gen > 1 ? (n_gen - 1) / ((t3 - t2) / 1e6) : 0;
	double prefill_tps = n_prompt / ((t2 - t1) / 1e6);
	size_t text_len = 0;
	if (tok)
		text = sh_tok_decode(tok, gen, (size_t)n_gen, SH_TOK_SKIP_SPECIAL, &text_len, &err);
	if (json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddItemToObject(o, "prompt_ids", cJSON_CreateIntArray(ids, n_prompt));
		cJSON_AddItemToObject(o, "ids", cJSON_CreateIntArray(gen, n_gen));
		cJSON_AddItemToObject(o, "text", eng_api_jstr(text ? text : "", text ? text_len : 0));
		cJSON_AddNumberToObject(o, "tokens_per_s", tps);
		cJSON_AddNumberToObject(o, "prefill_tokens_per_s", prefill_tps);
		cJSON_AddStringToObject(o, "kv_cache_dtype", eng_kv_fmt_name(kv->fmt));
		cJSON_AddStringToObject(o, "device", be->name);
		char *s = cJSON_PrintUnformatted(o);
		puts(s);
		free(s);
		cJSON_Delete(o);
	} else {
		if (text)
			printf("%s\n", text);
		else
			for (int i = 0; i < n_gen; i++)
				printf("%d%s", gen[i], i + 1 < n_gen ? "," : "\n");
		fprintf(stderr, "%d prompt tokens, %d generated; load %.2f s; prefill %.1f tokens/s; decode %.1f tokens/s "
				"(%s, kv %s, %.0f B/token/layer, %d threads, weights %.1f MB)\n",
			n_prompt, n_gen, t_load / 1e6, prefill_tps, tps, be->name, eng_kv_fmt_name(kv->fmt),
			eng_kv_bytes_per_token_layer(kv), threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN),
			m->weight_bytes / 1e6);
	}
	rc = 0;
out:
	if (kv)
		eng_kv_seq_release(kv, &seq);
	eng_kv_free(kv);
	eng_model_free(m);
	if (be)
		be->free(be);
	sh_tok_free(tok);
	free(text);
	free(ids);
	free(gen);
	free(pos);
	free(si);
	free(logits);
	eng_sampler_release(&smp);
	return rc;
}


/* ---- perplexity ---- */

struct ppl_ref {
	cJSON *root;
	const cJSON *windows; /* windows_fp32: [{start, n, nll}] */
	double ppl;           /* transformers_fp32_eager.ppl (all windows) */
	const char *ids_sha256;
};

static char *read_file(const char *path, size_t cap, size_t *len, struct sh_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		sh_errf(err, "%s: %s", path, strerror(errno));
		return NULL;
	}
	size_t n = 0, sz = 1 << 16;
	char *buf = sh_malloc(sz + 1);
	for (;;) {
		size_t r = fread(buf + n, 1, sz - n, f);
		n += r;
		if (n < sz)
			break;
		if (sz >= cap) {
			sh_errf(err, "%s: larger than %zu bytes", path, cap);
			free(buf);
			fclose(f);
			return NULL;
		}
		sz = SH_MIN(sz * 2, cap);
		buf = sh_realloc(buf, sz + 1);
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		sh_errf(err, "%s: read error", path);
		free(buf);
		return NULL;
	}
	buf[n] = 0;
	*len = n;
	return buf;
}

/* SHA-256 of the ids as little-endian int32 (heldout_ppl.json's token_ids_sha256_le_int32), hex. */
static void ids_sha256(const int32_t *ids, size_t n, char hex[65])
{
	unsigned char md[32];
	unsigned int mdlen = 0;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	for (size_t i = 0; i < n; i++) {
		uint32_t u = (uint32_t)ids[i];
		unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
				      (unsigned char)(u >> 24)};
		EVP_DigestUpdate(c, b, 4);
	}
	EVP_DigestFinal_ex(c, md, &mdlen);
	EVP_MD_CTX_free(c);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static int ref_load(const char *path, struct ppl_ref *r, struct sh_err *err)
{
	size_t len;
	char *txt = read_file(path, (size_t)16 << 20, &len, err);
	if (!txt)
		return SH_ERR;
	r->root = cJSON_Parse(txt);
	free(txt);
	if (!r->root)
		return sh_errf(err, "%s: not JSON", path);
	r->windows = cJSON_GetObjectItem(r->root, "windows_fp32");
	const cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(r->root, "transformers_fp32_eager"), "ppl");
	const cJSON *h = cJSON_GetObjectItem(r->root, "token_ids_sha256_le_int32");
	if (!cJSON_IsArray(r->windows) || !cJSON_IsNumber(t))
		return sh_errf(err, "%s: no windows_fp32 array or transformers_fp32_eager.ppl", path);
	r->ppl = t->valuedouble;
	r->ids_sha256 = cJSON_IsString(h) ? h->valuestring : NULL;
	return SH_OK;
}

/* The reference's NLL sum over our windows; -1 when a window's start or length differs. */
static double ref_nll(const struct ppl_ref *r, const struct eng_ppl_window *w, int nw)
{
	double s = 0;
	if (cJSON_GetArraySize(r->windows) < nw)
		return -1;
	for (int i = 0; i < nw; i++) {
		const cJSON *e = cJSON_GetArrayItem(r->windows, i);
		const cJSON *st = cJSON_GetObjectItem(e, "start"), *n = cJSON_GetObjectItem(e, "n"),
			    *nll = cJSON_GetObjectItem(e, "nll");
		if (!cJSON_IsNumber(st) || !cJSON_IsNumber(n) || !cJSON_IsNumber(nll) || st->valueint != w[i].start ||
		    n->valueint != w[i].n)
			return -1;
		s += nll->valuedouble;
	}
	return s;
}

struct ppl_progress {
	const char *fmt;
	int64_t t0;
	double nll;
	long tokens;
};

static void ppl_progress(void *ud, int i, int n, const struct eng_ppl_window *w)
{
	struct ppl_progress *p = ud;
	p->nll += w->nll;
	p->tokens += w->n;
	double s = (sh_now_us() - p->t0) / 1e6;
	fprintf(stderr, "kv %s: window %d/%d (start %d, %d tokens): nll %.4f; running ppl %.4f; %.0f s, %.0f tokens/s\n",
		p->fmt, i, n, w->start, w->n, w->nll, exp(p->nll / (double)p->tokens), s, p->tokens / s);
}

static int cmd_perplexity(int argc, char **argv)
{
	static const struct option opts[] = {
		{"file", required_argument, 0, 'f'},        {"kv-cache-dtype", required_argument, 0, 'k'},
		{"window", required_argument, 0, 'w'},      {"max-windows", required_argument, 0, 'm'},
		{"reference", required_argument, 0, 'r'},   {"bos", required_argument, 0, 'b'},
		{"chunk", required_argument, 0, 'c'},       {"dtype", required_argument, 0, 'd'},
		{"threads", required_argument, 0, 'j'},     {"json", no_argument, 0, 'J'},
		{"quiet", no_argument, 0, 'q'},             {"device", required_argument, 0, 'D'},
		{"help", no_argument, 0, 'h'},              {0, 0, 0, 0}};
	const char *file = NULL, *kvs = "auto", *dts = "auto", *refpath = NULL, *device = "cpu";
	int window = 1024, max_windows = 0, bos = -1, chunk = 0, threads = 0, json = 0, quiet = 0, c, rc = 1;
	struct sh_err err = {{0}};
	struct eng_backend *be = NULL;
	struct eng_model *m = NULL;
	struct sh_tok *tok = NULL;
	struct sh_tok_ids ids;
	struct ppl_ref ref = {0};
	struct eng_ppl_window *wins = NULL;
	char *text = NULL, *kvlist = NULL;
	cJSON *jout = NULL;

	sh_tok_ids_init(&ids);
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'f': file = optarg; break;
		case 'k': kvs = optarg; break;
		case 'w': window = atoi(optarg); break;
		case 'm': max_windows = atoi(optarg); break;
		case 'r': refpath = optarg; break;
		case 'b': bos = atoi(optarg); break;
		case 'c': chunk = atoi(optarg); break;
		case 'd': dts = optarg; break;
		case 'j': threads = atoi(optarg); break;
		case 'J': json = 1; break;
		case 'q': quiet = 1; break;
		case 'D': device = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	int cuda = parse_device(device);
	if (cuda < 0)
		return 2;
	if (optind != argc - 1 || !file || window < 1 || max_windows < 0 || chunk < 0) {
		usage(stderr);
		return 2;
	}
	const char *dir = argv[optind];
	int dtype = !strcmp(dts, "auto") ? -1 : !strcmp(dts, "bfloat16") ? ENG_DT_BF16
		  : !strcmp(dts, "float16") ? ENG_DT_F16 : !strcmp(dts, "float32") ? ENG_DT_F32 : -2;
	if (dtype == -2) {
		fprintf(stderr, "kvgate-engine: --dtype auto|bfloat16|float16|float32\n");
		return 2;
	}
	/* the formats, comma-separated, checked before the model loads */
	int fmts[8], n_fmts = 0;
	kvlist = sh_strdup(kvs);
	for (char *save = NULL, *t = strtok_r(kvlist, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int f = eng_kv_fmt_parse(t, cuda ? ENG_KV_BF16 : ENG_KV_F32); /* auto: CPU f32, CUDA bf16 */
		if (f < 0 || n_fmts == (int)SH_ARRAY_LEN(fmts)) {
			fprintf(stderr, "kvgate-engine: --kv-cache-dtype: up to 8 of auto|fp8|fp8_e4m3|int8|bf16|f32|fp8_tensor, "
					"comma-separated; got '%s'\n", t);
			rc = 2;
			goto out;
		}
		fmts[n_fmts++] = f;
	}
	if (!n_fmts) {
		fprintf(stderr, "kvgate-engine: --kv-cache-dtype: empty\n");
		rc = 2;
		goto out;
	}
	if (refpath && ref_load(refpath, &ref, &err)) {
		fprintf(stderr, "kvgate-engine: --reference %s\n", err.msg);
		goto out;
	}

	/* 1. tokenize the file as the recipe says: tokenizer.json, no special tokens added */
	size_t len;
	if (!(text = read_file(file, SH_TOK_MAX_TEXT, &len, &err)) || !(tok = sh_tok_new(dir, &err)) ||
	    sh_tok_encode(tok, text, len, 0, &ids, &err)) {
		fprintf(stderr, "kvgate-engine: %s\n", err.msg);
		goto out;
	}
	if (ids.n == 0 || ids.n > INT32_MAX / 2) {
		fprintf(stderr, "kvgate-engine: %s: %zu tokens\n", file, ids.n);
		goto out;
	}
	char hex[65];
	ids_sha256(ids.ids, ids.n, hex);
	if (ref.ids_sha256 && strcmp(hex, ref.ids_sha256))
		fprintf(stderr, "kvgate-engine: warning: the token ids' SHA-256 (%s) differs from the reference's (%s): "
				"the tokenizer or the text is not the same\n", hex, ref.ids_sha256);

	/* 2. the model, with a workspace of one chunk (default: a whole window per forward call) */
	if (!(be = make_backend(cuda, threads)))
		goto out;
	struct eng_model_opts mo = {.dtype = dtype, .max_tokens = chunk ? chunk : window, .mla_prefill = 0,
				    .progress = !json && !quiet};
	if (eng_model_load(dir, &mo, be, &m, &err)) {
		fprintf(stderr, "kvgate-engine: %s: %s\n", dir, err.msg);
		goto out;
	}
	if (bos < 0)
		bos = sh_tok_bos_id(tok) >= 0 ? sh_tok_bos_id(tok) : m->cfg.bos_id;
	struct eng_ppl_opts po = {.window = window, .bos = bos, .max_windows = max_windows};
	int nw = eng_ppl_n_windows((int)ids.n, &po);
	long n_scored = 0;
	wins = sh_calloc((size_t)nw, sizeof(*wins));
	double rnll = refpath ? -2 : 0;

	/* 3. one pass per KV format */
	jout = cJSON_CreateObject();
	cJSON_AddStringToObject(jout, "file", file);
	cJSON_AddNumberToObject(jout, "file_tokens", (double)ids.n);
	cJSON_AddStringToObject(jout, "token_ids_sha256_le_int32", hex);
	cJSON_AddNumberToObject(jout, "window", window);
	cJSON_AddNumberToObject(jout, "windows", nw);
	cJSON_AddNumberToObject(jout, "bos_id", bos);
	cJSON_AddNumberToObject(jout, "threads", threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN));
	cJSON_AddStringToObject(jout, "device", be->name);
	cJSON *jres = cJSON_AddArrayToObject(jout, "results");
	if (!json)
		printf("%s: %zu tokens (ids sha256 %.16s...), %d window(s) of %d after BOS %d\n", file, ids.n, hex, nw,
		       window, bos);
	for (int f = 0; f < n_fmts; f++) {
		struct ppl_progress pp = {eng_kv_fmt_name((enum eng_kv_fmt)fmts[f]), sh_now_us(), 0, 0};
		po.progress = quiet || json ? NULL : ppl_progress;
		po.ud = &pp;
		if (eng_ppl_run(m, (enum eng_kv_fmt)fmts[f], ids.ids, (int)ids.n, &po, wins, &err)) {
			fprintf(stderr, "kvgate-engine: %s\n", err.msg);
			goto out;
		}
		double secs = (sh_now_us() - pp.t0) / 1e6, nll = 0;
		n_scored = 0;
		for (int i = 0; i < nw; i++) {
			nll += wins[i].nll;
			n_scored += wins[i].n;
		}
		double ppl = exp(nll / (double)n_scored);
		if (rnll == -2) {
			rnll = ref_nll(&ref, wins, nw);
			if (rnll < 0)
				fprintf(stderr, "kvgate-engine: warning: the reference's windows differ from ours (window size or text)\n");
		}
		double rppl = rnll > 0 ? exp(rnll / (double)n_scored) : 0;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "kv_cache_dtype", pp.fmt);
		cJSON_AddNumberToObject(o, "tokens", (double)n_scored);
		cJSON_AddNumberToObject(o, "nll_sum", nll);
		cJSON_AddNumberToObject(o, "mean_nll", nll / (double)n_scored);
		cJSON_AddNumberToObject(o, "ppl", ppl);
		cJSON_AddNumberToObject(o, "seconds", secs);
		cJSON_AddNumberToObject(o, "tokens_per_s", n_scored / secs);
		if (rppl > 0) {
			cJSON_AddNumberToObject(o, "reference_ppl", rppl);
			cJSON_AddNumberToObject(o, "rel_diff", ppl / rppl - 1);
		}
		cJSON *jw = cJSON_AddArrayToObject(o, "windows");
		for (int i = 0; i < nw; i++) {
			cJSON *e = cJSON_CreateObject();
			cJSON_AddNumberToObject(e, "start", wins[i].start);
			cJSON_AddNumberToObject(e, "n", wins[i].n);
			cJSON_AddNumberToObject(e, "nll", wins[i].nll);
			cJSON_AddItemToArray(jw, e);
		}
		cJSON_AddItemToArray(jres, o);
		if (!json) {
			printf("kv %-10s %8ld tokens  mean nll %.5f  ppl %.4f", pp.fmt, n_scored, nll / (double)n_scored, ppl);
			if (rppl > 0)
				printf("  (reference %.4f: %+.3f%%)", rppl, 100 * (ppl / rppl - 1));
			printf("  %.1f s, %.0f tokens/s\n", secs, n_scored / secs);
			fflush(stdout);
		}
	}
	if (refpath && rnll > 0 && nw == cJSON_GetArraySize(ref.windows))
		cJSON_AddNumberToObject(jout, "reference_ppl_all", ref.ppl);
	if (json) {
		char *s = cJSON_PrintUnformatted(jout);
		puts(s);
		free(s);
	}
	rc = 0;
out:
	cJSON_Delete(jout);
	cJSON_Delete(ref.root);
	free(wins);
	eng_model_free(m);
	if (be)
		be->free(be);
	sh_tok_ids_release(&ids);
	sh_tok_free(tok);
	free(text);
	free(kvlist);
	return rc;
}

/* ---- serve --config FILE ---- */

#define CONFIG_MAX_BYTES (64 << 10)
#define CONFIG_MAX_ARGS 256

/* Appends the flags of a preset file to av (strings owned by *store). The format is the flat
 * subset of YAML that `vllm serve --config` reads: one `key: value` per line, key as the flag
 * without its dashes (`_` and `-` both accepted), `true` for a flag without value (and `false` for
 * its --no- form), `#` comments, optional quotes around a value. Anything else (indentation,
 * lists, a line without `key:`) is refused with file:line, so a typo never passes silently. */
static int config_expand(const char *path, char **av, int *ac, char ***store, int *n_store, struct sh_err *err)
{
	size_t len;
	char *txt = read_file(path, CONFIG_MAX_BYTES, &len, err);
	if (!txt)
		return SH_ERR;
	*store = sh_realloc(*store, sizeof(char *) * (size_t)(*n_store + 1));
	(*store)[(*n_store)++] = txt; /* the values point into it */
	int line;
	char *p = txt;
	for (line = 1; *p; line++) {
		char *nl = strchr(p, '\n'), *l = p;
		if (nl)
			*nl = 0;
		p = nl ? nl + 1 : p + strlen(p);
		char *hash = l;
		/* a comment starts at a # at the line start or after a blank (values never contain one) */
		while ((hash = strchr(hash, '#'))) {
			if (hash == l || isspace((unsigned char)hash[-1])) {
				*hash = 0;
				break;
			}
			hash++;
		}
		size_t n = strlen(l);
		while (n && isspace((unsigned char)l[n - 1]))
			l[--n] = 0;
		if (!n || !strcmp(l, "---"))
			continue;
		if (isspace((unsigned char)l[0]) || l[0] == '-' || !strchr(l, ':'))
			return sh_errf(err, "%s:%d: expected `key: value` at the line start (flat YAML, as vllm serve --config)",
				       path, line);
		char *key = l, *val = strchr(l, ':');
		*val++ = 0;
		while (isspace((unsigned char)*val))
			val++;
		size_t vn = strlen(val);
		if (vn >= 2 && (val[0] == '"' || val[0] == '\'') && val[vn - 1] == val[0]) {
			val[vn - 1] = 0;
			val++;
		}
		for (char *k = key; *k; k++) {
			if (*k == '_')
				*k = '-';
			if (!isalnum((unsigned char)*k) && *k != '-')
				return sh_errf(err, "%s:%d: bad key '%s'", path, line, key);
		}
		if (*ac + 2 >= CONFIG_MAX_ARGS)
			return sh_errf(err, "%s: more than %d flags", path, CONFIG_MAX_ARGS / 2);
		char *flag = sh_malloc(strlen(key) + 6);
		int neg = !strcmp(val, "false");
		sprintf(flag, "--%s%s", neg ? "no-" : "", key);
		*store = sh_realloc(*store, sizeof(char *) * (size_t)(*n_store + 1));
		(*store)[(*n_store)++] = flag;
		av[(*ac)++] = flag;
		if (*val && strcmp(val, "true") && !neg)
			av[(*ac)++] = val;
		else if (!*val)
			return sh_errf(err, "%s:%d: '%s' has no value (true/false for a switch)", path, line, key);
	}
	return SH_OK;
}

static int cmd_serve(int argc, char **argv)
{
	char *av[CONFIG_MAX_ARGS * 2 + 2];
	char **store = NULL;
	int ac = 0, n_store = 0, has_config = 0, rc;
	struct sh_err err = {{0}};

	if (argc > CONFIG_MAX_ARGS) {
		fprintf(stderr, "kvgate-engine: too many arguments\n");
		return 2;
	}
	av[ac++] = argv[0];
	/* the presets' flags first, in the order given */
	for (int i = 1; i < argc; i++) {
		const char *path = NULL;
		if (!strcmp(argv[i], "--config")) {
			if (i + 1 == argc) {
				fprintf(stderr, "kvgate-engine: --config needs a file\n");
				rc = 2;
				goto out;
			}
			path = argv[++i];
		} else if (!strncmp(argv[i], "--config=", 9)) {
			path = argv[i] + 9;
		}
		if (path) {
			has_config = 1;
			if (config_expand(path, av, &ac, &store, &n_store, &err)) {
				fprintf(stderr, "kvgate-engine: --config %s\n", err.msg);
				rc = 2;
				goto out;
			}
		}
	}
	/* then the command line's, which win (the last occurrence of a flag is the one that counts) */
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--config")) {
			i++;
			continue;
		}
		if (!strncmp(argv[i], "--config=", 9))
			continue;
		av[ac++] = argv[i];
	}
	av[ac] = NULL;
	if (has_config && getenv("KVGATE_ENGINE_PRINT_ARGS")) {
		for (int i = 0; i < ac; i++)
			printf("%s%s", av[i], i + 1 < ac ? " " : "\n");
		rc = 0;
		goto out;
	}
	rc = eng_serve_main(ac, av);
out:
	for (int i = 0; i < n_store; i++)
		free(store[i]);
	free(store);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "generate"))
		return cmd_generate(argc - 1, argv + 1);
	if (argc >= 2 && !strcmp(argv[1], "perplexity"))
		return cmd_perplexity(argc - 1, argv + 1);
	if (argc >= 2 && !strcmp(argv[1], "serve"))
		return cmd_serve(argc - 1, argv + 1);
	usage(argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? stdout : stderr);
	return 2;
}
