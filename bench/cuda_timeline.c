/* cuda_timeline.c: where a decode step's time goes as it really runs (recorded steps replayed as
 * CUDA graphs, kernels overlapping through PDL), from CUPTI's kernel records. ncu (cuda_profile.sh)
 * times each kernel alone with the others stopped, so its sum is not the step's time; here every
 * kernel keeps its place in the stream. Each kernel is charged what it adds to the step's end: its
 * end minus the latest end before it (0 when it ends inside an earlier kernel), so the charges add up
 * to the step's span exactly. A kernel's own duration counts from its first block's start, which PDL
 * moves before the previous kernel's end (the wait is in it).
 *   tl_start(&err); for each step: tl_mark(); run it, wait;  tl_mark(); tl_print(title);
 * Kernels are grouped by their demangled name and grid (so q + kv_a and wo, both gemv_mma_kernel,
 * are two rows). */
#include "bench/cuda_timeline.h"

#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *__cxa_demangle(const char *mangled, char *buf, size_t *len, int *status); /* libstdc++ */

struct tl_kernel {
	uint64_t start, end;
	int gx, gy;
	char name[96];
};

static struct tl_kernel *ks;
static size_t nk, capk;
static uint64_t marks[2 * TL_MAX_STEPS];
static int nmarks;
static size_t dropped;

#define BUF_SIZE (8u << 20)

static void CUPTIAPI buf_requested(uint8_t **buf, size_t *size, size_t *max_records)
{
	*buf = aligned_alloc(8, BUF_SIZE);
	*size = *buf ? BUF_SIZE : 0;
	*max_records = 0;
}

/* "void gemv_mma_kernel<true, gemv_no_last>(mma2, int, ...)" -> "gemv_mma_kernel<true, gemv_no_last>" */
static void short_name(const char *mangled, char *out, size_t cap)
{
	int st = -1;
	char *d = mangled ? __cxa_demangle(mangled, NULL, NULL, &st) : NULL;
	const char *s = d && st == 0 ? d : (mangled ? mangled : "?");
	if (!strncmp(s, "void ", 5))
		s += 5;
	size_t n = 0;
	int depth = 0;
	for (; s[n] && n + 1 < cap; n++) {
		if (s[n] == '<')
			depth++;
		else if (s[n] == '>')
			depth--;
		else if (s[n] == '(' && depth == 0)
			break;
	}
	memcpy(out, s, n);
	out[n] = 0;
	free(d);
}

static void CUPTIAPI buf_completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid)
{
	(void)ctx, (void)stream, (void)size;
	CUpti_Activity *r = NULL;
	while (cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
		if (r->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && r->kind != CUPTI_ACTIVITY_KIND_KERNEL)
			continue;
		const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)r;
		if (nk == capk) {
			size_t nc = capk ? 2 * capk : 4096;
			struct tl_kernel *p = realloc(ks, nc * sizeof(*ks));
			if (!p) {
				dropped++;
				continue;
			}
			ks = p, capk = nc;
		}
		struct tl_kernel *t = &ks[nk++];
		t->start = k->start, t->end = k->end, t->gx = k->gridX, t->gy = k->gridY;
		short_name(k->name, t->name, sizeof(t->name));
	}
	size_t d = 0;
	if (cuptiActivityGetNumDroppedRecords(ctx, stream, &d) == CUPTI_SUCCESS)
		dropped += d;
	free(buf);
}

static int cupti_ok(CUptiResult r, const char *what, struct sh_err *err)
{
	if (r == CUPTI_SUCCESS)
		return 1;
	const char *s = "?";
	cuptiGetResultString(r, &s);
	sh_errf(err, "CUPTI %s: %s", what, s);
	return 0;
}

