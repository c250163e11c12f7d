/* test_cuda_ops.c: every CUDA op against its CPU twin (STYLE.md rule 19), at odd shapes (one token,
 * lengths that are not multiples of 32, long contexts), with a per-op NMSE bound; outputs are
 * poisoned (NaN) before each GPU run so an unwritten element fails. The timed cases print the
 * achieved bandwidth against the device-to-device copy bandwidth measured at start.
 * Needs a GPU: run by hand or on the GPU machine (tests/cuda/run.sh), never by `make test`.
 * Exit status: the number of failed checks (0: all passed). */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/backend/cuda.h"
#include "engine/kv.h"

static struct eng_backend *cpu, *gpu;
static struct eng_backend *gpuf; /* the same device with KVGATE_CUDA_FUSE=1: the fused decode ops */
static struct eng_backend *gpud; /* and with KVGATE_CUDA_DOWN1=0 too: one token's MoE down per expert */
static int fails, checks;
static double copy_bw; /* bytes/s, read + write */
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	return rng;
}

static float frand(void) /* uniform in [-1, 1) */
{
	return (float)((rnd() >> 40) * (1.0 / 8388608.0) - 1.0);
}

static float *rand_f32(size_t n, float scale)
{
	float *p = malloc(n * sizeof(float));
	for (size_t i = 0; i < n; i++)
		p[i] = frand() * scale;
	return p;
}

/* Copies through gpu's stream, the device idle before and after: the ops run on three backends'
 * streams (gpu, gpuf, gpud), which do not wait for each other (run 27 read poison in 72 checks
 * that all passed with CUDA_LAUNCH_BLOCKING=1). */
static void d2h(void *dst, const void *src, size_t n)
{
	cudaDeviceSynchronize();
	gpu->to_host(gpu, dst, src, n);
}

static void h2d(void *dst, const void *src, size_t n)
{
	gpu->to_dev(gpu, dst, src, n);
	cudaDeviceSynchronize();
}

/* host (cpu) and device (gpu) copies of the same bytes */
struct twin {
	void *h, *d;
	size_t bytes;
};

static struct twin twin_new(const void *src, size_t bytes)
{
	struct twin t = {cpu->alloc(cpu, bytes), gpu->alloc(gpu, bytes), bytes};
	if (!t.h || !t.d) {
		fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
		exit(2);
	}
	if (src) {
		memcpy(t.h, src, bytes);
		h2d(t.d, src, bytes);
	}
	return t;
}

static void twin_free(struct twin *t)
{
	cpu->release(cpu, t->h);
	gpu->release(gpu, t->d);
}

static void poison(struct twin *t)
{
	cudaMemset(t->d, 0xff, t->bytes); /* 0xffffffff is a NaN */
}

/* weights of a dtype from floats */
static void *to_dtype(const float *f, size_t n, enum eng_dtype dt)
{
	if (dt == ENG_DT_F32) {
		float *p = malloc(n * 4);
		memcpy(p, f, n * 4);
		return p;
	}
	uint16_t *p = malloc(n * 2);
	for (size_t i = 0; i < n; i++) {
		if (dt == ENG_DT_BF16) {
			p[i] = eng_f32_to_bf16(f[i]);
		} else { /* f16: values here are in range; round via float -> half by hand */
			float a = f[i];
			uint32_t u;
			memcpy(&u, &a, 4);
			uint32_t sign = (u >> 16) & 0x8000;
			int e = (int)((u >> 23) & 0xff) - 127 + 15;
			uint32_t man = u & 0x7fffff;
			if ((u & 0x7fffffff) == 0 || e <= 0)
				p[i] = (uint16_t)sign;
			else
				p[i] = (uint16_t)(sign | ((uint32_t)e << 10) | (man >> 13));
		}
	}
	return p;
}

/* NMSE of the device result against the host result, n floats; NaN fails. */
static double nmse_of(const float *ref, const float *dev_ptr, size_t n)
{
	float *got = malloc(n * sizeof(float));
	d2h(got, dev_ptr, n * sizeof(float));
	double se = 0, sr = 0;
	int nan = 0;
	for (size_t i = 0; i < n; i++) {
		if (got[i] != got[i])
			nan = 1;
		double d = (double)got[i] - ref[i];
		se += d * d;
		sr += (double)ref[i] * ref[i];
	}
	free(got);
	if (nan)
		return INFINITY;
	return sr > 0 ? se / sr : se;
}

static void report(const char *op, const char *shape, double nmse, double bound, double us, double bytes)
{
	checks++;
	int ok = nmse <= bound;
	fails += !ok;
	if (us > 0) {
		double bw = bytes / (us * 1e-6);
		printf("%-4s %-11s %-44s nmse %-9.2e <= %-7.0e %9.1f us %8.1f GB/s %5.1f%%\n", ok ? "ok" : "FAIL", op, shape,
		       nmse, bound, us, bw / 1e9, 100.0 * bw / copy_bw);
	} else {
		printf("%-4s %-11s %-44s nmse %-9.2e <= %-7.0e\n", ok ? "ok" : "FAIL", op, shape, nmse, bound);
	}
	fflush(stdout);
}

/* ---- timing: events around `reps` runs of a closure ---- */
typedef void (*run_fn)(void *);

static double time_us(run_fn f, void *arg, int reps)
{
	cudaEvent_t a, b;
	cudaEventCreate(&a);
	cudaEventCreate(&b);
	f(arg);
	f(arg);
	cudaDeviceSynchronize();
	cudaEventRecord(a, 0);
	for (int i = 0; i < reps; i++)
		f(arg);
	cudaEventRecord(b, 0);
	cudaDeviceSynchronize();
	float ms = 0;
	cudaEventElapsedTime(&ms, a, b);
	cudaEventDestroy(a);
	cudaEventDestroy(b);
	return ms * 1000.0 / reps;
}

static void measure_copy_bw(void)
{
	size_t n = (size_t)2 << 30;
	void *a, *b;
	if (cudaMalloc(&a, n) || cudaMalloc(&b, n)) {
		copy_bw = 1;
		return;
	}
	cudaMemset(a, 1, n);
	cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
	cudaEvent_t e0, e1;
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	cudaEventRecord(e0, 0);
	for (int i = 0; i < 10; i++)
		cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
	cudaEventRecord(e1, 0);
	cudaEventSynchronize(e1);
	float ms;
	cudaEventElapsedTime(&ms, e0, e1);
	copy_bw = 2.0 * n * 10 / (ms * 1e-3);
	cudaFree(a);
	cudaFree(b);
	printf("device-to-device copy: %.0f GB/s (read + write), the bandwidth below is compared to it\n", copy_bw / 1e9);
}

/* ---- matmul ---- */
struct mm_run {
	struct twin *x, *y, *b;
	struct eng_w w;
	int n, ldx, ldy;
};

static void mm_go(void *p)
{
	struct mm_run *r = p;
	gpu->matmul(gpu, r->x->d, r->ldx, r->n, &r->w, r->b ? r->b->d : NULL, r->y->d, r->ldy);
}

static void check_matmul(int rows, int cols, int n, enum eng_dtype dt, int bias, int timed)
{
	size_t es = eng_dtype_size(dt);
	float *wf = rand_f32((size_t)rows * cols, 0.05f), *xf = rand_f32((size_t)n * cols, 1.0f);
	float *bf = rand_f32((size_t)rows, 0.1f);
	void *wd = to_dtype(wf, (size_t)rows * cols, dt);
	struct twin W = twin_new(wd, (size_t)rows * cols * es), X = twin_new(xf, (size_t)n * cols * 4);
	struct twin Y = twin_new(NULL, (size_t)n * rows * 4), B = twin_new(bf, (size_t)rows * 4);
	struct eng_w wh = {W.h, dt, rows, cols, (size_t)cols}, wg = {W.d, dt, rows, cols, (size_t)cols};
	cpu->matmul(cpu, X.h, cols, n, &wh, bias ? B.h : NULL, Y.h, rows);
	poison(&Y);
	gpu->matmul(gpu, X.d, cols, n, &wg, bias ? B.d : NULL, Y.d, rows);
	double e = nmse_of(Y.h, Y.d, (size_t)n * rows);
	double us = 0;
	struct mm_run r = {&X, &Y, bias ? &B : NULL, wg, n, cols, rows};
	if (timed)
		us = time_us(mm_go, &r, 20);
	char shape[96];
	snprintf(shape, sizeof(shape), "%s W(%d,%d) n=%d%s", eng_dtype_name(dt), rows, cols, n, bias ? " +bias" : "");
	/* n > 8 in fast mode rounds activations to the weights' 16-bit type (cuBLAS), and so does the
	 * tensor-core GEMV for bf16 at n = 1..8 (whole 32-column chunks) */
	int mma = dt == ENG_DT_BF16 && n <= 8 && cols % 32 == 0;
	double bound = dt == ENG_DT_F32 || (n <= 8 && !mma) ? 1e-10 : dt == ENG_DT_BF16 ? 3e-5 : 3e-6;
	report("matmul", shape, e, bound, us, (double)rows * cols * es + (double)n * (cols + rows) * 4);
	twin_free(&W), twin_free(&X), twin_free(&Y), twin_free(&B);
	free(wf), free(xf), free(bf), free(wd);
}

/* matmul2: two matrices of one input in one call (q and kv_a, gate and up), against two CPU matmuls */
static void check_matmul2(int rows1, int rows2, int cols, int n)
{
	float *w1f = rand_f32((size_t)rows1 * cols, 0.05f), *w2f = rand_f32((size_t)rows2 * cols, 0.05f);
	float *xf = rand_f32((size_t)n * cols, 1.0f);
	void *w1d = to_dtype(w1f, (size_t)rows1 * cols, ENG_DT_BF16), *w2d = to_dtype(w2f, (size_t)rows2 * cols, ENG_DT_BF16);
	struct twin W1 = twin_new(w1d, (size_t)rows1 * cols * 2), W2 = twin_new(w2d, (size_t)rows2 * cols * 2);
	struct twin X = twin_new(xf, (size_t)n * cols * 4), Y = twin_new(NULL, (size_t)n * (rows1 + rows2) * 4);
	struct eng_w h1 = {W1.h, ENG_DT_BF16, rows1, cols, (size_t)cols}, d1 = {W1.d, ENG_DT_BF16, rows1, cols, (size_t)cols};
	struct eng_w h2 = {W2.h, ENG_DT_BF16, rows2, cols, (size_t)cols}, d2 = {W2.d, ENG_DT_BF16, rows2, cols, (size_t)cols};
	int ldy = rows1 + rows2; /* y1 and y2 side by side in one row, as strided outputs */
	cpu->matmul(cpu, X.h, cols, n, &h1, NULL, Y.h, ldy);
	cpu->matmul(cpu, X.h, cols, n, &h2, NULL, (float *)Y.h + rows1, ldy);
	poison(&Y);
	gpu->matmul2(gpu, X.d, cols, n, &d1, Y.d, ldy, &d2, (float *)Y.d + rows1, ldy);
	char shape[96];
	snprintf(shape, sizeof(shape), "BF16 W(%d,%d)+W(%d,%d) n=%d", rows1, cols, rows2, cols, n);
	report("matmul2", shape, nmse_of(Y.h, Y.d, (size_t)n * ldy), 3e-5, 0, 0);
	twin_free(&W1), twin_free(&W2), twin_free(&X), twin_free(&Y);
	free(w1f), free(w2f), free(xf), free(w1d), free(w2d);
}

