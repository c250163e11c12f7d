/* cuda_decode.c: decode speed of the CUDA backend at the full DeepSeek-Coder-V2-Lite shape with
 * random bf16 weights made on the GPU (no download): for KV bf16 ("auto"), fp8 and int8, decode
 * ms/step and tokens/s at batch 1, 8, 32 with 512 and 8192 tokens of context; time to first token
 * of a 2048-token prompt; bytes one step reads (weights of the experts its router touched, counted
 * in an eager warm-up step, + the KV cache) over the measured device-to-device copy bandwidth (% of
 * roofline). The model and its inputs are bench/dsv2_random.c's (bench/experts.c runs the same
 * steps on the CPU).
 * Usage: cuda_decode [--quick | --profile B | --optime | --timeline]. Prints a table; the notes are
 * bench/NOTES-cuda.md.
 * --timeline: decode steps at batch 1 and 8 (bf16 KV, 512 context) as they run, recorded and
 * replayed, through CUPTI: each kernel's share of the step (bench/cuda_timeline.c).
 * --optime: where the time goes, op by op (bench/optime.c), for a 2048-token prefill and decode
 * steps at batch 1 and 8 (bf16 KV, 512 context), plus the bf16 matrix rate cuBLAS reaches.
 * --profile B: bf16 KV, batch B at 512 context only, one step after the warm-up between
 * cudaProfilerStart/Stop, every op launched one by one (for ncu --profile-from-start off). */
#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/cuda_timeline.h"
#include "bench/dsv2_random.h"
#include "bench/optime.h"
#include "engine/backend.h"
#include "engine/backend/cuda.h"
#include "engine/model.h"

int bench_fill_bf16(void *p, size_t n, unsigned long long seed, float scale);

static struct eng_backend *be;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *dev(size_t bytes)
{
	void *p = be->alloc(be, bytes);
	if (!p) {
		fprintf(stderr, "out of device memory (%zu bytes)\n", bytes);
		exit(2);
	}
	return p;
}

static double copy_bandwidth(void)
{
	size_t n = (size_t)2 << 30;
	void *a = dev(n), *b = dev(n);
	cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
	cudaDeviceSynchronize();
	double t = now();
	for (int i = 0; i < 10; i++)
		cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
	cudaDeviceSynchronize();
	t = now() - t;
	be->release(be, a);
	be->release(be, b);
	return 2.0 * n * 10 / t;
}

/* The bf16 matrix rate cuBLAS reaches here (bf16 in, fp32 accumulate and out, as the prefill GEMMs
 * run): the ceiling the prefill is compared with. */
static double matrix_rate(void)
{
	int M = 8192, N = 8192, K = 8192;
	void *a = dev((size_t)M * K * 2), *b = dev((size_t)N * K * 2), *c = dev((size_t)M * N * 4);
	bench_fill_bf16(a, (size_t)M * K, 7, 0.01f);
	bench_fill_bf16(b, (size_t)N * K, 8, 0.01f);
	cublasHandle_t h;
	cublasCreate(&h);
	float one = 1.0f, zero = 0.0f;
	double best = 1e30;
	for (int r = 0; r < 6; r++) {
		cudaDeviceSynchronize();
		double t = now();
		cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &one, a, CUDA_R_16BF, K, b, CUDA_R_16BF, K, &zero, c,
			     CUDA_R_32F, M, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
		cudaDeviceSynchronize();
		t = now() - t;
		best = t < best ? t : best;
	}
	cublasDestroy(h);
	be->release(be, a), be->release(be, b), be->release(be, c);
	return 2.0 * M * N * K / best;
}

/* Mean routed experts a MoE layer touched in the step counted through the wrapper. */
static double mean_touched(struct eng_backend *counter)
{
	const int *t;
	int n = optime_experts(counter, &t);
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += t[i];
	return n ? sum / n : 0;
}