int tl_start(struct sh_err *err)
{
	static int registered;
	nk = 0, nmarks = 0, dropped = 0;
	if (!registered && !cupti_ok(cuptiActivityRegisterCallbacks(buf_requested, buf_completed), "register", err))
		return SH_ERR;
	registered = 1;
	if (!cupti_ok(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable", err))
		return SH_ERR;
	return SH_OK;
}

void tl_mark(void)
{
	uint64_t t = 0;
	if (nmarks < 2 * TL_MAX_STEPS && cuptiGetTimestamp(&t) == CUPTI_SUCCESS)
		marks[nmarks++] = t;
}

struct tl_row {
	char name[96];
	int gx, gy;
	long calls;
	double dur, charge; /* ns, summed over the steps */
};

static int by_start(const void *a, const void *b)
{
	const struct tl_kernel *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

static int by_charge(const void *a, const void *b)
{
	const struct tl_row *x = a, *y = b;
	return x->charge > y->charge ? -1 : x->charge < y->charge;
}

int tl_print(const char *title, struct sh_err *err)
{
	cuptiActivityFlushAll(1);
	cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
	int steps = nmarks / 2;
	if (!steps || !nk)
		return sh_errf(err, "CUPTI recorded %zu kernels in %d steps", nk, steps);
	qsort(ks, nk, sizeof(*ks), by_start);
	struct tl_row *rows = calloc(nk, sizeof(*rows));
	size_t nr = 0, used = 0;
	double span = 0, busy = 0, kernels = 0;
	for (int s = 0; s < steps; s++) {
		uint64_t t0 = marks[2 * s], t1 = marks[2 * s + 1], prev_end = 0, first = 0;
		for (size_t i = 0; i < nk; i++) {
			struct tl_kernel *k = &ks[i];
			if (k->start < t0 || k->start > t1)
				continue;
			if (!prev_end)
				first = k->start, prev_end = k->start;
			double charge = k->end > prev_end ? (double)(k->end - prev_end) : 0;
			/* busy: the part of [start, end] after everything before it had ended */
			busy += k->end > prev_end ? (double)(k->end - (k->start > prev_end ? k->start : prev_end)) : 0;
			if (k->end > prev_end)
				prev_end = k->end;
			size_t r = 0;
			while (r < nr && (strcmp(rows[r].name, k->name) || rows[r].gx != k->gx || rows[r].gy != k->gy))
				r++;
			if (r == nr) {
				memcpy(rows[r].name, k->name, sizeof(rows[r].name));
				rows[r].gx = k->gx, rows[r].gy = k->gy, nr++;
			}
			rows[r].calls++, rows[r].dur += (double)(k->end - k->start), rows[r].charge += charge;
			used++;
		}
		if (prev_end)
			span += (double)(prev_end - first);
	}
	kernels = (double)used / steps;
	qsort(rows, nr, sizeof(*rows), by_charge);
	printf("\n%s: %d steps, %.0f kernels a step, span %.3f ms a step (first kernel's start to last one's end), "
	       "GPU idle %.3f ms of it%s\n",
	       title, steps, kernels, span / steps * 1e-6, (span - busy) / steps * 1e-6,
	       dropped ? " (CUPTI dropped records: the table is partial)" : "");
	printf("%-56s %11s %6s %10s %10s %6s\n", "kernel", "grid", "calls", "own us", "charged us", "share");
	for (size_t r = 0; r < nr; r++) {
		char grid[24];
		snprintf(grid, sizeof(grid), "%dx%d", rows[r].gx, rows[r].gy);
		printf("%-56.56s %11s %6ld %10.2f %10.2f %5.1f%%\n", rows[r].name, grid, rows[r].calls / steps,
		       rows[r].dur / rows[r].calls * 1e-3, rows[r].charge / steps * 1e-3, 100.0 * rows[r].charge / span);
	}
	printf("(own us: a call's first block start to its end, PDL's early start included; charged us: what the "
	       "calls add to the step's end, a step's total)\n");
	fflush(stdout);
	free(rows);
	return SH_OK;
}