/* glu: silu(x . W1^T) * (x . W2^T) against the CPU's two matmuls and silu_mul; W1, W2 of one
 * shape (the SwiGLU's gate and up) */
static void check_glu(int rows, int cols, int n, enum eng_dtype dt)
{
	size_t wn = (size_t)rows * cols, es = eng_dtype_size(dt);
	float *w1f = rand_f32(wn, 0.05f), *w2f = rand_f32(wn, 0.05f), *xf = rand_f32((size_t)n * cols, 1.0f);
	void *w1d = to_dtype(w1f, wn, dt), *w2d = to_dtype(w2f, wn, dt);
	struct twin W1 = twin_new(w1d, wn * es), W2 = twin_new(w2d, wn * es), X = twin_new(xf, (size_t)n * cols * 4);
	struct twin G = twin_new(NULL, (size_t)n * rows * 4), U = twin_new(NULL, (size_t)n * rows * 4);
	struct eng_w h1 = {W1.h, dt, rows, cols, (size_t)cols}, d1 = {W1.d, dt, rows, cols, (size_t)cols};
	struct eng_w h2 = {W2.h, dt, rows, cols, (size_t)cols}, d2 = {W2.d, dt, rows, cols, (size_t)cols};
	cpu->matmul(cpu, X.h, cols, n, &h1, NULL, G.h, rows);
	cpu->matmul(cpu, X.h, cols, n, &h2, NULL, U.h, rows);
	cpu->silu_mul(cpu, G.h, rows, U.h, rows, n, rows);
	poison(&G);
	gpuf->glu(gpuf, X.d, cols, n, &d1, &d2, G.d, U.d, rows);
	char shape[96];
	snprintf(shape, sizeof(shape), "%s 2 x W(%d,%d) n=%d", eng_dtype_name(dt), rows, cols, n);
	report("glu", shape, nmse_of(G.h, G.d, (size_t)n * rows), dt == ENG_DT_F32 ? 1e-10 : 3e-5, 0, 0);
	twin_free(&W1), twin_free(&W2), twin_free(&X), twin_free(&G), twin_free(&U);
	free(w1f), free(w2f), free(xf), free(w1d), free(w2d);
}

/* nh weight matrices (rows, cols) in dt, random (amplitude 0.05), each its own allocation: w.h[h] on
 * the host, w.d[h] the same bytes on the device (the per-head MLA matrices' layout) */
struct heads_w {
	struct twin *t;
	struct eng_w *h, *d;
	int nh;
};

static struct heads_w heads_w_new(int nh, int rows, int cols, enum eng_dtype dt)
{
	struct heads_w w = {malloc(sizeof(struct twin) * (size_t)nh), malloc(sizeof(struct eng_w) * (size_t)nh),
			    malloc(sizeof(struct eng_w) * (size_t)nh), nh};
	for (int h = 0; h < nh; h++) {
		float *wf = rand_f32((size_t)rows * cols, 0.05f);
		void *wd = to_dtype(wf, (size_t)rows * cols, dt);
		w.t[h] = twin_new(wd, (size_t)rows * cols * eng_dtype_size(dt));
		w.h[h] = (struct eng_w){w.t[h].h, dt, rows, cols, (size_t)cols};
		w.d[h] = (struct eng_w){w.t[h].d, dt, rows, cols, (size_t)cols};
		free(wf), free(wd);
	}
	return w;
}

static void heads_w_free(struct heads_w *w)
{
	for (int h = 0; h < w->nh; h++)
		twin_free(&w->t[h]);
	free(w->t), free(w->h), free(w->d);
}

/* matmul_heads: nh heads of (rows, cols), each its own allocation, activations and outputs strided
 * per head inside a token's row (the MLA absorption's layout), against nh CPU matmuls. */
struct mh_run {
	struct twin *x, *y;
	struct eng_w *w;
	int n, nh, ldx, hx, ldy, hy;
};

static void mh_go(void *p)
{
	struct mh_run *r = p;
	gpu->matmul_heads(gpu, r->x->d, r->ldx, r->hx, r->n, r->nh, r->w, r->y->d, r->ldy, r->hy);
}

static void check_matmul_heads(int nh, int rows, int cols, int n, int hx, enum eng_dtype dt, int timed)
{
	size_t es = eng_dtype_size(dt);
	int ldx = nh * hx, ldy = nh * rows;
	struct heads_w W = heads_w_new(nh, rows, cols, dt);
	struct eng_w *wh = W.h, *wg = W.d;
	float *xf = rand_f32((size_t)n * ldx, 1.0f);
	struct twin X = twin_new(xf, (size_t)n * ldx * 4), Y = twin_new(NULL, (size_t)n * ldy * 4);
	for (int h = 0; h < nh; h++)
		cpu->matmul(cpu, (float *)X.h + (size_t)h * hx, ldx, n, &wh[h], NULL, (float *)Y.h + (size_t)h * rows, ldy);
	poison(&Y);
	gpu->matmul_heads(gpu, X.d, ldx, hx, n, nh, wg, Y.d, ldy, rows);
	double e = nmse_of(Y.h, Y.d, (size_t)n * ldy), us = 0;
	struct mh_run r = {&X, &Y, wg, n, nh, ldx, hx, ldy, rows};
	if (timed)
		us = time_us(mh_go, &r, 20);
	char shape[96];
	snprintf(shape, sizeof(shape), "%s %dx W(%d,%d) n=%d", eng_dtype_name(dt), nh, rows, cols, n);
	/* bf16 with whole 32-column chunks takes the tensor-core GEMV in fast mode (activations rounded) */
	report("mm_heads", shape, e, dt == ENG_DT_BF16 && cols % 32 == 0 ? 3e-5 : 1e-10, us, (double)nh * rows * cols * es + (double)n * nh * (cols + rows) * 4);
	heads_w_free(&W);
	twin_free(&X), twin_free(&Y);
	free(xf);
}

/* ---- small ops ---- */
static void check_small(void)
{
	char shape[96];
	/* embed */
	{
		int V = 1000, H = 2048 + 8, n = 7;
		float *tf = rand_f32((size_t)V * H, 1.0f);
		void *td = to_dtype(tf, (size_t)V * H, ENG_DT_BF16);
		struct twin T = twin_new(td, (size_t)V * H * 2), O = twin_new(NULL, (size_t)n * H * 4);
		int32_t ids[7] = {0, 999, 5, 5, 17, 500, 1};
		struct eng_w th = {T.h, ENG_DT_BF16, V, H, (size_t)H}, tg = {T.d, ENG_DT_BF16, V, H, (size_t)H};
		cpu->embed(cpu, &th, ids, n, O.h);
		poison(&O);
		gpu->embed(gpu, &tg, ids, n, O.d);
		report("embed", "bf16 (1000,2056) n=7", nmse_of(O.h, O.d, (size_t)n * H), 0, 0, 0);
		twin_free(&T), twin_free(&O), free(tf), free(td);
	}
	/* rmsnorm, strided rows, in place */
	for (int dim = 513; dim <= 2048; dim += 1535) {
		int n = 3, ld = dim + 5;
		float *xf = rand_f32((size_t)n * ld, 2.0f), *wf = rand_f32((size_t)dim, 1.0f);
		struct twin X = twin_new(xf, (size_t)n * ld * 4), Wt = twin_new(wf, (size_t)dim * 4);
		cpu->rmsnorm(cpu, X.h, ld, X.h, ld, n, dim, Wt.h, 1e-6f);
		gpu->rmsnorm(gpu, X.d, ld, X.d, ld, n, dim, Wt.d, 1e-6f);
		snprintf(shape, sizeof(shape), "n=3 dim=%d ld=%d in place", dim, ld);
		report("rmsnorm", shape, nmse_of(X.h, X.d, (size_t)n * ld), 1e-12, 0, 0);
		twin_free(&X), twin_free(&Wt), free(xf), free(wf);
	}
	/* rope: interleaved (DeepSeek) and halves (Llama), long positions */
	for (int il = 0; il < 2; il++) {
		struct eng_rope_cfg rc = {0};
		rc.type = il ? ENG_ROPE_YARN : ENG_ROPE_DEFAULT;
		rc.dim = 64, rc.theta = 10000, rc.factor = 40, rc.orig_max_pos = 4096, rc.beta_fast = 32, rc.beta_slow = 1;
		rc.mscale = 0.707, rc.mscale_all_dim = 0.707, rc.attention_factor = -1, rc.interleaved = il;
		struct eng_rope r;
		struct sh_err err;
		if (eng_rope_init(&r, &rc, &err)) {
			printf("FAIL rope init: %s\n", err.msg);
			fails++;
			continue;
		}
		int n = 5, nh = 16, hd = 192, ld = nh * hd;
		int32_t pos[5] = {0, 1, 31, 4097, 100000};
		float *xf = rand_f32((size_t)n * ld, 1.0f);
		struct twin X = twin_new(xf, (size_t)n * ld * 4);
		cpu->rope(cpu, (float *)X.h + 128, n, nh, ld, hd, pos, &r);
		gpu->rope(gpu, (float *)X.d + 128, n, nh, ld, hd, pos, &r);
		snprintf(shape, sizeof(shape), "%s n=5 heads=16 pos<=100000", il ? "yarn pairs" : "halves");
		report("rope", shape, nmse_of(X.h, X.d, (size_t)n * ld), 1e-11, 0, 0);
		twin_free(&X), free(xf);
	}
	/* add_rmsnorm (x += t, y = norm(x)) against add then rmsnorm, in place too, and a shape it hands
	 * to the two separate kernels (dim not a multiple of 4) */
	for (int k = 0; k < 3; k++) {
		int n = k == 2 ? 3 : 5, dim = k == 2 ? 1409 : 2048;
		float *xf = rand_f32((size_t)n * dim, 2.0f), *tf = rand_f32((size_t)n * dim, 1.0f), *wf = rand_f32(dim, 1.0f);
		struct twin X = twin_new(xf, (size_t)n * dim * 4), T = twin_new(tf, (size_t)n * dim * 4);
		struct twin Wn = twin_new(wf, (size_t)dim * 4), Y = twin_new(NULL, (size_t)n * dim * 4);
		float *yh = k == 1 ? X.h : Y.h, *yd = k == 1 ? X.d : Y.d;
		cpu->add(cpu, X.h, T.h, (size_t)n * dim);
		cpu->rmsnorm(cpu, yh, dim, X.h, dim, n, dim, Wn.h, 1e-6f);
		gpu->add_rmsnorm(gpu, X.d, T.d, yd, n, dim, Wn.d, 1e-6f);
		char w[64];
		snprintf(w, sizeof(w), "n=%d dim=%d%s", n, dim, k == 1 ? " in place" : "");
		double e = nmse_of(yh, yd, (size_t)n * dim) + (k == 1 ? 0 : nmse_of(X.h, X.d, (size_t)n * dim));
		report("add_rmsnorm", w, e, 1e-12, 0, 0);
		twin_free(&X), twin_free(&T), twin_free(&Wn), twin_free(&Y), free(xf), free(tf), free(wf);
	}
	/* silu_mul, add, copy2d, zero */
	{
		int n = 3, dim = 1409, ld = 1411;
		float *gf = rand_f32((size_t)n * ld, 4.0f), *uf = rand_f32((size_t)n * ld, 1.0f);
		struct twin G = twin_new(gf, (size_t)n * ld * 4), U = twin_new(uf, (size_t)n * ld * 4);
		cpu->silu_mul(cpu, G.h, ld, U.h, ld, n, dim);
		gpu->silu_mul(gpu, G.d, ld, U.d, ld, n, dim);
		report("silu_mul", "n=3 dim=1409 ld=1411", nmse_of(G.h, G.d, (size_t)n * ld), 1e-12, 0, 0);
		cpu->add(cpu, (float *)G.h + 1, (float *)U.h + 2, (size_t)n * ld - 3);
		gpu->add(gpu, (float *)G.d + 1, (float *)U.d + 2, (size_t)n * ld - 3);
		report("add", "4230 values, unaligned", nmse_of(G.h, G.d, (size_t)n * ld), 1e-12, 0, 0);
		cpu->copy2d(cpu, (float *)G.h + 7, 40, (float *)U.h + 3, 60, 24, 50);
		gpu->copy2d(gpu, (float *)G.d + 7, 40, (float *)U.d + 3, 60, 24, 50);
		cpu->zero(cpu, (float *)G.h + 2000, 444);
		gpu->zero(gpu, (float *)G.d + 2000, 444);
		report("copy2d+zero", "50 rows of 24 B, 444 B", nmse_of(G.h, G.d, (size_t)n * ld), 1e-12, 0, 0);
		/* the kernel's three element sizes: 16-byte (all aligned), 4-byte, bytes (odd width) */
		cpu->copy2d(cpu, (float *)G.h + 4, 64, (float *)U.h + 8, 96, 48, 60);
		gpu->copy2d(gpu, (float *)G.d + 4, 64, (float *)U.d + 8, 96, 48, 60);
		report("copy2d", "60 rows of 48 B (16-byte elements)", nmse_of(G.h, G.d, (size_t)n * ld), 1e-12, 0, 0);
		{ /* bytes: odd pitches and width; compared byte for byte (the floats they cut are not numbers) */
			size_t nb = (size_t)n * ld * 4;
			uint8_t *a = malloc(nb), *b = malloc(nb);
			cpu->copy2d(cpu, (uint8_t *)G.h + 4001, 33, (uint8_t *)U.h + 7, 29, 21, 70);
			gpu->copy2d(gpu, (uint8_t *)G.d + 4001, 33, (uint8_t *)U.d + 7, 29, 21, 70);
			memcpy(a, G.h, nb);
			d2h(b, G.d, nb);
			int diff = 0; /* the copied rows (the rest of G carries silu_mul's rounding differences) */
			for (int r = 0; r < 70; r++)
				diff |= memcmp(a + 4001 + r * 33, b + 4001 + r * 33, 21);
			report("copy2d", "70 rows of 21 B (byte elements)", diff ? INFINITY : 0.0, 0, 0, 0);
			free(a), free(b);
		}
		twin_free(&G), twin_free(&U), free(gf), free(uf);
	}
}

