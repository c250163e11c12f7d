/* serve.c: `kvgate-engine serve MODEL_DIR [flags]`: vLLM's flags and meanings, one table (name,
 * argument, default, help) that both the parser and --help read. Unknown flags are refused. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "backend.h"
#include "chat.h"
#include "model.h"
#include "sched.h"
#include "server.h"
#include "tok.h"
#ifdef KV_HAVE_CUDA
#include "backend/cuda.h"
#endif

int eng_serve_main(int argc, char **argv);

enum {
	F_HOST = 1, F_PORT, F_NAME, F_DTYPE, F_KVDT, F_MAXLEN, F_GPUMEM, F_KVMEM, F_NBLOCKS, F_SEQS, F_BATCHED,
	F_BLOCK, F_PC, F_NOPC, F_DEVICE, F_SEED, F_TRC, F_THREADS, F_CHAT, F_MAXBODY, F_SHUTDOWN, F_GENCONF, F_HELP
};

struct flag {
	const char *name;
	int has_arg;
	int id;
	const char *def;
	const char *help;
};

static const struct flag flags[] = {
	{"host", 1, F_HOST, "127.0.0.1", "address to listen on (loopback by default: kvgate is the network edge; 0.0.0.0 to expose it)"},
	{"port", 1, F_PORT, "8000", "port to listen on"},
	{"served-model-name", 1, F_NAME, "MODEL_DIR", "the model name clients send and /v1/models shows; also seeds the prefix hashes"},
	{"dtype", 1, F_DTYPE, "auto", "weights: auto (as stored; CPU computes in fp32) | bfloat16 | float16 | float32 | half | float"},
	{"kv-cache-dtype", 1, F_KVDT, "auto", "KV cache: auto (CPU: f32, CUDA: bf16) | fp8 | fp8_e4m3 | int8 | bf16 (fp8_e5m2 refused)"},
	{"max-model-len", 1, F_MAXLEN, "max_position_embeddings", "longest prompt + output per sequence"},
	{"gpu-memory-utilization", 1, F_GPUMEM, "0.9", "CUDA: fraction of device memory for weights + workspace + KV cache (Jetson: of MemAvailable)"},
	{"kv-cache-memory", 1, F_KVMEM, "256M", "CPU backend: bytes of KV cache (K, M, G suffixes)"},
	{"num-gpu-blocks-override", 1, F_NBLOCKS, "0", "KV blocks to allocate (0: sized from memory), as vLLM"},
	{"max-num-seqs", 1, F_SEQS, "32", "sequences in the running batch at most"},
	{"max-num-batched-tokens", 1, F_BATCHED, "512", "tokens per scheduler step (prefill chunk budget)"},
	{"block-size", 1, F_BLOCK, "16", "tokens per KV block (16 only: it is part of the prefix-hash contract)"},
	{"enable-prefix-caching", 0, F_PC, "on", "reuse KV blocks of identical prompt prefixes"},
	{"no-enable-prefix-caching", 0, F_NOPC, "", "turn prefix caching off"},
	{"device", 1, F_DEVICE, "cpu", "cpu | cuda"},
	{"seed", 1, F_SEED, "0", "seeds the draws of the seeds of requests that carry none (the n-th such request samples the same for a given --seed)"},
	{"trust-remote-code", 0, F_TRC, "", "accepted for vLLM compatibility; nothing is executed"},
	{"threads", 1, F_THREADS, "all CPUs", "CPU backend threads"},
	{"chat-template-name", 1, F_CHAT, "detected", "built-in chat renderer: deepseek_v2 | deepseek_v3 | llama3 | chatml | qwen3"},
	{"max-body-bytes", 1, F_MAXBODY, "32M", "largest request body"},
	{"shutdown-timeout", 1, F_SHUTDOWN, "30", "SIGTERM/SIGINT: seconds the requests in flight get to finish (new ones are refused; a second signal stops at once)"},
	{"generation-config", 1, F_GENCONF, "auto", "request defaults (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens): auto (MODEL_DIR/generation_config.json when there is one) | vllm (vLLM's own) | a directory holding a generation_config.json"},
	{"help", 0, F_HELP, "", "this list"},
};

static void help(FILE *f)
{
	fprintf(f, "usage: kvgate-engine serve MODEL_DIR [flags]\n\nflags (default in brackets):\n");
	for (size_t i = 0; i < SH_ARRAY_LEN(flags); i++)
		fprintf(f, "  --%-26s %s%s%s%s\n", flags[i].name, flags[i].help, flags[i].def[0] ? " [" : "", flags[i].def,
			flags[i].def[0] ? "]" : "");
}

static int parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || errno || v < 0)
		return -1;
	double mul = 1;
	switch (*end) {
	case 'k': case 'K': mul = 1024; end++; break;
	case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
	case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
	default: break;
	}
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	if (*end || !(v * mul < 1e18)) /* bounded before the cast (inf and 1e300 parse too) */
		return -1;
	*out = (size_t)(v * mul);
	return 0;
}