/* --optime: op-by-op time of a 2048-token prefill and of decode steps at batch 1 and 8 */
static int run_optime(struct eng_model *m)
{
	struct sh_err err;
	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	struct eng_kv *kv = eng_kv_new(be, ENG_KV_BF16, &shape, 8 * 160 + 8, &err);
	if (!kv) {
		fprintf(stderr, "kv: %s\n", err.msg);
		return 2;
	}
	struct eng_backend *t = optime_wrap(be);
	m->be = t;
	const struct eng_config *c = &m->cfg;
	float *logits = malloc(sizeof(float) * 8 * c->vocab);
	int n = 2048;
	int32_t *tid = malloc(sizeof(int32_t) * n), *tp = malloc(sizeof(int32_t) * n), *ts = calloc(n, 4);
	for (int i = 0; i < n; i++)
		tid[i] = (i * 31 + 7) % c->vocab, tp[i] = i;
	for (int r = 0; r < 2; r++) {
		struct eng_kv_seq s1, *s1p = &s1;
		eng_kv_seq_init(&s1);
		if (eng_kv_seq_prepare(kv, &s1, 0, n, &err))
			return 2;
		struct eng_batch b = {n, tid, tp, ts, &s1p, 1, NULL};
		optime_reset(t);
		double t1 = now();
		if (eng_model_forward(m, kv, &b, logits, &err))
			return 2;
		if (r)
			printf("\nprefill 2048: %.1f ms with every op waited for", (now() - t1) * 1e3);
		eng_kv_seq_release(kv, &s1);
	}
	optime_print(t, "prefill of 2048 tokens", 1);
	int Bs[2] = {1, 8};
	for (int bi = 0; bi < 2; bi++) {
		int B = Bs[bi], reps = 4;
		struct eng_kv_seq seqs[8], *sp[8];
		int32_t ids[8], ps[8], sx[8];
		uint8_t want[8];
		for (int s = 0; s < B; s++) {
			eng_kv_seq_init(&seqs[s]);
			sp[s] = &seqs[s];
			if (eng_kv_seq_prepare(kv, &seqs[s], 0, 513 + reps, &err))
				return 2;
		}
		for (int st = 0; st <= reps; st++) {
			for (int s = 0; s < B; s++)
				ids[s] = (s * 7919 + st) % c->vocab, ps[s] = 512 + st, sx[s] = s, want[s] = 1;
			struct eng_batch b = {B, ids, ps, sx, sp, B, want};
			if (st == 1)
				optime_reset(t);
			if (eng_model_forward(m, kv, &b, logits, &err))
				return 2;
		}
		char title[64];
		snprintf(title, sizeof(title), "decode step, batch %d, 512 context", B);
		optime_print(t, title, reps);
		for (int s = 0; s < B; s++)
			eng_kv_seq_release(kv, &seqs[s]);
	}
	m->be = be;
	t->free(t);
	eng_kv_free(kv);
	free(logits), free(tid), free(tp), free(ts);
	return 0;
}

/* --timeline: steps at batch 1 and 8 as the bench runs them, kernel by kernel (cuda_timeline.c) */
static int run_timeline(struct eng_model *m)
{
	struct sh_err err;
	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	const struct eng_config *c = &m->cfg;
	int maxB = 8, warm = 3, steps = 5, ctx = 512;
	struct eng_kv *kv = eng_kv_new(be, ENG_KV_BF16, &shape, maxB * ((ctx + warm + steps) / 16 + 2) + 8, &err);
	struct eng_kv_seq seqs[8], *sp[8];
	for (int s = 0; s < maxB; s++)
		sp[s] = &seqs[s];
	if (!kv || dsv2_fill_kv(be, kv, m, sp, maxB, maxB, ctx, &err)) {
		fprintf(stderr, "kv: %s\n", err.msg);
		return 2;
	}
	float *logits = malloc(sizeof(float) * maxB * c->vocab);
	int Bs[2] = {1, 8};
	for (int bi = 0; bi < 2; bi++) {
		int B = Bs[bi];
		struct dsv2_step t;
		for (int st = 0; st < warm + steps; st++) {
			if (dsv2_step_make(&t, c, kv, sp, B, maxB, ctx, st, &err)) {
				fprintf(stderr, "kv: %s\n", err.msg);
				return 2;
			}
			if (st == warm && tl_start(&err)) {
				fprintf(stderr, "timeline: %s\n", err.msg);
				return 2;
			}
			if (st >= warm)
				tl_mark();
			if (eng_model_forward(m, kv, &t.b, logits, &err)) { /* returns with the logits on the host */
				fprintf(stderr, "forward: %s\n", err.msg);
				return 2;
			}
			if (st >= warm)
				tl_mark();
			dsv2_step_done(&t);
		}
		char title[96];
		snprintf(title, sizeof(title), "decode step, batch %d, %d context, bf16 KV%s", B, ctx,
			 getenv("KVGATE_CUDA_FUSE") ? ", KVGATE_CUDA_FUSE set" : "");
		if (tl_print(title, &err)) {
			fprintf(stderr, "timeline: %s\n", err.msg);
			return 2;
		}
	}
	long rep, rec, eag;
	eng_cuda_step_stats(be, &rep, &rec, &eag);
	printf("steps: %ld replayed, %ld recorded, %ld eager\n", rep, rec, eag);
	free(logits);
	eng_kv_free(kv);
	return 0;
}