/* ---- KV cache ops ---- */
struct kvpair {
	struct eng_kv *h, *d;
	struct eng_kv_seq *sh, *sd; /* per sequence */
	int n_seqs;
};

static void kvpair_new(struct kvpair *k, enum eng_kv_fmt fmt, const struct eng_kv_shape *shape, int n_seqs, int ctx)
{
	struct sh_err err;
	int nb = n_seqs * ((ctx + 15) / 16 + 1) + 4;
	k->h = eng_kv_new(cpu, fmt, shape, nb, &err);
	k->d = eng_kv_new(gpu, fmt, shape, nb, &err);
	if (!k->h || !k->d) {
		fprintf(stderr, "kv: %s\n", err.msg);
		exit(2);
	}
	k->n_seqs = n_seqs;
	k->sh = calloc((size_t)n_seqs, sizeof(*k->sh));
	k->sd = calloc((size_t)n_seqs, sizeof(*k->sd));
	for (int s = 0; s < n_seqs; s++) {
		eng_kv_seq_init(&k->sh[s]);
		eng_kv_seq_init(&k->sd[s]);
		/* a free block between sequences' allocations: tables are not contiguous runs */
		if (eng_kv_seq_prepare(k->h, &k->sh[s], 0, ctx, &err) || eng_kv_seq_prepare(k->d, &k->sd[s], 0, ctx, &err)) {
			fprintf(stderr, "kv prepare: %s\n", err.msg);
			exit(2);
		}
	}
}

static void kvpair_free(struct kvpair *k)
{
	for (int s = 0; s < k->n_seqs; s++) {
		eng_kv_seq_release(k->h, &k->sh[s]);
		eng_kv_seq_release(k->d, &k->sd[s]);
	}
	free(k->sh), free(k->sd);
	eng_kv_free(k->h), eng_kv_free(k->d);
}

/* Writes positions 0..ctx[s]-1 of every sequence of every layer with the same random rows on both
 * sides (in chunks of up to 256 tokens per call, sequences interleaved). */
static void kv_fill(struct kvpair *k, const int *ctx, float amp)
{
	int E = k->h->shape.row_elems, L = k->h->shape.n_layers, chunk = 256;
	float *rows = rand_f32((size_t)chunk * E + 64, amp); /* + the per-layer shift */
	struct twin R = twin_new(rows, ((size_t)chunk * E + 64) * 4);
	int32_t *pos = malloc(sizeof(int32_t) * chunk), *si = malloc(sizeof(int32_t) * chunk);
	struct eng_kv_seq **sh = malloc(sizeof(void *) * k->n_seqs), **sd = malloc(sizeof(void *) * k->n_seqs);
	for (int s = 0; s < k->n_seqs; s++)
		sh[s] = &k->sh[s], sd[s] = &k->sd[s];
	for (int s = 0; s < k->n_seqs; s++)
		for (int p0 = 0; p0 < ctx[s]; p0 += chunk) {
			int n = SH_MIN(chunk, ctx[s] - p0);
			for (int i = 0; i < n; i++)
				pos[i] = p0 + i, si[i] = s;
			struct eng_batch bh = {n, NULL, pos, si, sh, k->n_seqs, NULL}, bd = {n, NULL, pos, si, sd, k->n_seqs, NULL};
			for (int l = 0; l < L; l++) {
				/* shift the rows per layer and chunk so that layers differ */
				int off = (l * 7 + p0) % 64;
				cpu->kv_write(cpu, k->h, l, &bh, (float *)R.h + off, E);
				gpu->kv_write(gpu, k->d, l, &bd, (float *)R.d + off, E);
			}
			k->sh[s].n_tokens = k->sd[s].n_tokens = p0 + n;
		}
	twin_free(&R);
	free(rows), free(pos), free(si), free(sh), free(sd);
	cudaDeviceSynchronize(); /* written on gpu's stream; read on gpuf's too */
}

/* the pools byte for byte (the codecs must agree) */
static void check_pool_bytes(struct kvpair *k, const char *what)
{
	size_t bytes = k->h->layer_block_bytes * (size_t)k->h->shape.n_layers * k->h->n_blocks;
	uint8_t *g = malloc(bytes);
	d2h(g, k->d->pool, bytes);
	size_t diff = 0;
	for (size_t i = 0; i < bytes; i++)
		diff += g[i] != k->h->pool[i];
	checks++;
	/* fp32 amax/scale are computed identically; a value on a rounding tie may still differ by one
	 * code through a different fused multiply-add: allow 1 in 10^5 */
	int ok = diff * 100000 <= bytes;
	fails += !ok;
	printf("%-4s %-11s %-44s %zu of %zu bytes differ\n", ok ? "ok" : "FAIL", "kv_write", what, diff, bytes);
	free(g);
}

struct mla_run {
	struct kvpair *k;
	struct eng_batch *bd;
	struct twin *ql, *qp, *o;
	int nh, R, dr;
	float scale;
};

static void mla_go(void *p)
{
	struct mla_run *r = p;
	gpu->attn_mla(gpu, r->k->d, 1, r->bd, r->ql->d, r->qp->d, r->nh, r->R, r->dr, r->scale, r->o->d);
}

/* MLA over the cache: n_seqs sequences of contexts ctx[], one decode token each (at ctx - 1). */
static void check_mla(enum eng_kv_fmt fmt, int n_seqs, const int *ctx, int exact, int timed)
{
	int nh = 16, R = 512, dr = 64, L = 2;
	struct eng_kv_shape shape = {L, R + dr, 2, {0, R, R + dr}};
	struct kvpair k;
	int maxc = 0;
	for (int s = 0; s < n_seqs; s++)
		maxc = SH_MAX(maxc, ctx[s]);
	kvpair_new(&k, fmt, &shape, n_seqs, maxc);
	kv_fill(&k, ctx, 1.0f);
	int n = n_seqs;
	float *qlf = rand_f32((size_t)n * nh * R, 0.3f), *qpf = rand_f32((size_t)n * nh * dr, 0.3f);
	struct twin QL = twin_new(qlf, (size_t)n * nh * R * 4), QP = twin_new(qpf, (size_t)n * nh * dr * 4);
	struct twin O = twin_new(NULL, (size_t)n * nh * R * 4);
	int32_t *pos = malloc(sizeof(int32_t) * n), *si = malloc(sizeof(int32_t) * n);
	struct eng_kv_seq **sh = malloc(sizeof(void *) * n), **sd = malloc(sizeof(void *) * n);
	for (int s = 0; s < n; s++)
		pos[s] = ctx[s] - 1, si[s] = s, sh[s] = &k.sh[s], sd[s] = &k.sd[s];
	struct eng_batch bh = {n, NULL, pos, si, sh, n, NULL}, bd = {n, NULL, pos, si, sd, n, NULL};
	float scale = 0.1147f;
	cpu->attn_mla(cpu, k.h, 1, &bh, QL.h, QP.h, nh, R, dr, scale, O.h);
	eng_cuda_set_exact(gpu, exact);
	poison(&O);
	gpu->attn_mla(gpu, k.d, 1, &bd, QL.d, QP.d, nh, R, dr, scale, O.d);
	double e = nmse_of(O.h, O.d, (size_t)n * nh * R);
	double us = 0, bytes = 0;
	if (timed) {
		struct mla_run r = {&k, &bd, &QL, &QP, &O, nh, R, dr, scale};
		us = time_us(mla_go, &r, 20);
		for (int s = 0; s < n; s++)
			bytes += (double)ctx[s] * eng_kv_bytes_per_token_layer(k.d);
	}
	char shape_s[96];
	snprintf(shape_s, sizeof(shape_s), "%s %s 16h R512+64 %d seq ctx %d..%d", eng_kv_fmt_name(fmt),
		 exact || fmt == ENG_KV_F32 ? "simt" : "mma", n, ctx[0], ctx[n - 1]);
	/* fp32 path: summation order only; tensor-core path: queries and f32 values rounded to bf16 */
	double bound = exact || fmt == ENG_KV_F32 ? 1e-10 : 3e-5;
	if (!timed) {
		/* inside a step (the splits fixed by the table length, not the positions): eager, then
		 * recorded, then replayed; each against the CPU */
		int32_t *ids = calloc((size_t)n, sizeof(int32_t));
		struct eng_batch bs = {n, ids, pos, si, sd, n, NULL};
		static const char *what[3] = {"step eager", "step recorded", "step replayed"};
		for (int r = 0; r < 3; r++) {
			poison(&O);
			if (!gpu->step_begin(gpu, &bs, k.d, &k, 0))
				gpu->attn_mla(gpu, k.d, 1, &bs, QL.d, QP.d, nh, R, dr, scale, O.d);
			gpu->step_end(gpu);
			char s2[128];
			snprintf(s2, sizeof(s2), "%.60s %s", shape_s, what[r]);
			report("attn_mla", s2, nmse_of(O.h, O.d, (size_t)n * nh * R), bound, 0, 0);
		}
		gpu->step_forget(gpu, &k);
		free(ids);
	}
	eng_cuda_set_exact(gpu, 0);
	report("attn_mla", shape_s, e, bound, us, bytes);
	if (n_seqs > 1 && maxc < 2000 && !timed) {
		char w[64];
		snprintf(w, sizeof(w), "%s MLA rows, %d seqs", eng_kv_fmt_name(fmt), n_seqs);
		check_pool_bytes(&k, w);
	}
	twin_free(&QL), twin_free(&QP), twin_free(&O);
	free(qlf), free(qpf), free(pos), free(si), free(sh), free(sd);
	kvpair_free(&k);
}

