/* experts.c: how many routed experts the decode bench's random router really touches, on the CPU.
 * bench/cuda_decode.c turns bytes per step into % of roofline; with random weights nothing promises
 * that the router spreads a batch's tokens over the experts as a trained one does, and a batch whose
 * tokens all pick the same few experts reads far less than the 17.9 GB the batch-8 roofline
 * counts (uniform routing: 35.3 experts a layer at batch 8, 62.2 at 32). This runs the first LAYERS
 * layers of the same model (same weights, made by the same hash as the GPU's) on the same inputs as
 * the GPU bench's counting step (bench/dsv2_random.c: cache pattern over CTX positions, then one
 * decode step of batch 1, 8 and 32) and prints the distinct experts of every MoE layer.
 *   experts [LAYERS [CTX]]        default 12 layers (~14 GB of memory), 512 context
 * `make bench-experts` builds and runs it. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bench/dsv2_random.h"
#include "bench/optime.h"
#include "engine/backend.h"
#include "engine/model.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	int layers = argc > 1 ? atoi(argv[1]) : 12, ctx = argc > 2 ? atoi(argv[2]) : 512;
	if (layers < 2 || layers > 27 || ctx < 512 || ctx % 512) {
		fprintf(stderr, "usage: experts [LAYERS (2..27) [CTX (a multiple of 512)]]\n");
		return 2;
	}
	struct sh_err err;
	struct eng_backend *be = eng_cpu_new(0);
	double t0 = now(), wbytes;
	struct eng_model *m = dsv2_build(be, dsv2_fill_host, layers, 32, &wbytes);
	const struct eng_config *c = &m->cfg;
	printf("DeepSeek-Coder-V2-Lite shape, first %d layers, random bf16 weights (%.2f GB, made in %.0f s), "
	       "bf16 KV, %d context\n",
	       layers, wbytes / 1e9, now() - t0, ctx);
	fflush(stdout);
	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	int Bs[3] = {1, 8, 32}, maxB = 32;
	struct eng_kv *kv = eng_kv_new(be, ENG_KV_BF16, &shape, maxB * (ctx / 16 + 2) + 8, &err);
	struct eng_kv_seq seqs[32], *sp[32];
	for (int s = 0; s < maxB; s++)
		sp[s] = &seqs[s];
	if (!kv || dsv2_fill_kv(be, kv, m, sp, maxB, maxB, ctx, &err)) {
		fprintf(stderr, "kv: %s\n", err.msg);
		return 2;
	}
	struct eng_backend *counter = optime_wrap(be);
	float *logits = malloc(sizeof(float) * (size_t)maxB * c->vocab);
	int touched[3][32], nmoe = 0;
	for (int bi = 0; bi < 3; bi++) {
		int B = Bs[bi];
		struct dsv2_step t;
		if (dsv2_step_make(&t, c, kv, sp, B, maxB, ctx, 0, &err)) {
			fprintf(stderr, "kv: %s\n", err.msg);
			return 2;
		}
		optime_reset(counter);
		m->be = counter;
		t0 = now();
		if (eng_model_forward(m, kv, &t.b, logits, &err)) {
			fprintf(stderr, "forward: %s\n", err.msg);
			return 2;
		}
		m->be = be;
		const int *per;
		nmoe = optime_experts(counter, &per);
		for (int i = 0; i < nmoe; i++)
			touched[bi][i] = per[i];
		fprintf(stderr, "batch %d: one step in %.1f s\n", B, now() - t0);
	}
	printf("\nexperts touched (of %d) by one decode step, per MoE layer\n%-7s %8s %8s %8s\n", c->n_routed, "layer",
	       "batch 1", "batch 8", "batch 32");
	double sum[3] = {0};
	for (int i = 0; i < nmoe; i++) {
		printf("%-7d %8d %8d %8d\n", i + 1, touched[0][i], touched[1][i], touched[2][i]);
		for (int bi = 0; bi < 3; bi++)
			sum[bi] += touched[bi][i];
	}
	printf("%-7s %8.1f %8.1f %8.1f\n%-7s %8.1f %8.1f %8.1f\n", "mean", sum[0] / nmoe, sum[1] / nmoe, sum[2] / nmoe,
	       "uniform", dsv2_uniform_touched(c, 1), dsv2_uniform_touched(c, 8), dsv2_uniform_touched(c, 32));
	counter->free(counter);
	free(logits);
	return 0;
}