static int parse_int(const char *name, const char *s, long lo, long hi, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (end == s || *end || errno || v < lo || v > hi) {
		fprintf(stderr, "kvgate-engine: --%s: an integer in %ld..%ld, got '%s'\n", name, lo, hi, s);
		return -1;
	}
	*out = (int)v;
	return 0;
}

static struct event_base *g_base;
static struct event *g_drain_timer;
static int g_shutdown_s = 30, g_stopping;

static void drained(void *ud)
{
	(void)ud;
	fprintf(stderr, "kvgate-engine: every request answered\n");
	event_base_loopexit(g_base, NULL);
}

/* The first time: the requests left end with a 503 (or an error event in their stream), and the
 * loop stops once those answers are written (drained), or after 2 s more whatever they wait for. */
static void drain_timeout(evutil_socket_t fd, short what, void *arg)
{
	static int aborted;
	(void)fd;
	(void)what;
	if (aborted++) {
		fprintf(stderr, "kvgate-engine: stopping with answers unsent\n");
		event_base_loopexit(g_base, NULL);
		return;
	}
	int n = eng_server_abort(arg, "the engine is shutting down (--shutdown-timeout passed)");
	fprintf(stderr, "kvgate-engine: --shutdown-timeout (%d s) passed: %d request(s) stopped with an error\n",
		g_shutdown_s, n);
	struct timeval tv = {2, 0};
	evtimer_add(g_drain_timer, &tv);
}

/* The first SIGTERM/SIGINT drains (arg: the server), the second stops at once. */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	if (g_stopping++ || !arg) {
		fprintf(stderr, "kvgate-engine: signal %d again: stopping now\n", (int)sig);
		event_base_loopexit(g_base, NULL);
		return;
	}
	int busy = eng_server_drain(arg, drained, NULL);
	fprintf(stderr, "kvgate-engine: signal %d: draining %d request(s), %d s at most\n", (int)sig, busy, g_shutdown_s);
	struct timeval tv = {g_shutdown_s, 0};
	evtimer_add(g_drain_timer, &tv);
}