/* Run r of a check on the fused backend: 0 outside a step, 1 .. 3 inside one (eager, recorded,
 * replayed: step_what[r] says which); go(arg) issues the op. */
static const char *const step_what[4] = {"", " step eager", " step recorded", " step replayed"};

static void step_run(int r, const struct eng_batch *b, struct kvpair *k, void (*go)(void *), void *arg)
{
	int replayed = r && gpuf->step_begin(gpuf, b, k->d, k, 0);
	if (!replayed)
		go(arg);
	if (r)
		gpuf->step_end(gpuf);
}

/* attn_mla_uv (the fused backend: the splits merged in the uv GEMV at one or two tokens, apart
 * past that) against the CPU's attn_mla then each head's uv matmul; n_seqs sequences of contexts
 * ctx[], eager, then inside a step (eager, recorded, replayed); timed against the two ops apart. */
struct mlauv_run {
	struct kvpair *k;
	struct eng_batch *b;
	struct twin *ql, *qp, *o, *att;
	struct eng_w *uv;
	int nh, R, dr, dv;
	struct eng_backend *be; /* gpuf: fused; gpu: attn_mla then matmul_heads */
};

static void mlauv_go(void *p)
{
	struct mlauv_run *r = p;
	if (r->be->attn_mla_uv) {
		r->be->attn_mla_uv(r->be, r->k->d, 1, r->b, r->ql->d, r->qp->d, r->nh, r->R, r->dr, 0.1147f, r->o->d, r->uv,
				   r->att->d);
		return;
	}
	r->be->attn_mla(r->be, r->k->d, 1, r->b, r->ql->d, r->qp->d, r->nh, r->R, r->dr, 0.1147f, r->o->d);
	r->be->matmul_heads(r->be, r->o->d, r->nh * r->R, r->R, r->b->n, r->nh, r->uv, r->att->d, r->nh * r->dv, r->dv);
}

static void check_mla_uv(enum eng_kv_fmt fmt, int n_seqs, const int *ctx, int timed)
{
	int nh = 16, R = 512, dr = 64, dv = 128, n = n_seqs, maxc = 0;
	struct eng_kv_shape shape = {2, R + dr, 2, {0, R, R + dr}};
	struct kvpair k;
	for (int s = 0; s < n_seqs; s++)
		maxc = SH_MAX(maxc, ctx[s]);
	kvpair_new(&k, fmt, &shape, n_seqs, maxc);
	kv_fill(&k, ctx, 1.0f);
	struct heads_w W = heads_w_new(nh, dv, R, ENG_DT_BF16);
	struct eng_w *wh = W.h, *wg = W.d;
	float *qlf = rand_f32((size_t)n * nh * R, 0.3f), *qpf = rand_f32((size_t)n * nh * dr, 0.3f);
	struct twin QL = twin_new(qlf, (size_t)n * nh * R * 4), QP = twin_new(qpf, (size_t)n * nh * dr * 4);
	struct twin O = twin_new(NULL, (size_t)n * nh * R * 4), A = twin_new(NULL, (size_t)n * nh * dv * 4);
	int32_t *pos = malloc(sizeof(int32_t) * n), *si = malloc(sizeof(int32_t) * n), *ids = calloc((size_t)n, 4);
	struct eng_kv_seq **sh = malloc(sizeof(void *) * n), **sd = malloc(sizeof(void *) * n);
	for (int s = 0; s < n; s++)
		pos[s] = ctx[s] - 1, si[s] = s, sh[s] = &k.sh[s], sd[s] = &k.sd[s];
	struct eng_batch bh = {n, NULL, pos, si, sh, n, NULL}, bd = {n, ids, pos, si, sd, n, NULL};
	cpu->attn_mla(cpu, k.h, 1, &bh, QL.h, QP.h, nh, R, dr, 0.1147f, O.h);
	for (int h = 0; h < nh; h++)
		cpu->matmul(cpu, (float *)O.h + (size_t)h * R, nh * R, n, &wh[h], NULL, (float *)A.h + (size_t)h * dv, nh * dv);
	struct mlauv_run r = {&k, &bd, &QL, &QP, &O, &A, wg, nh, R, dr, dv, gpuf};
	char shape_s[96], s2[128];
	snprintf(shape_s, sizeof(shape_s), "%s 16h R512+64 uv 128 %d seq ctx %d..%d", eng_kv_fmt_name(fmt), n, ctx[0],
		 ctx[n - 1]);
	/* the queries, the values and the merged output rounded to bf16 (tensor cores) */
	for (int run = 0; run < 4; run++) {
		poison(&A);
		step_run(run, &bd, &k, mlauv_go, &r);
		snprintf(s2, sizeof(s2), "%.70s%s", shape_s, step_what[run]);
		report("attn_mla_uv", s2, nmse_of(A.h, A.d, (size_t)n * nh * dv), 3e-5, 0, 0);
	}
	gpuf->step_forget(gpuf, &k);
	if (timed) {
		double bytes = (double)nh * dv * R * 2;
		for (int s = 0; s < n; s++)
			bytes += (double)ctx[s] * eng_kv_bytes_per_token_layer(k.d);
		report("attn_mla_uv", shape_s, 0, 0, time_us(mlauv_go, &r, 20), bytes);
		r.be = gpu;
		snprintf(s2, sizeof(s2), "%.70s (apart)", shape_s);
		report("attn_mla_uv", s2, 0, 0, time_us(mlauv_go, &r, 20), bytes);
	}
	heads_w_free(&W);
	twin_free(&QL), twin_free(&QP), twin_free(&O), twin_free(&A);
	free(qlf), free(qpf), free(pos), free(si), free(ids), free(sh), free(sd);
	kvpair_free(&k);
}

/* The prefetch hint (gpuf is made with KVGATE_CUDA_L2PF): a decode step's attention chain at one
 * token (attn_mla_uv over 513 positions), then the output projection (2048, 2048) and the shared
 * experts' gate and up (2816, 2048), with the hint for those three before the chain and without.
 * A hint changes no result: equal bit for bit, eagerly and in a step (recorded, replayed). Timed
 * from a cold L2 (a 256 MB memset before each run), as recorded steps: the two times printed. */
struct pf_run {
	struct mlauv_run a;
	struct eng_w w[3]; /* wo, gate, up */
	struct twin *y, *g, *u;
	int hint;
};

static void pf_go(void *p)
{
	struct pf_run *r = p;
	if (r->hint) {
		const struct eng_w *w[3] = {&r->w[0], &r->w[1], &r->w[2]};
		gpuf->prefetch(gpuf, w, 3, 1);
	}
	mlauv_go(&r->a);
	gpuf->matmul(gpuf, r->a.att->d, 2048, 1, &r->w[0], NULL, r->y->d, 2048);
	gpuf->glu(gpuf, r->y->d, 2048, 1, &r->w[1], &r->w[2], r->g->d, r->u->d, 2816);
}

/* g (1, 2816) of run r of pf_go on the host (r: step_run's) */
static float *pf_result(struct pf_run *pr, int r, struct eng_batch *b, struct kvpair *k)
{
	float *out = malloc(2816 * sizeof(float));
	poison(pr->g);
	step_run(r, b, k, pf_go, pr);
	gpuf->to_host(gpuf, out, pr->g->d, 2816 * sizeof(float));
	return out;
}

static double pf_time_us(struct pf_run *pr, struct eng_batch *b, struct kvpair *k, void *junk, size_t jbytes)
{
	cudaEvent_t e0, e1;
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	const void *owner = pr->hint ? (const void *)pr : (const void *)k; /* a recording each */
	double total = 0;
	int reps = 20;
	for (int i = -2; i < reps; i++) { /* two runs to record */
		cudaMemsetAsync(junk, i & 0xff, jbytes, 0);
		cudaEventRecord(e0, 0);
		if (!gpuf->step_begin(gpuf, b, k->d, owner, 0))
			pf_go(pr);
		gpuf->step_end(gpuf);
		cudaEventRecord(e1, 0);
		cudaEventSynchronize(e1);
		float ms = 0;
		cudaEventElapsedTime(&ms, e0, e1);
		if (i >= 0)
			total += ms;
	}
	gpuf->step_forget(gpuf, owner);
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	return total * 1000.0 / reps;
}