int main(int argc, char **argv)
{
	int quick = argc > 1 && !strcmp(argv[1], "--quick");
	int prof = argc > 2 && !strcmp(argv[1], "--profile") ? atoi(argv[2]) : 0;
	int optime = argc > 1 && !strcmp(argv[1], "--optime");
	int timeline = argc > 1 && !strcmp(argv[1], "--timeline");
	quick |= prof > 0;
	struct sh_err err;
	be = eng_cuda_new(0, &err);
	if (!be) {
		fprintf(stderr, "no CUDA device: %s\n", err.msg);
		return 77;
	}
	char desc[256];
	eng_cuda_describe(be, desc, sizeof(desc));
	double bw = copy_bandwidth();
	double mrate = matrix_rate();
	printf("device: %s; device-to-device copy %.0f GB/s; bf16 matrix rate (cuBLAS 8192^3) %.0f TFLOP/s\n", desc,
	       bw / 1e9, mrate / 1e12);
	double t0 = now(), wbytes;
	struct eng_model *m = dsv2_build(be, bench_fill_bf16, 0, 2048, &wbytes);
	const struct eng_config *c = &m->cfg;
	size_t fr, tot;
	int uni;
	eng_cuda_mem_info(be, &fr, &tot, &uni, &err);
	printf("weights %.2f GB (random bf16, made in %.1f s); workspace %.2f GB; device free %.1f of %.1f GB\n",
	       wbytes / 1e9, now() - t0, m->ws_floats * 4e-9, fr / 1e9, tot / 1e9);
	printf("bf16 weight bytes per decode step with uniform routing: batch 1 %.2f GB, 8 %.2f GB (%.1f experts a "
	       "layer), 32 %.2f GB (%.1f; lm_head included)\n",
	       dsv2_step_weight_bytes(c, dsv2_uniform_touched(c, 1)) / 1e9,
	       dsv2_step_weight_bytes(c, dsv2_uniform_touched(c, 8)) / 1e9, dsv2_uniform_touched(c, 8),
	       dsv2_step_weight_bytes(c, dsv2_uniform_touched(c, 32)) / 1e9, dsv2_uniform_touched(c, 32));
	printf("GB/step below: with the experts the step's router really touched (\"experts\": their mean a MoE "
	       "layer, counted in the first warm-up step)\n");

	if (optime)
		return run_optime(m);
	if (timeline)
		return run_timeline(m);
	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	int fmts[3] = {ENG_KV_BF16, ENG_KV_FP8, ENG_KV_INT8};
	int Bs[3] = {1, 8, 32}, ctxs[2] = {512, 8192}, steps = quick ? 5 : 12, warm = 2;
	int maxB = 32, maxctx = 8192 + 64;
	float *logits = malloc(sizeof(float) * (size_t)maxB * c->vocab);
	printf("\n%-5s %5s %6s %10s %10s %8s %9s %9s %7s\n", "kv", "batch", "ctx", "ms/step", "tokens/s", "experts",
	       "GB/step", "GB/s", "%copy");
	struct eng_backend *counter = optime_wrap(be);
	/* graphs_off: the bf16 rows at 512 once more with every op launched one by one (the version
	 * before recorded steps), for the before/after on the same machine and weights */
	for (int pass = 0; pass < 4; pass++) {
		if ((quick && (pass == 1 || pass == 2)) || (prof && pass))
			continue; /* bf16, then the no-graphs rows */
		int graphs_off = pass == 3, fi = graphs_off ? 0 : pass;
		eng_cuda_set_graphs(be, !graphs_off && !prof);
		int nblk = maxB * ((maxctx + 15) / 16) + 8;
		struct eng_kv *kv = eng_kv_new(be, fmts[fi], &shape, nblk, &err);
		if (!kv) {
			fprintf(stderr, "kv: %s\n", err.msg);
			return 2;
		}
		struct eng_kv_seq *seqs = calloc(maxB, sizeof(*seqs));
		struct eng_kv_seq **sp = calloc(maxB, sizeof(void *));
		for (int s = 0; s < maxB; s++)
			sp[s] = &seqs[s];
		/* every sequence's first 8192 positions: the pattern rows, through kv_write */
		if (dsv2_fill_kv(be, kv, m, sp, prof ? prof : maxB, maxB, prof ? 512 : 8192, &err)) {
			fprintf(stderr, "kv: %s\n", err.msg);
			return 2;
		}
		for (int bi = 0; bi < 3; bi++)
			for (int ci = 0; ci < (graphs_off ? 1 : 2); ci++) {
				int B = Bs[bi], ctx = ctxs[ci];
				if (prof && (ci || bi))
					continue;
				if (prof)
					B = prof;
				struct dsv2_step t;
				double tt = 0, touched = 0;
				for (int st = 0; st < warm + steps; st++) {
					if (dsv2_step_make(&t, c, kv, sp, B, maxB, ctx, st, &err)) {
						fprintf(stderr, "kv: %s\n", err.msg);
						return 2;
					}
					double t1 = now();
					if (prof && st == warm)
						cudaProfilerStart();
					if (st == 0 && !prof) /* the first warm-up step counts the experts, eagerly */
						optime_reset(counter), m->be = counter;
					int rc = eng_model_forward(m, kv, &t.b, logits, &err);
					m->be = be;
					if (rc) {
						fprintf(stderr, "forward: %s\n", err.msg);
						return 2;
					}
					if (st == 0 && !prof)
						touched = mean_touched(counter);
					if (prof && st == warm) {
						cudaProfilerStop();
						printf("profiled one step at batch %d\n", B);
						return 0;
					}
					if (st >= warm)
						tt += now() - t1;
					dsv2_step_done(&t);
				}
				double ms = tt / steps * 1e3;
				double kvb = (double)B * (ctx + warm + steps / 2) * c->n_layers * eng_kv_bytes_per_token_layer(kv);
				double by = dsv2_step_weight_bytes(c, touched) + kvb;
				printf("%-5s %5d %6d %10.2f %10.1f %8.1f %9.2f %9.0f %6.1f%%%s\n", eng_kv_fmt_name(fmts[fi]), B, ctx,
				       ms, B / (ms * 1e-3), touched, by / 1e9, by / (ms * 1e-3) / 1e9, 100.0 * by / (ms * 1e-3) / bw,
				       graphs_off ? "  (no graphs)" : "");
				fflush(stdout);
			}
		for (int s = 0; s < maxB; s++)
			eng_kv_seq_release(kv, &seqs[s]);
		/* time to first token: one 2048-token prompt */
		if (!graphs_off) {
			int n = 2048;
			int32_t *tid = malloc(sizeof(int32_t) * n), *tp = malloc(sizeof(int32_t) * n), *ts = calloc(n, 4);
			for (int i = 0; i < n; i++)
				tid[i] = (i * 31 + 7) % c->vocab, tp[i] = i;
			double best = 1e30;
			for (int r = 0; r < (quick ? 2 : 3); r++) {
				struct eng_kv_seq s1, *s1p = &s1;
				eng_kv_seq_init(&s1);
				if (eng_kv_seq_prepare(kv, &s1, 0, n, &err))
					return 2;
				struct eng_batch b = {n, tid, tp, ts, &s1p, 1, NULL};
				double t1 = now();
				if (eng_model_forward(m, kv, &b, logits, &err))
					return 2;
				double t = now() - t1;
				best = t < best ? t : best;
				eng_kv_seq_release(kv, &s1);
			}
			/* matrix work: 2 * tokens * active parameters (6 routed experts each), plus causal
			 * attention (q.k over qk_nope + qk_rope, p.v over v_head_dim, half the n x n square) */
			double act = dsv2_step_weight_bytes(c, c->top_k) / 2 - (double)c->vocab * c->hidden;
			double att = (double)c->n_layers * c->n_heads * n * (double)n *
				     (c->qk_nope_dim + c->qk_rope_dim + c->v_head_dim);
			double tf = (2.0 * n * act + att) / best;
			printf("%-5s TTFT 2048-token prompt: %.1f ms (%.0f TFLOP/s on the active weights and attention = %.1f%% of "
			       "the matrix rate)\n",
			       eng_kv_fmt_name(fmts[fi]), best * 1e3, tf / 1e12, 100.0 * tf / mrate);
			free(tid), free(tp), free(ts);
		}
		free(seqs), free(sp);
		eng_kv_free(kv);
	}
	counter->free(counter);
	long rep, rec, eag;
	eng_cuda_step_stats(be, &rep, &rec, &eag);
	printf("steps: %ld replayed, %ld recorded, %ld eager\n", rep, rec, eag);
	free(logits);
	return 0;
}