int eng_serve_main(int argc, char **argv)
{
	struct option opts[SH_ARRAY_LEN(flags) + 1];
	const char *host = "127.0.0.1", *name = NULL, *genconf = "auto", *dts = "auto", *kvs = "auto", *device = "cpu", *chat_name = NULL;
	int port = 8000, max_len = 0, nblocks = 0, max_seqs = 32, batched = 512, block = 16, pc = 1, threads = 0, seed = 0;
	double gpu_util = 0.9;
	size_t kv_mem = (size_t)256 << 20, max_body = (size_t)32 << 20;
	int c, rc = 1;
	struct sh_err err = {{0}};

	for (size_t i = 0; i < SH_ARRAY_LEN(flags); i++)
		opts[i] = (struct option){flags[i].name, flags[i].has_arg ? required_argument : no_argument, 0, flags[i].id};
	memset(&opts[SH_ARRAY_LEN(flags)], 0, sizeof(opts[0]));
	g_shutdown_s = 30;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case F_HOST: host = optarg; break;
		case F_PORT: if (parse_int("port", optarg, 0, 65535, &port)) return 2; break;
		case F_NAME: name = optarg; break;
		case F_DTYPE: dts = optarg; break;
		case F_KVDT: kvs = optarg; break;
		case F_MAXLEN: if (parse_int("max-model-len", optarg, 2, 1 << 24, &max_len)) return 2; break;
		case F_GPUMEM: {
			char *end;
			gpu_util = strtod(optarg, &end);
			if (*end || !(gpu_util > 0 && gpu_util <= 1)) {
				fprintf(stderr, "kvgate-engine: --gpu-memory-utilization: a fraction in (0, 1], got '%s'\n", optarg);
				return 2;
			}
			break;
		}
		case F_KVMEM:
			if (parse_size(optarg, &kv_mem)) {
				fprintf(stderr, "kvgate-engine: --kv-cache-memory: bytes with an optional K/M/G suffix, got '%s'\n", optarg);
				return 2;
			}
			break;
		case F_NBLOCKS: if (parse_int("num-gpu-blocks-override", optarg, 0, 1 << 26, &nblocks)) return 2; break;
		case F_SEQS: if (parse_int("max-num-seqs", optarg, 1, 4096, &max_seqs)) return 2; break;
		case F_BATCHED: if (parse_int("max-num-batched-tokens", optarg, 1, 1 << 20, &batched)) return 2; break;
		case F_BLOCK: if (parse_int("block-size", optarg, 1, 1024, &block)) return 2; break;
		case F_PC: pc = 1; break;
		case F_NOPC: pc = 0; break;
		case F_DEVICE: device = optarg; break;
		case F_SEED: if (parse_int("seed", optarg, 0, INT32_MAX, &seed)) return 2; break;
		case F_TRC: break;
		case F_THREADS: if (parse_int("threads", optarg, 0, 4096, &threads)) return 2; break;
		case F_CHAT: chat_name = optarg; break;
		case F_MAXBODY:
			if (parse_size(optarg, &max_body)) {
				fprintf(stderr, "kvgate-engine: --max-body-bytes: bytes, got '%s'\n", optarg);
				return 2;
			}
			break;
		case F_SHUTDOWN: if (parse_int("shutdown-timeout", optarg, 0, 86400, &g_shutdown_s)) return 2; break;
		case F_GENCONF: genconf = optarg; break;
		case F_HELP: case 'h': help(stdout); return 0;
		case ':':
			fprintf(stderr, "kvgate-engine: %s needs a value\n", argv[optind - 1]);
			return 2;
		default:
			fprintf(stderr, "kvgate-engine: unknown flag '%s' (kvgate-engine serve --help lists the flags)\n",
				argv[optind - 1]);
			return 2;
		}
	}
	if (optind != argc - 1) {
		help(stderr);
		return 2;
	}
	const char *dir = argv[optind];
	if (!name)
		name = dir;
	if (block != ENG_KV_BLOCK_TOKENS) {
		fprintf(stderr, "kvgate-engine: --block-size %d: only %d (the KV layout and the prefix-hash contract use it)\n",
			block, ENG_KV_BLOCK_TOKENS);
		return 2;
	}
	int dtype = !strcmp(dts, "auto") ? -1
		  : !strcmp(dts, "bfloat16") ? ENG_DT_BF16
		  : !strcmp(dts, "float16") || !strcmp(dts, "half") ? ENG_DT_F16
		  : !strcmp(dts, "float32") || !strcmp(dts, "float") ? ENG_DT_F32 : -2;
	if (dtype == -2) {
		fprintf(stderr, "kvgate-engine: --dtype auto|bfloat16|float16|float32, got '%s'\n", dts);
		return 2;
	}
	if (!strcmp(kvs, "fp8_e5m2")) {
		fprintf(stderr, "kvgate-engine: --kv-cache-dtype fp8_e5m2 is refused: its 2-bit mantissa loses too much of "
				"the MLA latent (vLLM's own fp8_e5m2 has no scales either); use fp8 (e4m3 with per-token "
				"scales) or int8\n");
		return 2;
	}
	int cuda = !strcmp(device, "cuda");
	if (!cuda && strcmp(device, "cpu")) {
		fprintf(stderr, "kvgate-engine: --device cpu|cuda, got '%s'\n", device);
		return 2;
	}
	int fmt = eng_kv_fmt_parse(kvs, cuda ? ENG_KV_BF16 : ENG_KV_F32);
	if (fmt < 0) {
		fprintf(stderr, "kvgate-engine: --kv-cache-dtype auto|fp8|fp8_e4m3|int8|bf16, got '%s'\n", kvs);
		return 2;
	}

	struct eng_backend *be = NULL;
	struct eng_model *m = NULL;
	struct eng_kv *kv = NULL;
	struct sh_tok *tok = NULL;
	struct sh_chat *chat = NULL;
	struct eng_sched *sched = NULL;
	struct eng_server *srv = NULL;
	struct event *sig_int = NULL, *sig_term = NULL;

	if (cuda) {
#ifdef KV_HAVE_CUDA
		be = eng_cuda_new(0, &err);
		if (!be) {
			fprintf(stderr, "kvgate-engine: --device cuda: %s\n", err.msg);
			goto out;
		}
#else
		fprintf(stderr, "kvgate-engine: --device cuda: this build has no CUDA backend (nvcc was not found at build time)\n");
		return 2;
#endif
	} else {
		be = eng_cpu_new(threads);
	}
	if (!(tok = sh_tok_new(dir, &err))) {
		fprintf(stderr, "kvgate-engine: %s: the server needs the tokenizer: %s\n", dir, err.msg);
		goto out;
	}
	if (sh_tok_chat_template(tok) || chat_name) {
		chat = sh_chat_new(tok, chat_name, &err);
		if (!chat && chat_name) {
			fprintf(stderr, "kvgate-engine: --chat-template-name: %s\n", err.msg);
			goto out;
		}
		if (!chat)
			fprintf(stderr, "kvgate-engine: warning: chat template not recognised (%s); /v1/chat/completions is off\n",
				err.msg);
	}
	struct eng_model_opts mo = {.dtype = dtype, .max_tokens = batched, .mla_prefill = 1, .progress = 0};
	if (eng_model_load(dir, &mo, be, &m, &err)) {
		fprintf(stderr, "kvgate-engine: %s: %s\n", dir, err.msg);
		goto out;
	}
	if (!max_len)
		max_len = m->cfg.max_pos;
	if (max_len > m->cfg.max_pos) {
		fprintf(stderr, "kvgate-engine: --max-model-len %d is over the model's max_position_embeddings (%d)\n", max_len,
			m->cfg.max_pos);
		goto out;
	}
	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	size_t lbb = eng_kv_block_bytes(fmt, ENG_KV_BLOCK_TOKENS, (size_t)shape.row_elems, (size_t)shape.n_parts);
	size_t block_bytes = lbb * (size_t)shape.n_layers;
	if (!nblocks) {
		size_t budget = kv_mem;
#ifdef KV_HAVE_CUDA
		if (cuda) {
			size_t fr, tot;
			int unified;
			if (eng_cuda_mem_info(be, &fr, &tot, &unified, &err)) {
				fprintf(stderr, "kvgate-engine: %s\n", err.msg);
				goto out;
			}
			/* what is in use now (weights, workspace, others) comes out of total x utilisation */
			double want = (double)tot * gpu_util - (double)(tot - fr);
			budget = want > 0 ? (size_t)want : 0;
		}
#endif
		nblocks = (int)SH_MIN(budget / block_bytes, (size_t)1 << 26);
	}
	int need_blocks = (max_len + ENG_KV_BLOCK_TOKENS - 1) / ENG_KV_BLOCK_TOKENS;
	if (nblocks < need_blocks) {
		fprintf(stderr, "kvgate-engine: the KV cache (%d blocks of %d tokens) cannot hold one sequence of --max-model-len %d; "
				"give it more memory (--kv-cache-memory / --gpu-memory-utilization) or lower --max-model-len\n",
			nblocks, ENG_KV_BLOCK_TOKENS, max_len);
		goto out;
	}
	if (!(kv = eng_kv_new(be, (enum eng_kv_fmt)fmt, &shape, nblocks, &err))) {
		fprintf(stderr, "kvgate-engine: %s\n", err.msg);
		goto out;
	}
	struct eng_sched_conf sc = {.max_num_seqs = max_seqs, .max_batched_tokens = batched, .prefix_caching = pc,
				    .model_name = name, .log_cap = 65536};
	sched = eng_sched_new(m, kv, tok, &sc, eng_server_notify, NULL);
	struct eng_api_ctx ctx = {.tok = tok, .chat = chat, .model = name, .max_model_len = max_len,
				  .capacity = nblocks * ENG_KV_BLOCK_TOKENS, .block_size = ENG_KV_BLOCK_TOKENS};
	struct eng_sampling gen_defaults;
	if (strcmp(genconf, "vllm")) { /* vLLM's --generation-config: auto, vllm or a directory */
		char gpath[4096], gdesc[256];
		int auto_ = !strcmp(genconf, "auto");
		snprintf(gpath, sizeof(gpath), "%s/generation_config.json", auto_ ? dir : genconf);
		int got = eng_api_generation_config(gpath, !auto_, &gen_defaults, &ctx.default_max_tokens, gdesc,
						    sizeof(gdesc), &err);
		if (got < 0) {
			fprintf(stderr, "kvgate-engine: --generation-config: %s\n", err.msg);
			goto out;
		}
		if (got) {
			ctx.defaults = &gen_defaults;
			fprintf(stderr, "kvgate-engine: request defaults from %s: %s\n", gpath, gdesc[0] ? gdesc : "none set");
		}
	}
	g_base = event_base_new();
	struct eng_server_conf scf = {.host = host, .port = port, .model_name = name, .model_path = dir,
				      .kv_dtype = eng_kv_fmt_name(kv->fmt), .gpu_mem_util = gpu_util, .max_body = max_body,
				      .weight_bytes = m->weight_bytes, .kv_block_bytes = block_bytes,
				      .kv_bytes_per_token = (double)block_bytes / ENG_KV_BLOCK_TOKENS,
				      .block_size = ENG_KV_BLOCK_TOKENS, .prefix_caching = pc, .seed = (uint64_t)seed};
	if (!(srv = eng_server_new(g_base, &scf, sched, &ctx, &err))) {
		fprintf(stderr, "kvgate-engine: %s\n", err.msg);
		goto out;
	}
	sched->notify_ud = srv;
	if (eng_sched_start(sched, &err)) {
		fprintf(stderr, "kvgate-engine: %s\n", err.msg);
		goto out;
	}
	signal(SIGPIPE, SIG_IGN);
	sig_int = evsignal_new(g_base, SIGINT, on_signal, srv);
	sig_term = evsignal_new(g_base, SIGTERM, on_signal, srv);
	g_drain_timer = evtimer_new(g_base, drain_timeout, srv);
	event_add(sig_int, NULL);
	event_add(sig_term, NULL);
	fprintf(stderr, "kvgate-engine: serving %s as '%s' on %s:%d (%s, weights %.1f MB, workspace %.1f MB, kv %s: %d blocks of %d tokens = %.1f MB, "
			"%.0f B/token; max-model-len %d, max-num-seqs %d, max-num-batched-tokens %d, prefix caching %s, chat %s)\n",
		dir, name, host, port, be->name, m->weight_bytes / 1e6, m->ws_floats * sizeof(float) / 1e6,
		eng_kv_fmt_name(kv->fmt), nblocks, ENG_KV_BLOCK_TOKENS,
		(double)block_bytes * nblocks / 1e6, (double)block_bytes / ENG_KV_BLOCK_TOKENS, max_len, max_seqs,
		sched->conf.max_batched_tokens, pc ? "on" : "off", chat ? sh_chat_name(chat) : "off");
	event_base_dispatch(g_base);
	fprintf(stderr, "kvgate-engine: stopping\n");
	rc = 0;
out:
	if (sig_int)
		event_free(sig_int);
	if (sig_term)
		event_free(sig_term);
	if (g_drain_timer)
		event_free(g_drain_timer);
	g_drain_timer = NULL;
	g_stopping = 0;
	/* the scheduler thread stops first (it may still notify), then the server goes */
	if (sched && sched->started) {
		pthread_mutex_lock(&sched->mu);
		sched->stop = 1;
		pthread_cond_signal(&sched->cv);
		pthread_mutex_unlock(&sched->mu);
		pthread_join(sched->thr, NULL);
		sched->started = 0;
	}
	eng_server_free(srv);
	eng_sched_free(sched);
	if (g_base)
		event_base_free(g_base);
	eng_kv_free(kv);
	eng_model_free(m);
	sh_chat_free(chat);
	sh_tok_free(tok);
	if (be)
		be->free(be);
	return rc;
}