static void check_prefetch(void)
{
	if (!gpuf->prefetch) {
		printf("skip prefetch: the bulk L2 prefetch needs sm_90+\n");
		return;
	}
	int nh = 16, R = 512, dr = 64, dv = 128, ctx[1] = {513};
	struct eng_kv_shape shape = {2, R + dr, 2, {0, R, R + dr}};
	struct kvpair k;
	kvpair_new(&k, ENG_KV_BF16, &shape, 1, ctx[0]);
	kv_fill(&k, ctx, 1.0f);
	struct heads_w W = heads_w_new(nh, dv, R, ENG_DT_BF16);
	float *qlf = rand_f32((size_t)nh * R, 0.3f), *qpf = rand_f32((size_t)nh * dr, 0.3f);
	struct twin QL = twin_new(qlf, (size_t)nh * R * 4), QP = twin_new(qpf, (size_t)nh * dr * 4);
	struct twin O = twin_new(NULL, (size_t)nh * R * 4), A = twin_new(NULL, (size_t)nh * dv * 4);
	struct twin Y = twin_new(NULL, 2048 * 4), G = twin_new(NULL, 2816 * 4), U = twin_new(NULL, 2816 * 4);
	int rows[3] = {2048, 2816, 2816};
	struct twin M[3];
	struct pf_run pr = {{&k, NULL, &QL, &QP, &O, &A, W.d, nh, R, dr, dv, gpuf}, {{0}}, &Y, &G, &U, 0};
	for (int i = 0; i < 3; i++) {
		float *f = rand_f32((size_t)rows[i] * 2048, 0.03f);
		void *d = to_dtype(f, (size_t)rows[i] * 2048, ENG_DT_BF16);
		M[i] = twin_new(d, (size_t)rows[i] * 2048 * 2);
		pr.w[i] = (struct eng_w){M[i].d, ENG_DT_BF16, rows[i], 2048, 2048};
		free(f), free(d);
	}
	int32_t pos[1] = {ctx[0] - 1}, si[1] = {0}, ids[1] = {0};
	struct eng_kv_seq *sd[1] = {&k.sd[0]};
	struct eng_batch bd = {1, ids, pos, si, sd, 1, NULL};
	pr.a.b = &bd;
	const char *what[4] = {"eager", "step eager", "step recorded", "step replayed"};
	/* each against the same mode without the hint (a step splits the attention its own way) */
	float *ref[2] = {pf_result(&pr, 0, &bd, &k), pf_result(&pr, 1, &bd, &k)};
	gpuf->step_forget(gpuf, &k);
	pr.hint = 1;
	for (int r = 0; r < 4; r++) {
		float *got = pf_result(&pr, r, &bd, &k);
		const float *want = r ? ref[1] : ref[0];
		size_t diff = 0;
		for (int i = 0; i < 2816; i++)
			diff += memcmp(&got[i], &want[i], sizeof(float)) != 0;
		char s2[96];
		snprintf(s2, sizeof(s2), "attn_mla_uv, wo, glu at 1 token, %s", what[r]);
		report("prefetch", s2, diff ? INFINITY : 0.0, 0, 0, 0);
		free(got);
	}
	gpuf->step_forget(gpuf, &k);
	size_t jbytes = (size_t)256 << 20;
	void *junk = NULL;
	if (cudaMalloc(&junk, jbytes) == cudaSuccess) {
		double bytes = (2048.0 + 2 * 2816.0) * 2048 * 2 + (double)nh * dv * R * 2 +
			       (double)ctx[0] * eng_kv_bytes_per_token_layer(k.d);
		pr.hint = 0;
		report("prefetch", "the chain from a cold L2, recorded", 0, 0, pf_time_us(&pr, &bd, &k, junk, jbytes), bytes);
		pr.hint = 1;
		report("prefetch", "the chain from a cold L2, recorded, + hint", 0, 0, pf_time_us(&pr, &bd, &k, junk, jbytes),
		       bytes);
		cudaFree(junk);
	}
	free(ref[0]), free(ref[1]);
	for (int i = 0; i < 3; i++)
		twin_free(&M[i]);
	heads_w_free(&W);
	twin_free(&QL), twin_free(&QP), twin_free(&O), twin_free(&A), twin_free(&Y), twin_free(&G), twin_free(&U);
	free(qlf), free(qpf);
	kvpair_free(&k);
}

/* mla_prep against the six ops it stands for, on the CPU: token i of sequence i at pos[i], uk per
 * head in dt (bf16 at whole 32-column chunks: the fused kernel; f32 or odd widths: the six CUDA ops
 * it falls back to). q_lat, the roped q, q_pe_out and the normed, roped kva by NMSE; the cache byte
 * for byte after the CPU has re-encoded the GPU's rows (the norms' sums may differ in the last bit,
 * the codecs must not). steps: also inside a step (eager, recorded, replayed). */
struct prep_run {
	struct kvpair *k;
	struct eng_batch *b;
	struct twin *q, *kva, *nw, *ql, *qp;
	const struct eng_rope *r;
	struct eng_w *w;
	int nh, dn, dr, R;
};

static void prep_go(void *p)
{
	struct prep_run *a = p;
	gpuf->mla_prep(gpuf, a->k->d, 1, a->b, a->q->d, a->nh, a->dn, a->dr, a->kva->d, a->R, a->nw->d, 1e-6f, a->r, a->w,
		      a->ql->d, a->qp->d);
}

static void check_mla_prep(enum eng_kv_fmt fmt, int n, const int32_t *pos, int nh, int dn, int dr, int R,
			   enum eng_dtype dt, int steps, int timed)
{
	int qk = dn + dr, maxp = 0;
	size_t es = eng_dtype_size(dt), nq = (size_t)n * nh * qk, nkv = (size_t)n * (R + dr);
	struct eng_kv_shape shape = {2, R + dr, 2, {0, R, R + dr}};
	for (int i = 0; i < n; i++)
		maxp = SH_MAX(maxp, pos[i]);
	struct kvpair k;
	kvpair_new(&k, fmt, &shape, n, maxp + 1);
	struct eng_rope_cfg rc = {0}; /* DeepSeek-V2's: YaRN, interleaved pairs */
	rc.type = ENG_ROPE_YARN, rc.dim = dr, rc.theta = 10000, rc.factor = 40, rc.orig_max_pos = 4096;
	rc.beta_fast = 32, rc.beta_slow = 1, rc.mscale = 0.707, rc.mscale_all_dim = 0.707, rc.attention_factor = -1;
	rc.interleaved = 1;
	struct eng_rope r;
	struct sh_err err;
	if (eng_rope_init(&r, &rc, &err)) {
		printf("FAIL mla_prep rope init: %s\n", err.msg);
		fails++;
		kvpair_free(&k);
		return;
	}
	struct heads_w W = heads_w_new(nh, R, dn, dt);
	struct eng_w *wh = W.h, *wg = W.d;
	float *qf = rand_f32(nq, 1.0f), *kvf = rand_f32(nkv, 2.0f), *nf = rand_f32((size_t)R, 1.0f);
	struct twin Q = twin_new(qf, nq * 4), KV = twin_new(kvf, nkv * 4), NW = twin_new(nf, (size_t)R * 4);
	struct twin QL = twin_new(NULL, (size_t)n * nh * R * 4), QP = twin_new(NULL, (size_t)n * nh * dr * 4);
	int32_t *si = malloc(sizeof(int32_t) * n), *ids = calloc((size_t)n, sizeof(int32_t));
	struct eng_kv_seq **sh = malloc(sizeof(void *) * n), **sd = malloc(sizeof(void *) * n);
	for (int i = 0; i < n; i++)
		si[i] = i, sh[i] = &k.sh[i], sd[i] = &k.sd[i];
	struct eng_batch bh = {n, NULL, pos, si, sh, n, NULL}, bd = {n, ids, pos, si, sd, n, NULL};
	cpu->rmsnorm(cpu, KV.h, R + dr, KV.h, R + dr, n, R, NW.h, 1e-6f);
	cpu->rope(cpu, (float *)KV.h + R, n, 1, R + dr, dr, pos, &r);
	cpu->rope(cpu, (float *)Q.h + dn, n, nh, nh * qk, qk, pos, &r);
	cpu->kv_write(cpu, k.h, 1, &bh, KV.h, R + dr);
	for (int h = 0; h < nh; h++)
		cpu->matmul(cpu, (float *)Q.h + (size_t)h * qk, nh * qk, n, &wh[h], NULL, (float *)QL.h + (size_t)h * R,
			    nh * R);
	cpu->copy2d(cpu, QP.h, 4 * (size_t)dr, (float *)Q.h + dn, 4 * (size_t)qk, 4 * (size_t)dr, (size_t)n * nh);
	struct prep_run a = {&k, &bd, &Q, &KV, &NW, &QL, &QP, &r, wg, nh, dn, dr, R};
	char shape_s[96], s2[128];
	snprintf(shape_s, sizeof(shape_s), "%s %s %dh R%d+%d dn%d n=%d pos %d..%d", eng_kv_fmt_name(fmt),
		 eng_dtype_name(dt), nh, R, dr, dn, n, pos[0], pos[n - 1]);
	/* bf16 with whole 32-column chunks: tensor cores (activations rounded); otherwise fp32 */
	double bound = dt == ENG_DT_BF16 && dn % 32 == 0 ? 3e-5 : 1e-10;
	for (int run = 0; run < (steps ? 4 : 1); run++) {
		h2d(Q.d, qf, nq * 4);
		h2d(KV.d, kvf, nkv * 4);
		poison(&QL), poison(&QP);
		step_run(run, &bd, &k, prep_go, &a);
		snprintf(s2, sizeof(s2), "%.70s%s", shape_s, step_what[run]);
		report("mla_prep", s2, nmse_of(QL.h, QL.d, (size_t)n * nh * R), bound, 0, 0);
		/* q_pe roped (and q_nope untouched), q_pe_out, kva: fp32 both sides, rounding only */
		double e = nmse_of(Q.h, Q.d, nq) + nmse_of(QP.h, QP.d, (size_t)n * nh * dr) + nmse_of(KV.h, KV.d, nkv);
		snprintf(s2, sizeof(s2), "q, q_pe, kva%s", step_what[run]);
		report("mla_prep", s2, e, 1e-11, 0, 0);
	}
	if (steps)
		gpuf->step_forget(gpuf, &k);
	float *rows = malloc(nkv * 4);
	d2h(rows, KV.d, nkv * 4);
	cpu->kv_write(cpu, k.h, 1, &bh, rows, R + dr);
	snprintf(s2, sizeof(s2), "%s mla_prep rows, %d seqs", eng_kv_fmt_name(fmt), n);
	check_pool_bytes(&k, s2);
	if (timed) { /* last: each run norms and ropes the rows again */
		double us = time_us(prep_go, &a, 20);
		double bytes = (double)nh * R * dn * es + 4.0 * (nq * 2 + nkv * 2 + (double)n * nh * (R + dr));
		report("mla_prep", shape_s, 0, 0, us, bytes);
	}
	heads_w_free(&W);
	twin_free(&Q), twin_free(&KV), twin_free(&NW), twin_free(&QL), twin_free(&QP);
	free(qf), free(kvf), free(nf), free(si), free(ids), free(sh), free(sd), free(rows);
	kvpair_free(&k);
}

static void check_gqa_gather(enum eng_kv_fmt fmt)
{
	int nh = 12, nkv = 4, hd = 80, L = 2, n = 3;
	struct eng_kv_shape shape = {L, 2 * nkv * hd, 2 * nkv, {0}};
	for (int p = 0; p <= 2 * nkv; p++)
		shape.part_off[p] = p * hd;
	int ctx[3] = {1, 33, 500};
	struct kvpair k;
	kvpair_new(&k, fmt, &shape, n, 500);
	kv_fill(&k, ctx, 2.0f);
	char w[64];
	snprintf(w, sizeof(w), "%s GQA rows (8 parts of 80)", eng_kv_fmt_name(fmt));
	check_pool_bytes(&k, w);
	float *qf = rand_f32((size_t)n * nh * hd, 0.3f);
	struct twin Q = twin_new(qf, (size_t)n * nh * hd * 4), O = twin_new(NULL, (size_t)n * nh * hd * 4);
	int32_t pos[3] = {0, 32, 499}, si[3] = {0, 1, 2};
	struct eng_kv_seq *sh[3] = {&k.sh[0], &k.sh[1], &k.sh[2]}, *sd[3] = {&k.sd[0], &k.sd[1], &k.sd[2]};
	struct eng_batch bh = {n, NULL, pos, si, sh, n, NULL}, bd = {n, NULL, pos, si, sd, n, NULL};
	cpu->attn_gqa(cpu, k.h, 1, &bh, Q.h, nh, nkv, hd, 0.11f, O.h);
	poison(&O);
	gpu->attn_gqa(gpu, k.d, 1, &bd, Q.d, nh, nkv, hd, 0.11f, O.d);
	snprintf(w, sizeof(w), "%s 12h/4kv hd80 ctx 1,33,500", eng_kv_fmt_name(fmt));
	report("attn_gqa", w, nmse_of(O.h, O.d, (size_t)n * nh * hd), 1e-10, 0, 0);
	/* gather of sequence 2's rows */
	struct twin G = twin_new(NULL, (size_t)500 * shape.row_elems * 4);
	cpu->kv_gather(cpu, k.h, 0, &k.sh[2], 500, G.h);
	poison(&G);
	gpu->kv_gather(gpu, k.d, 0, &k.sd[2], 500, G.d);
	snprintf(w, sizeof(w), "%s 500 rows of 640", eng_kv_fmt_name(fmt));
	report("kv_gather", w, nmse_of(G.h, G.d, (size_t)500 * shape.row_elems), 0, 0, 0);
	twin_free(&Q), twin_free(&O), twin_free(&G), free(qf);
	kvpair_free(&k);
}

struct dense_run {
	struct twin *q, *k, *v, *o;
	const int32_t *pos;
	int n, ctx, nh, dq, dv;
	float scale;
};

static void dense_go(void *p)
{
	struct dense_run *r = p;
	gpu->attn_dense(gpu, r->q->d, r->pos, r->n, r->k->d, r->v->d, r->ctx, r->nh, r->dq, r->dv, r->scale, r->o->d);
}

/* Dense causal attention (the naive MLA prefill's shape: 16 heads, dq 192, dv 128): n queries at
 * the last n of ctx positions (n < ctx: a chunk continuing a prompt), one token, odd lengths; the
 * cuBLAS path and exact mode's SIMT kernel. */
static void check_dense(int quick)
{
	static const struct {
		int n, ctx, exact, timed;
	} cases[] = {
		{37, 37, 0, 0}, {300, 300, 0, 0}, {100, 300, 0, 0}, {1, 1, 0, 0},   {1, 517, 0, 0},
		{64, 64, 0, 0}, {65, 200, 0, 0},  {129, 129, 0, 0}, {37, 37, 1, 0},  {2048, 2048, 0, 1},
	};
	/* the tensor-core path: the flash kernel unless KVGATE_CUDA_FLASH=0 (then cuBLAS) */
	const char *fe = getenv("KVGATE_CUDA_FLASH"), *tc = fe && *fe == '0' ? "cublas" : "flash";
	int nh = 16, dq = 192, dv = 128;
	float scale = 0.1147f;
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		int n = cases[c].n, ctx = cases[c].ctx, exact = cases[c].exact, timed = cases[c].timed;
		if (timed && quick)
			continue;
		float *qf = rand_f32((size_t)n * nh * dq, 1.0f), *kf = rand_f32((size_t)ctx * nh * dq, 1.0f);
		float *vf = rand_f32((size_t)ctx * nh * dv, 1.0f);
		struct twin Q = twin_new(qf, (size_t)n * nh * dq * 4), K = twin_new(kf, (size_t)ctx * nh * dq * 4);
		struct twin V = twin_new(vf, (size_t)ctx * nh * dv * 4), O = twin_new(NULL, (size_t)n * nh * dv * 4);
		int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
		for (int i = 0; i < n; i++)
			pos[i] = ctx - n + i;
		cpu->attn_dense(cpu, Q.h, pos, n, K.h, V.h, ctx, nh, dq, dv, scale, O.h);
		eng_cuda_set_exact(gpu, exact);
		poison(&O);
		gpu->attn_dense(gpu, Q.d, pos, n, K.d, V.d, ctx, nh, dq, dv, scale, O.d);
		double e = nmse_of(O.h, O.d, (size_t)n * nh * dv), us = 0;
		if (timed) {
			struct dense_run r = {&Q, &K, &V, &O, pos, n, ctx, nh, dq, dv, scale};
			us = time_us(dense_go, &r, 20);
		}
		eng_cuda_set_exact(gpu, 0);
		char shape[96];
		snprintf(shape, sizeof(shape), "n=%d ctx=%d 16h dq192 dv128 %s", n, ctx, exact ? "simt" : tc);
		/* SIMT: summation order only. Flash / cuBLAS: q, k, v and the probabilities rounded to bf16 (8
		 * significant bits: relative error up to 2^-8, rms ~1.6e-3), fp32 accumulation. An output
		 * sum_j p_j v_j whose terms carry independent relative errors (of p_j and of v_j) has an NMSE
		 * of about the sum of their mean squares, 2 * 2.5e-6, whatever the attention's sharpness;
		 * rounding q and k moves the logits by ~1.2e-3 rms here (scale 0.1147 times 192 products of
		 * uniform values), another ~1.4e-6. Expected ~6e-6; bound 1e-4 (15x margin), while one key
		 * masked wrongly costs ~1/nk (2e-3 at 517 keys) and a misplaced head ~1. */
		double bound = exact ? 1e-10 : 1e-4;
		/* bytes: the op's fp32 operands, read and written once (what no implementation avoids) */
		double bytes = 4.0 * ((double)n + ctx) * nh * (dq + dv);
		report("attn_dense", shape, e, bound, us, bytes);
		twin_free(&Q), twin_free(&K), twin_free(&V), twin_free(&O);
		free(qf), free(kf), free(vf), free(pos);
	}
}

/* ---- MoE ---- */
static void check_route(int E, int K, int group)
{
	int n = 5;
	float *lf = rand_f32((size_t)n * E, 3.0f);
	struct twin Lg = twin_new(lf, (size_t)n * E * 4), I = twin_new(NULL, (size_t)n * K * 4), Wt = twin_new(NULL, (size_t)n * K * 4);
	struct eng_moe_route r = {E, K, group, group ? 4 : 1, group ? 2 : 1, 0, 1.0f};
	cpu->moe_route(cpu, Lg.h, n, &r, I.h, Wt.h);
	poison(&I), poison(&Wt);
	gpu->moe_route(gpu, Lg.d, n, &r, I.d, Wt.d);
	int32_t got[64 * 8];
	d2h(got, I.d, (size_t)n * K * 4);
	int same = !memcmp(got, I.h, (size_t)n * K * 4);
	char w[64];
	snprintf(w, sizeof(w), "E=%d K=%d %s n=5", E, K, group ? "group-limited 4/2" : "greedy");
	report("moe_route", w, same ? nmse_of(Wt.h, Wt.d, (size_t)n * K) : INFINITY, 1e-12, 0, 0);
	twin_free(&Lg), twin_free(&I), twin_free(&Wt), free(lf);
}

/* The CPU side of a prenorm op: x += t, xn = rmsnorm(x) * w (the CPU has no add_rmsnorm). */
static void cpu_prenorm(struct twin *X, struct twin *T, struct twin *W, struct twin *XN, int n, int dim)
{
	if (T)
		cpu->add(cpu, X->h, T->h, (size_t)n * dim);
	cpu->rmsnorm(cpu, XN->h, dim, X->h, dim, n, dim, W->h, 1e-6f);
}

/* x, t, the norm's weights and xn (poisoned on the device) of n tokens */
static void prenorm_twins(struct twin *X, struct twin *T, struct twin *W, struct twin *XN, int n, int dim)
{
	float *xf = rand_f32((size_t)n * dim, 1.0f), *tf = rand_f32((size_t)n * dim, 0.5f), *wf = rand_f32(dim, 1.0f);
	*X = twin_new(xf, (size_t)n * dim * 4), *T = twin_new(tf, (size_t)n * dim * 4), *W = twin_new(wf, (size_t)dim * 4);
	*XN = twin_new(NULL, (size_t)n * dim * 4);
	poison(XN);
	free(xf), free(tf), free(wf);
}

/* the stored x and xn of a prenorm op against the CPU's */
static void report_prenorm(const char *op, const char *shape, struct twin *X, struct twin *XN, int n, int dim)
{
	char w[128];
	snprintf(w, sizeof(w), "%s: x", shape);
	report(op, w, nmse_of(X->h, X->d, (size_t)n * dim), 1e-14, 0, 0);
	snprintf(w, sizeof(w), "%s: xn", shape);
	report(op, w, nmse_of(XN->h, XN->d, (size_t)n * dim), 1e-12, 0, 0);
}

/* norm_matmul2: x += t, the norm, then two matrices of xn, against the CPU's add, rmsnorm and
 * matmuls (t: 0 leaves the add out) */
static void check_norm_matmul2(int rows1, int rows2, int cols, int n, int t)
{
	float *w1f = rand_f32((size_t)rows1 * cols, 0.05f), *w2f = rand_f32((size_t)rows2 * cols, 0.05f);
	void *w1d = to_dtype(w1f, (size_t)rows1 * cols, ENG_DT_BF16), *w2d = to_dtype(w2f, (size_t)rows2 * cols, ENG_DT_BF16);
	struct twin W1 = twin_new(w1d, (size_t)rows1 * cols * 2), W2 = twin_new(w2d, (size_t)rows2 * cols * 2);
	struct twin X, T, NW, XN, Y = twin_new(NULL, (size_t)n * (rows1 + rows2) * 4);
	prenorm_twins(&X, &T, &NW, &XN, n, cols);
	struct eng_w h1 = {W1.h, ENG_DT_BF16, rows1, cols, (size_t)cols}, d1 = {W1.d, ENG_DT_BF16, rows1, cols, (size_t)cols};
	struct eng_w h2 = {W2.h, ENG_DT_BF16, rows2, cols, (size_t)cols}, d2 = {W2.d, ENG_DT_BF16, rows2, cols, (size_t)cols};
	int ldy = rows1 + rows2;
	cpu_prenorm(&X, t ? &T : NULL, &NW, &XN, n, cols);
	cpu->matmul(cpu, XN.h, cols, n, &h1, NULL, Y.h, ldy);
	cpu->matmul(cpu, XN.h, cols, n, &h2, NULL, (float *)Y.h + rows1, ldy);
	poison(&Y);
	struct eng_prenorm pn = {X.d, t ? T.d : NULL, NW.d, 1e-6f, XN.d};
	gpuf->norm_matmul2(gpuf, &pn, n, &d1, Y.d, ldy, &d2, (float *)Y.d + rows1, ldy);
	char shape[96];
	snprintf(shape, sizeof(shape), "BF16 W(%d,%d)+W(%d,%d) n=%d%s", rows1, cols, rows2, cols, n, t ? " +t" : "");
	report("norm_matmul2", shape, nmse_of(Y.h, Y.d, (size_t)n * ldy), 3e-5, 0, 0);
	report_prenorm("norm_matmul2", shape, &X, &XN, n, cols);
	twin_free(&W1), twin_free(&W2), twin_free(&X), twin_free(&T), twin_free(&NW), twin_free(&XN), twin_free(&Y);
	free(w1f), free(w2f), free(w1d), free(w2d);
}

/* moe_router: the add and norm, the router's matmul and the routing in one pass, against the
 * CPU's add, rmsnorm, matmul and moe_route: the same experts (exactly) and weights */
static void check_router(int E, int K, int n, int group, enum eng_dtype dt)
{
	int cols = 2048;
	size_t wn = (size_t)E * cols, es = eng_dtype_size(dt);
	float *wf = rand_f32(wn, 0.05f);
	void *wd = to_dtype(wf, wn, dt);
	struct twin W = twin_new(wd, wn * es), X, T, NW, XN, Lg = twin_new(NULL, (size_t)n * E * 4);
	struct twin I = twin_new(NULL, (size_t)n * K * 4), Wt = twin_new(NULL, (size_t)n * K * 4);
	prenorm_twins(&X, &T, &NW, &XN, n, cols);
	struct eng_w wh = {W.h, dt, E, cols, (size_t)cols}, wdv = {W.d, dt, E, cols, (size_t)cols};
	struct eng_moe_route r = {E, K, group, group ? 4 : 1, group ? 2 : 1, group, 1.0f};
	cpu_prenorm(&X, &T, &NW, &XN, n, cols);
	/* the logits from xn as the tensor cores see it (rounded to bf16: the device rounds it the same
	 * way up to the norm's last bit), so that the picks must match: they differ by the sum order */
	float *xb = malloc((size_t)n * cols * 4);
	memcpy(xb, XN.h, (size_t)n * cols * 4);
	for (size_t i = 0; dt == ENG_DT_BF16 && i < (size_t)n * cols; i++) {
		uint32_t b;
		memcpy(&b, &xb[i], 4);
		b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
		memcpy(&xb[i], &b, 4);
	}
	cpu->matmul(cpu, xb, cols, n, &wh, NULL, Lg.h, E);
	cpu->moe_route(cpu, Lg.h, n, &r, I.h, Wt.h);
	poison(&I), poison(&Wt);
	struct eng_prenorm pn = {X.d, T.d, NW.d, 1e-6f, XN.d};
	gpuf->moe_router(gpuf, &pn, n, &wdv, &r, Lg.d, I.d, Wt.d);
	int32_t *got = malloc((size_t)n * K * 4);
	d2h(got, I.d, (size_t)n * K * 4);
	int same = !memcmp(got, I.h, (size_t)n * K * 4);
	char w[80];
	snprintf(w, sizeof(w), "%s E=%d K=%d n=%d %s", eng_dtype_name(dt), E, K, n, group ? "group-limited" : "greedy");
	report("moe_router", w, same ? nmse_of(Wt.h, Wt.d, (size_t)n * K) : INFINITY, 1e-5, 0, 0);
	report_prenorm("moe_router", w, &X, &XN, n, cols);
	twin_free(&W), twin_free(&X), twin_free(&T), twin_free(&NW), twin_free(&XN), twin_free(&Lg), twin_free(&I),
		twin_free(&Wt);
	free(wf), free(wd), free(got), free(xb);
}

/* the shared experts (2 x 1408 wide, as the Lite's) on both sides for moe_ffn_shared */
struct moe_shared {
	struct twin w[3], g, u;
	struct eng_w h[3], d[3];
};

static void moe_shared_new(struct moe_shared *m, int n, int dim, int Is)
{
	int rows[3] = {Is, Is, dim}, cols[3] = {dim, dim, Is};
	for (int k = 0; k < 3; k++) {
		size_t wn = (size_t)rows[k] * cols[k];
		float *f = rand_f32(wn, 0.03f);
		void *b = to_dtype(f, wn, ENG_DT_BF16);
		m->w[k] = twin_new(b, wn * 2);
		m->h[k] = (struct eng_w){m->w[k].h, ENG_DT_BF16, rows[k], cols[k], (size_t)cols[k]};
		m->d[k] = (struct eng_w){m->w[k].d, ENG_DT_BF16, rows[k], cols[k], (size_t)cols[k]};
		free(f), free(b);
	}
	m->g = twin_new(NULL, (size_t)n * Is * 4);
	m->u = twin_new(NULL, (size_t)n * Is * 4);
}

static void moe_shared_free(struct moe_shared *m)
{
	for (int k = 0; k < 3; k++)
		twin_free(&m->w[k]);
	twin_free(&m->g), twin_free(&m->u);
}

struct moe_run {
	struct twin *x, *idx, *wt, *out;
	struct eng_w *g, *u, *d;
	int n, dim, K, E;
	struct moe_shared *sh; /* or NULL */
	struct eng_backend *be;
};

static void moe_go(void *p)
{
	struct moe_run *r = p;
	if (r->sh)
		r->be->moe_ffn_shared(r->be, r->x->d, r->n, r->dim, r->idx->d, r->wt->d, r->K, r->E, r->g, r->u, r->d,
				    r->sh->d, r->sh->g.d, r->sh->u.d, r->out->d, NULL);
	else
		r->be->moe_ffn(r->be, r->x->d, r->n, r->dim, r->idx->d, r->wt->d, r->K, r->E, r->g, r->u, r->d, r->out->d,
			       NULL);
}

/* skew: token i takes experts 0, 1 + i % 2, 3 + i % 4, ..., 31 + i % 32 (counts n, n/2, ... n/32:
 * too uneven for the padded prefill's four buckets, so the per-expert path runs) */
/* shared: with the shared experts (moe_ffn_shared, fused only); fused: 1 the KVGATE_CUDA_FUSE=1
 * backend, 2 that with KVGATE_CUDA_DOWN1=0 (one token's down per expert, then the combine) */
static void check_moe(int n, int timed, int skew, int shared, int fused)
{
	struct eng_backend *be = fused == 2 ? gpud : fused || shared ? gpuf : gpu;
	int E = 64, K = 6, dim = 2048, I = 1408;
	size_t per = (size_t)I * dim;
	float *wf = rand_f32(per * 3 * E / 16, 0.03f); /* 16 distinct experts' data, reused */
	void *wd = to_dtype(wf, per * 3 * E / 16, ENG_DT_BF16);
	struct twin W = twin_new(NULL, per * 3 * E * 2);
	for (int r = 0; r < 16; r++) {
		memcpy((uint8_t *)W.h + r * per * 3 * E / 16 * 2, wd, per * 3 * E / 16 * 2);
		h2d((uint8_t *)W.d + r * per * 3 * E / 16 * 2, wd, per * 3 * E / 16 * 2);
	}
	struct eng_w *gh = calloc(E, sizeof(struct eng_w)), *uh = calloc(E, sizeof(struct eng_w)), *dh = calloc(E, sizeof(struct eng_w));
	struct eng_w *gd = calloc(E, sizeof(struct eng_w)), *ud = calloc(E, sizeof(struct eng_w)), *dd = calloc(E, sizeof(struct eng_w));
	for (int e = 0; e < E; e++) { /* offset each expert by a few rows so that no two are equal */
		size_t o = (size_t)e * per * 3 + (size_t)(e % 5) * dim;
		uint8_t *bh = W.h, *bd = W.d;
		gh[e] = (struct eng_w){bh + o * 2, ENG_DT_BF16, I, dim, (size_t)dim};
		uh[e] = (struct eng_w){bh + (o + per) * 2, ENG_DT_BF16, I, dim, (size_t)dim};
		dh[e] = (struct eng_w){bh + (o + 2 * per - (size_t)(e % 5) * dim) * 2, ENG_DT_BF16, dim, I, (size_t)I};
		gd[e] = (struct eng_w){bd + o * 2, ENG_DT_BF16, I, dim, (size_t)dim};
		ud[e] = (struct eng_w){bd + (o + per) * 2, ENG_DT_BF16, I, dim, (size_t)dim};
		dd[e] = (struct eng_w){bd + (o + 2 * per - (size_t)(e % 5) * dim) * 2, ENG_DT_BF16, dim, I, (size_t)I};
	}
	float *xf = rand_f32((size_t)n * dim, 1.0f), *of = rand_f32((size_t)n * dim, 1.0f);
	int32_t *idx = malloc(sizeof(int32_t) * n * K);
	float *wt = malloc(sizeof(float) * n * K);
	int touched[64] = {0}, nt = 0;
	for (int i = 0; i < n; i++)
		for (int k = 0; k < K; k++) {
			int e = (1 << k) - 1 + i % (1 << k);
			while (!skew) { /* distinct experts per token, as top-k gives */
				e = (int)(rnd() % E);
				int dup = 0;
				for (int j = 0; j < k; j++)
					dup |= idx[i * K + j] == e;
				if (!dup)
					break;
			}
			idx[i * K + k] = e;
			wt[i * K + k] = 0.1f + 0.1f * k;
			nt += !touched[e];
			touched[e] = 1;
		}
	struct twin X = twin_new(xf, (size_t)n * dim * 4), O = twin_new(of, (size_t)n * dim * 4);
	struct twin Ix = twin_new(idx, sizeof(int32_t) * n * K), Wt = twin_new(wt, sizeof(float) * n * K);
	/* the CPU reference on the first nc tokens only (tokens are independent; the GPU runs all n) */
	int nc = n < 320 ? n : 320;
	float *scr = cpu->alloc(cpu, eng_backend_moe_scratch(nc, dim, I) * 4);
	struct moe_shared sh;
	if (shared) { /* out = shared(x) + routed: the CPU's glu and down, then its moe_ffn adds */
		moe_shared_new(&sh, n, dim, 2 * I);
		eng_glu(cpu, X.h, dim, nc, &sh.h[0], &sh.h[1], sh.g.h, sh.u.h, 2 * I);
		cpu->matmul(cpu, sh.g.h, 2 * I, nc, &sh.h[2], NULL, O.h, dim);
		poison(&O);
	}
	cpu->moe_ffn(cpu, X.h, nc, dim, Ix.h, Wt.h, K, E, gh, uh, dh, O.h, scr);
	if (shared)
		be->moe_ffn_shared(be, X.d, n, dim, Ix.d, Wt.d, K, E, gd, ud, dd, sh.d, sh.g.d, sh.u.d, O.d, NULL);
	else
		be->moe_ffn(be, X.d, n, dim, Ix.d, Wt.d, K, E, gd, ud, dd, O.d, NULL);
	double e = nmse_of(O.h, O.d, (size_t)nc * dim);
	double us = 0;
	struct moe_run r = {&X, &Ix, &Wt, &O, gd, ud, dd, n, dim, K, E, shared ? &sh : NULL, be};
	if (timed)
		us = time_us(moe_go, &r, 20);
	char w[80];
	if (nc < n)
		snprintf(w, sizeof(w), "bf16 64x(1408,2048) top-6 n=%d (%d exp, %d chk)", n, nt, nc);
	else
		snprintf(w, sizeof(w), "bf16 64x(1408,2048) top-6 n=%d (%d experts%s%s%s%s)", n, nt, skew ? ", skewed" : "",
			 shared ? ", + shared" : "", fused && !shared ? ", fused" : "", fused == 2 ? ", per-expert down" : "");
	/* fast mode rounds activations to bf16 at every expert matmul (tensor cores, decode and prefill) */
	report("moe_ffn", w, e, 3e-5, us, (double)nt * per * 3 * 2);
	cpu->release(cpu, scr);
	if (shared)
		moe_shared_free(&sh);
	twin_free(&X), twin_free(&O), twin_free(&Ix), twin_free(&Wt), twin_free(&W);
	free(gh), free(uh), free(dh), free(gd), free(ud), free(dd);
	free(wf), free(wd), free(xf), free(of), free(idx), free(wt);
}

int main(int argc, char **argv)
{
	int quick = argc > 1 && !strcmp(argv[1], "--quick");
	struct sh_err err;
	cpu = eng_cpu_new(0);
	/* gpu: version 3's ops (the fused ones off); gpuf, gpud: the fused ones at every size they take
	 * (the defaults fuse the norm and the MoE at one token only: the checks at 2..32 tokens too) */
	setenv("KVGATE_CUDA_FUSE", "0", 1);
	setenv("KVGATE_CUDA_PN", "8", 1);
	setenv("KVGATE_CUDA_MOE_FN", "32", 1);
	gpu = eng_cuda_new(0, &err);
	if (!gpu) {
		fprintf(stderr, "no CUDA device: %s\n", err.msg);
		return 77;
	}
	setenv("KVGATE_CUDA_FUSE", "1", 1);
	setenv("KVGATE_CUDA_L2PF", "32", 1); /* the prefetch hint: only check_prefetch calls it */
	gpuf = eng_cuda_new(0, &err);
	unsetenv("KVGATE_CUDA_L2PF");
	setenv("KVGATE_CUDA_DOWN1", "0", 1);
	gpud = gpuf ? eng_cuda_new(0, &err) : NULL;
	unsetenv("KVGATE_CUDA_FUSE");
	unsetenv("KVGATE_CUDA_DOWN1");
	if (!gpuf || !gpud) {
		fprintf(stderr, "no second CUDA backend: %s\n", err.msg);
		return 1;
	}
	char desc[256];
	eng_cuda_describe(gpu, desc, sizeof(desc));
	printf("device: %s\n", desc);
	measure_copy_bw();

	check_small();
	/* matmul: decode (GEMV) at one token and odd widths, the 16-byte path and the fallbacks */
	check_matmul(3072, 2048, 1, ENG_DT_BF16, 0, 1);
	check_matmul(576, 2048, 1, ENG_DT_BF16, 0, 1);
	check_matmul(2048, 2048, 8, ENG_DT_BF16, 0, 1);
	check_matmul(2048, 2048, 2, ENG_DT_BF16, 0, 1);
	check_matmul(1001, 1024, 5, ENG_DT_BF16, 1, 0); /* tensor-core GEMV: rows not a multiple of 16 */
	check_matmul(576, 2048, 8, ENG_DT_BF16, 0, 1);
	check_matmul(2048, 1408, 7, ENG_DT_BF16, 0, 1);
	check_matmul(3072, 2048, 8, ENG_DT_BF16, 0, 1);
	check_matmul(1000, 1003, 3, ENG_DT_BF16, 1, 0);
	check_matmul(333, 517, 5, ENG_DT_F16, 1, 0);
	check_matmul(300, 64, 7, ENG_DT_F32, 1, 0);
	check_matmul(100, 1001, 2, ENG_DT_F32, 0, 0);
	check_matmul(1408, 2048, 33, ENG_DT_BF16, 0, 0);
	check_matmul(777, 1000, 100, ENG_DT_F16, 1, 0);
	check_matmul(64, 64, 41, ENG_DT_F32, 1, 0);
	if (!quick) {
		check_matmul(102400, 2048, 1, ENG_DT_BF16, 0, 1);
		check_matmul(10944, 2048, 1, ENG_DT_BF16, 0, 1);
		check_matmul(2048, 10944, 1, ENG_DT_BF16, 0, 1);
		check_matmul(10944, 2048, 8, ENG_DT_BF16, 0, 1);
		check_matmul(10944, 2048, 2048, ENG_DT_BF16, 0, 1);
	}
	check_matmul2(3072, 576, 2048, 1); /* q and kv_a */
	check_matmul2(2816, 2816, 2048, 8); /* shared experts' gate and up */
	check_matmul2(1001, 40, 1024, 3);  /* rows not a multiple of 16 */
	check_matmul2(300, 200, 512, 40);  /* prefill: two cuBLAS calls */
	check_norm_matmul2(3072, 576, 2048, 1, 1); /* the norm, q and kv_a */
	check_norm_matmul2(3072, 576, 2048, 8, 1);
	check_norm_matmul2(3072, 576, 2048, 1, 0); /* the first layer: no add */
	check_norm_matmul2(1001, 40, 1024, 3, 1);  /* rows not a multiple of 16 */
	check_norm_matmul2(300, 200, 512, 12, 1);  /* more than 8 tokens: add_rmsnorm, then matmul2 */
	check_glu(2816, 2048, 1, ENG_DT_BF16); /* shared experts' gate and up, fused */
	check_glu(10944, 2048, 8, ENG_DT_BF16);
	check_glu(1001, 1024, 3, ENG_DT_BF16);  /* rows not a multiple of 16 */
	check_glu(300, 512, 40, ENG_DT_BF16);   /* prefill: matmul2, then silu_mul */
	check_glu(100, 72, 2, ENG_DT_F32);
	/* the MLA absorption's per-head matrices: uk (512, 128) and uv (128, 512), odd shapes too */
	check_matmul_heads(16, 512, 128, 1, 192, ENG_DT_BF16, 1);
	check_matmul_heads(16, 128, 512, 1, 512, ENG_DT_BF16, 1);
	check_matmul_heads(16, 512, 128, 8, 192, ENG_DT_BF16, 1);
	check_matmul_heads(3, 100, 72, 11, 80, ENG_DT_BF16, 0);
	check_matmul_heads(5, 33, 50, 3, 57, ENG_DT_F16, 0);
	check_matmul_heads(4, 64, 40, 9, 40, ENG_DT_F32, 0);
	check_dense(quick);
	check_route(64, 6, 0);
	check_route(8, 3, 1);
	check_router(64, 6, 1, 0, ENG_DT_BF16);
	check_router(64, 6, 8, 0, ENG_DT_BF16);
	check_router(40, 3, 5, 1, ENG_DT_BF16); /* rows not a multiple of 16, group-limited */
	check_router(64, 6, 12, 0, ENG_DT_BF16); /* more than 8 tokens: matmul, then moe_route */
	check_router(16, 2, 3, 0, ENG_DT_F32);
	for (int f = ENG_KV_F32; f < ENG_KV_NFMT; f++)
		check_gqa_gather((enum eng_kv_fmt)f);
	/* MLA: one token, odd lengths, several sequences, both paths */
	int c1[1] = {1}, c3[3] = {17, 100, 1001}, c5[5] = {2, 31, 33, 500, 4099};
	for (int f = ENG_KV_F32; f < ENG_KV_NFMT; f++) {
		check_mla((enum eng_kv_fmt)f, 1, c1, 0, 0);
		check_mla((enum eng_kv_fmt)f, 3, c3, 0, 0);
		check_mla((enum eng_kv_fmt)f, 5, c5, 0, 0);
		check_mla((enum eng_kv_fmt)f, 3, c3, 1, 0);
	}
	if (!quick) { /* long contexts, timed: batch 1 and 8 at 8192 */
		int l1[1] = {8192}, l8[8] = {8192, 8192, 8192, 8192, 8192, 8192, 8192, 8192};
		int f3[3] = {ENG_KV_BF16, ENG_KV_FP8, ENG_KV_INT8};
		for (int j = 0; j < 3; j++) {
			check_mla((enum eng_kv_fmt)f3[j], 1, l1, 0, 1);
			check_mla((enum eng_kv_fmt)f3[j], 8, l8, 0, 1);
		}
		check_mla(ENG_KV_BF16, 1, l1, 1, 1);
	}
	/* attn_mla_uv: merged in the uv GEMV at 1 and 2 tokens (16 splits at 513, 64 at 8192), one
	 * split (nothing to merge), and apart at 3 tokens */
	int u1[1] = {513}, u0[1] = {1}, u2[2] = {33, 4099}, u8k[1] = {8192};
	for (int f = ENG_KV_BF16; f < ENG_KV_NFMT; f++) {
		check_mla_uv((enum eng_kv_fmt)f, 1, u1, f == ENG_KV_BF16);
		check_mla_uv((enum eng_kv_fmt)f, 2, u2, 0);
	}
	check_mla_uv(ENG_KV_BF16, 1, u0, 0);
	check_mla_uv(ENG_KV_FP8, 3, c3, 0);
	check_mla_uv(ENG_KV_BF16, 1, u8k, !quick);
	check_prefetch();
	/* mla_prep: the Lite shape at 1, 3, 8 and 11 (two chunks) tokens in every format; odd shapes (a
	 * partial 16-row tile); f32 weights and widths that are not 32-column chunks (the six ops) */
	int32_t p1[1] = {4099}, p3[3] = {0, 17, 63}, p5[5] = {2, 3, 47, 48, 999};
	int32_t p8[8] = {1, 15, 16, 31, 100, 257, 600, 1000}, p11[11] = {5, 9, 16, 17, 33, 64, 65, 127, 128, 300, 511};
	for (int f = ENG_KV_F32; f < ENG_KV_NFMT; f++) {
		check_mla_prep((enum eng_kv_fmt)f, 1, p1, 16, 128, 64, 512, ENG_DT_BF16, 0, 0);
		check_mla_prep((enum eng_kv_fmt)f, 3, p3, 16, 128, 64, 512, ENG_DT_BF16, 1, 0);
		check_mla_prep((enum eng_kv_fmt)f, 8, p8, 16, 128, 64, 512, ENG_DT_BF16, 0, 0);
		check_mla_prep((enum eng_kv_fmt)f, 11, p11, 16, 128, 64, 512, ENG_DT_BF16, 0, 0);
	}
	check_mla_prep(ENG_KV_INT8, 5, p5, 3, 32, 16, 64, ENG_DT_BF16, 1, 0);
	check_mla_prep(ENG_KV_FP8, 3, p3, 3, 32, 16, 72, ENG_DT_BF16, 0, 0);
	check_mla_prep(ENG_KV_BF16, 3, p3, 16, 128, 64, 512, ENG_DT_F32, 1, 0);
	check_mla_prep(ENG_KV_FP8, 5, p5, 3, 40, 16, 64, ENG_DT_BF16, 0, 0);
	check_mla_prep(ENG_KV_BF16, 1, p1, 16, 128, 64, 512, ENG_DT_BF16, 0, 1); /* timed: batch 1, 8 */
	check_mla_prep(ENG_KV_BF16, 8, p8, 16, 128, 64, 512, ENG_DT_BF16, 0, 1);
	check_moe(1, 1, 0, 0, 0);
	check_moe(2, 0, 0, 0, 0);
	check_moe(8, 1, 0, 0, 0);
	check_moe(40, 1, 0, 0, 0);
	check_moe(300, 1, 0, 0, 0); /* prefill: padded batched GEMMs */
	check_moe(300, 0, 1, 0, 0); /* prefill: one cu_matmul an expert */
	check_moe(1, 1, 0, 0, 1);   /* fused: gate/up + silu (times the weights at n = 1), then down */
	check_moe(1, 1, 0, 0, 2);   /* n = 1, the down per expert + the combine */
	check_moe(2, 0, 0, 0, 1);
	check_moe(8, 1, 0, 0, 1);
	check_moe(32, 0, 0, 0, 1);
	check_moe(1, 1, 0, 1, 1);   /* + the shared experts, in the same launches */
	check_moe(1, 1, 0, 1, 2);
	check_moe(5, 0, 0, 1, 1);
	check_moe(8, 1, 0, 1, 1);
	check_moe(40, 0, 0, 1, 1);  /* prefill: the shared experts apart */
	if (!quick)
		check_moe(2048, 1, 0, 0, 0); /* a 2048-token prefill at DeepSeek-Coder-V2-Lite's shape, timed */
	printf("%d of %d checks failed\n", fails, checks);
	gpuf->free(gpuf);
	gpud->free(gpud);
	gpu->free(gpu);
	cpu->free(cpu);
	return fails;
}
