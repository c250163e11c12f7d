/* backend.cu: the CUDA backend's table (the dispatcher), its memory functions, uploads and scratch.
 * The ops live one per file beside this one (STYLE.md rule 3). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/cuda/cu.h"

void cu_die(const char *what, const char *msg, const char *file, int line)
{
	fprintf(stderr, "%s:%d: %s: %s\n", file, line, what, msg);
	abort();
}

/* ---- uploads and scratch ---- */

const int32_t *cu_upload(struct cu *c, int slot, const int32_t *h, size_t n)
{
	struct cu_upload *u = &c->up[slot];
	if (c->step.active && (slot == CU_UP_IDS || slot == CU_UP_POS)) {
		/* inside a step the batch's ids and positions are at fixed addresses (cu_step) */
		const int32_t *staged = c->step.hbuf + (slot == CU_UP_IDS ? 0 : c->step.n);
		SH_BUG_ON(n != (size_t)c->step.n || (h != staged && memcmp(h, staged, n * sizeof(int32_t))));
		return c->step.dbuf + (slot == CU_UP_IDS ? 0 : c->step.n);
	}
	SH_BUG_ON(c->step.capturing); /* a pageable upload cannot be recorded */
	if (u->dev && u->n == n && !memcmp(u->host, h, n * sizeof(int32_t)))
		return u->dev;
	if (n > u->cap) {
		if (u->dev)
			CU_CHECK(cudaFree(u->dev));
		u->cap = n * 2 > 256 ? n * 2 : 256;
		CU_CHECK(cudaMalloc((void **)&u->dev, u->cap * sizeof(int32_t)));
		u->host = (int32_t *)sh_realloc(u->host, u->cap * sizeof(int32_t));
	}
	memcpy(u->host, h, n * sizeof(int32_t));
	u->n = n;
	/* from pageable memory: staged by the driver before the call returns, so h may change after */
	CU_CHECK(cudaMemcpyAsync(u->dev, u->host, n * sizeof(int32_t), cudaMemcpyHostToDevice, c->st));
	return u->dev;
}

const int32_t *cu_batch(struct cu *c, const struct eng_batch *b, int *maxb)
{
	if (c->step.active) {
		SH_BUG_ON(b != c->step.b && (b->n != c->step.n || memcmp(b->pos, c->step.hbuf + b->n, 4 * (size_t)b->n)));
		*maxb = c->step.maxb;
		return c->step.dbuf + c->step.n;
	}
	int mb = 1;
	for (int s = 0; s < b->n_seqs; s++)
		mb = SH_MAX(mb, b->seqs[s]->n_blocks);
	size_t len = (size_t)b->n * 2 + (size_t)b->n_seqs * mb;
	if (len > c->btmp_cap) {
		c->btmp_cap = len * 2;
		c->btmp = (int32_t *)sh_realloc(c->btmp, c->btmp_cap * sizeof(int32_t));
	}
	int32_t *tmp = c->btmp;
	memcpy(tmp, b->pos, sizeof(int32_t) * (size_t)b->n);
	memcpy(tmp + b->n, b->seq_idx, sizeof(int32_t) * (size_t)b->n);
	for (int s = 0; s < b->n_seqs; s++) {
		int32_t *row = tmp + (size_t)b->n * 2 + (size_t)s * mb;
		memcpy(row, b->seqs[s]->blocks, sizeof(int32_t) * (size_t)b->seqs[s]->n_blocks);
		for (int j = b->seqs[s]->n_blocks; j < mb; j++)
			row[j] = 0;
	}
	*maxb = mb;
	return cu_upload(c, CU_UP_BATCH, tmp, len);
}

void *cu_scratch(struct cu *c, int slot, size_t bytes)
{
	if (bytes > c->scratch_bytes[slot]) {
		cu_buffers_moved(c);
		if (c->scratch[slot])
			CU_CHECK(cudaFree(c->scratch[slot])); /* synchronises: queued users of the old one are done */
		c->scratch_bytes[slot] = bytes + bytes / 4 + (1 << 20);
		CU_CHECK(cudaMalloc(&c->scratch[slot], c->scratch_bytes[slot]));
	}
	return c->scratch[slot];
}

/* ---- recorded steps (CUDA graphs) ---- */

void cu_buffers_moved(struct cu *c)
{
	SH_BUG_ON(c->step.capturing); /* the step's first, eager run should have made every buffer */
	c->gen++;
}

static void graph_drop(struct cu_graph *g)
{
	if (g->recorded)
		CU_CHECK(cudaGraphExecDestroy(g->exec));
	g->recorded = 0;
}

static void cu_step_forget(struct eng_backend *be, const void *owner)
{
	struct cu_step *s = &CU(be)->step;
	for (int i = 0; i < s->n_g;)
		if (!owner || s->g[i].owner == owner) {
			graph_drop(&s->g[i]);
			s->g[i] = s->g[--s->n_g];
		} else {
			i++;
		}
}

/* Stages b's ids, positions, sequence indices and tables, uploads them in one copy; then replays
 * the recording of this shape (1), or lets the caller issue the ops: eagerly the first time a shape
 * is seen (so that every lazy allocation happens outside a recording), recorded the second. */
static int cu_step_begin(struct eng_backend *be, const struct eng_batch *b, const struct eng_kv *kv,
			 const void *owner, int variant)
{
	struct cu *c = CU(be);
	struct cu_step *s = &c->step;
	SH_BUG_ON(s->active);
	int mb = 1;
	for (int q = 0; q < b->n_seqs; q++)
		mb = SH_MAX(mb, b->seqs[q]->n_blocks);
	int maxb = 16;
	while (maxb < mb)
		maxb *= 2;
	size_t need = (size_t)b->n * 3 + (size_t)b->n_seqs * maxb;
	if (need > s->cap) {
		if (s->hbuf) {
			CU_CHECK(cudaStreamSynchronize(c->st));
			CU_CHECK(cudaFreeHost(s->hbuf));
			CU_CHECK(cudaFree(s->dbuf));
		}
		cu_buffers_moved(c);
		s->cap = need * 2 > 4096 ? need * 2 : 4096;
		CU_CHECK(cudaMallocHost((void **)&s->hbuf, s->cap * sizeof(int32_t)));
		CU_CHECK(cudaMalloc((void **)&s->dbuf, s->cap * sizeof(int32_t)));
	}
	CU_CHECK(cudaEventSynchronize(s->copied)); /* the previous step's copy has left hbuf */
	int32_t *h = s->hbuf;
	size_t n = (size_t)b->n;
	memcpy(h, b->ids, n * sizeof(int32_t));
	memcpy(h + n, b->pos, n * sizeof(int32_t));
	memcpy(h + 2 * n, b->seq_idx, n * sizeof(int32_t));
	for (int q = 0; q < b->n_seqs; q++) {
		int32_t *row = h + 3 * n + (size_t)q * maxb;
		int nb = b->seqs[q]->n_blocks;
		memcpy(row, b->seqs[q]->blocks, sizeof(int32_t) * (size_t)nb);
		memset(row + nb, 0, sizeof(int32_t) * (size_t)(maxb - nb));
	}
	CU_CHECK(cudaMemcpyAsync(s->dbuf, h, need * sizeof(int32_t), cudaMemcpyHostToDevice, c->st));
	CU_CHECK(cudaEventRecord(s->copied, c->st));
	s->active = 1;
	s->b = b;
	s->n = b->n;
	s->maxb = maxb;
	s->cur = -1;
	if (s->disabled)
		return 0;

	int gi = -1;
	for (int i = 0; i < s->n_g && gi < 0; i++) {
		struct cu_graph *g = &s->g[i];
		if (g->owner == owner && g->kv == kv && g->pool == kv->pool && g->fmt == kv->fmt &&
		    g->tscale == kv->tensor_scale && g->n == b->n && g->maxb == maxb && g->variant == variant &&
		    g->exact == c->exact)
			gi = i;
	}
	if (gi < 0) { /* new shape: run eagerly, record next time */
		if (s->n_g == CU_MAX_GRAPHS) {
			int lru = 0;
			for (int i = 1; i < s->n_g; i++)
				if (s->g[i].used < s->g[lru].used)
					lru = i;
			graph_drop(&s->g[lru]);
			s->g[lru] = s->g[--s->n_g];
		}
		gi = s->n_g++;
		struct cu_graph *g = &s->g[gi];
		memset(g, 0, sizeof(*g));
		g->owner = owner, g->kv = kv, g->pool = kv->pool, g->fmt = kv->fmt, g->tscale = kv->tensor_scale;
		g->n = b->n, g->maxb = maxb, g->variant = variant, g->exact = c->exact, g->gen = c->gen;
		g->used = ++s->clock;
		s->eager++;
		s->cur = gi;
		return 0;
	}
	struct cu_graph *g = &s->g[gi];
	g->used = ++s->clock;
	if (g->gen != c->gen) { /* buffers moved since: eager again */
		graph_drop(g);
		s->eager++;
		s->cur = gi;
		return 0;
	}
	if (g->recorded) {
		CU_CHECK(cudaGraphLaunch(g->exec, c->st));
		s->replays++;
		return 1;
	}
	CU_CHECK(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal));
	s->capturing = 1;
	s->cur = gi;
	return 0;
}

static void cu_step_end(struct eng_backend *be)
{
	struct cu *c = CU(be);
	struct cu_step *s = &c->step;
	SH_BUG_ON(!s->active);
	if (s->capturing) {
		cudaGraph_t graph;
		CU_CHECK(cudaStreamEndCapture(c->st, &graph));
		s->capturing = 0;
		struct cu_graph *g = &s->g[s->cur];
		CU_CHECK(cudaGraphInstantiate(&g->exec, graph, 0));
		CU_CHECK(cudaGraphDestroy(graph));
		g->recorded = 1;
		s->records++;
		CU_CHECK(cudaGraphLaunch(g->exec, c->st));
	} else if (s->cur >= 0) {
		s->g[s->cur].gen = c->gen; /* after the eager run's allocations: record next time */
	}
	s->active = 0;
	s->b = NULL;
}

extern "C" void eng_cuda_step_stats(struct eng_backend *be, long *replays, long *records, long *eager)
{
	struct cu_step *s = &CU(be)->step;
	*replays = s->replays, *records = s->records, *eager = s->eager;
}

extern "C" void eng_cuda_set_graphs(struct eng_backend *be, int on)
{
	struct cu *c = CU(be);
	c->step.disabled = !on;
	if (!on)
		cu_step_forget(be, NULL);
}

/* ---- memory ---- */

static void *cu_alloc(struct eng_backend *be, size_t n)
{
	struct cu *c = CU(be);
	void *p = NULL;
	if (cudaMalloc(&p, n ? n : 256) != cudaSuccess) {
		(void)cudaGetLastError(); /* an out-of-memory answer is not sticky: clear it */
		return NULL;
	}
	CU_CHECK(cudaMemsetAsync(p, 0, n, c->st));
	return p;
}

static void cu_release(struct eng_backend *be, void *p)
{
	if (p) {
		cu_buffers_moved(CU(be)); /* a recording may hold it (a workspace, a cache pool) */
		CU_CHECK(cudaFree(p));
	}
}

/* Host to device, or device to device (cudaMemcpyDefault tells them apart by address). */
static void cu_to_dev(struct eng_backend *be, void *dst, const void *src, size_t n)
{
	if (n)
		CU_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, CU(be)->st));
}

static void cu_to_host(struct eng_backend *be, void *dst, const void *src, size_t n)
{
	struct cu *c = CU(be);
	if (n)
		CU_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, c->st));
	CU_CHECK(cudaStreamSynchronize(c->st));
}

/* rows x w elements of T, pitches in elements: a grid-stride loop over the rows * w elements, each
 * thread stepping its (row, column) by the stride without a division per element */
template <typename T>
__global__ void copy2d_kernel(T *dst, size_t dpitch, const T *src, size_t spitch, size_t w, size_t total)
{
	cu_pdl_wait();
	size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
	if (t >= total)
		return;
	size_t r = t / w, col = t % w, sr = step / w, sc = step % w;
	for (; t < total; t += step) {
		dst[r * dpitch + col] = src[r * spitch + col];
		r += sr, col += sc;
		if (col >= w)
			r++, col -= w;
	}
}

template <typename T>
static void copy2d_launch(struct cu *c, void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
			  size_t rows)
{
	size_t w = width / sizeof(T), total = w * rows;
	int blocks = (int)SH_MIN((total + 255) / 256, (size_t)4096);
	cu_launch(c, copy2d_kernel<T>, blocks, 256, 0, (T *)dst, dpitch / sizeof(T), (const T *)src, spitch / sizeof(T), w,
		  total);
}

/* A kernel, not cudaMemcpy2DAsync: that takes ~20 us for the prefill's narrow rows (64 floats by
 * 2048 rows). 16-byte elements when the pointers, pitches and width allow, else 4-byte, else bytes.
 * No allocation and no sync: recorded decode steps use it. */
static void cu_copy2d(struct eng_backend *be, void *dst, size_t dpitch, const void *src, size_t spitch,
		      size_t width, size_t rows)
{
	if (!width || !rows)
		return;
	struct cu *c = CU(be);
	size_t a = (size_t)(uintptr_t)dst | (size_t)(uintptr_t)src | dpitch | spitch | width;
	if (a % 16 == 0)
		copy2d_launch<uint4>(c, dst, dpitch, src, spitch, width, rows);
	else if (a % 4 == 0)
		copy2d_launch<uint32_t>(c, dst, dpitch, src, spitch, width, rows);
	else
		copy2d_launch<uint8_t>(c, dst, dpitch, src, spitch, width, rows);
}

static void cu_zero(struct eng_backend *be, void *p, size_t n)
{
	if (n)
		CU_CHECK(cudaMemsetAsync(p, 0, n, CU(be)->st));
}

/* ---- lifecycle ---- */

__global__ void pdl_probe_kernel(void)
{
}

static void cu_free(struct eng_backend *be)
{
	if (!be)
		return;
	struct cu *c = CU(be);
	cudaStreamSynchronize(c->st);
	cu_step_forget(be, NULL);
	cudaFreeHost(c->step.hbuf);
	cudaFree(c->step.dbuf);
	cudaEventDestroy(c->step.copied);
	for (int i = 0; i < c->n_hd; i++) {
		cudaFree(c->hd[i].dev);
		free(c->hd[i].host);
	}
	free(c->hd);
	cudaFree(c->blas_ws);
	cudaFree(c->tick);
	for (int i = 0; i < CU_UP_N; i++) {
		cudaFree(c->up[i].dev);
		free(c->up[i].host);
	}
	for (int i = 0; i < c->n_ex; i++) {
		cudaFree(c->ex[i].dev);
		free(c->ex[i].host);
	}
	free(c->ex);
	free(c->btmp);
	for (int i = 0; i < CU_SCR_N; i++)
		cudaFree(c->scratch[i]);
	cublasDestroy(c->blas);
	cudaStreamDestroy(c->st);
	free(c);
	free(be);
}

extern "C" struct eng_backend *eng_cuda_new(int device, struct sh_err *err)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess) {
		sh_errf(err, "cuda: %s", cudaGetErrorString(e));
		return NULL;
	}
	if (device < 0 || device >= n) {
		sh_errf(err, "cuda: no device %d (%d found)", device, n);
		return NULL;
	}
	if ((e = cudaSetDevice(device)) != cudaSuccess) {
		sh_errf(err, "cuda: device %d: %s", device, cudaGetErrorString(e));
		return NULL;
	}
	struct cu *c = (struct cu *)sh_calloc(1, sizeof(*c));
	c->device = device;
	CU_CHECK(cudaGetDeviceProperties(&c->prop, device));
	/* a blocking stream: work on the legacy default stream (a caller's events, copies) orders with it */
	CU_CHECK(cudaStreamCreate(&c->st));
	if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
		sh_errf(err, "cuda: cuBLAS did not start on device %d", device);
		cudaStreamDestroy(c->st);
		free(c);
		return NULL;
	}
	CUBLAS_CHECK(cublasSetStream(c->blas, c->st));
	/* fp32 GEMMs stay fp32 (no TF32): the F32 weights path is the exact one */
	CUBLAS_CHECK(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
	/* a fixed cuBLAS workspace: GEMMs recorded in a step must not allocate */
	CU_CHECK(cudaMalloc(&c->blas_ws, 32u << 20));
	CUBLAS_CHECK(cublasSetWorkspace(c->blas, c->blas_ws, 32u << 20));
	CU_CHECK(cudaMalloc((void **)&c->tick, CU_TICKS * sizeof(int)));
	CU_CHECK(cudaMemset(c->tick, 0, CU_TICKS * sizeof(int)));
	CU_CHECK(cudaEventCreateWithFlags(&c->step.copied, cudaEventDisableTiming));
	const char *ex = getenv("KVGATE_CUDA_EXACT");
	c->exact = ex && *ex == '1';
	/* PDL only where the kernels running were compiled for sm_90+ (their waits are compiled in:
	 * a binary JIT-compiled from older PTX has none, and overlapping its kernels would race) */
	cudaFuncAttributes fa;
	const char *pd = getenv("KVGATE_CUDA_PDL");
	c->pdl = c->prop.major >= 9 && !(pd && *pd == '0') && cudaFuncGetAttributes(&fa, pdl_probe_kernel) == cudaSuccess &&
		 fa.ptxVersion >= 90;
	const char *fu = getenv("KVGATE_CUDA_FUSE");
	c->fuse = !(fu && *fu == '0'); /* on since run 29 (at one token: KVGATE_CUDA_PN, _MOE_FN) */
	const char *d1 = getenv("KVGATE_CUDA_DOWN1");
	c->down1 = !(d1 && *d1 == '0');
	/* The prefetch hint (prefetch.cu): the bulk L2 prefetch is sm_90+; off until measured */
	const char *pf = getenv("KVGATE_CUDA_L2PF");
	long pfm = pf ? strtol(pf, NULL, 10) : 0;
	if (c->prop.major >= 9 && pfm > 0)
		c->l2pf = SH_MIN((size_t)SH_MIN(pfm, 4096L) << 20, (size_t)c->prop.l2CacheSize);
	const char *gr = getenv("KVGATE_CUDA_GRAPHS");
	c->step.disabled = gr && *gr == '0';

	struct eng_backend *be = (struct eng_backend *)sh_calloc(1, sizeof(*be));
	be->name = "cuda";
	be->impl = c;
	be->free = cu_free;
	be->alloc = cu_alloc;
	be->release = cu_release;
	be->to_dev = cu_to_dev;
	be->to_host = cu_to_host;
	be->embed = cu_embed;
	be->matmul = cu_matmul_op;
	be->rmsnorm = cu_rmsnorm;
	be->rope = cu_rope;
	be->silu_mul = cu_silu_mul;
	be->add = cu_add;
	be->copy2d = cu_copy2d;
	be->zero = cu_zero;
	be->kv_write = cu_kv_write;
	be->kv_gather = cu_kv_gather;
	be->attn_gqa = cu_attn_gqa;
	be->attn_mla = cu_attn_mla;
	be->attn_dense = cu_attn_dense;
	be->moe_route = cu_moe_route;
	be->moe_ffn = cu_moe_ffn;
	be->matmul_heads = cu_matmul_heads;
	be->matmul2 = cu_matmul2;
	be->add_rmsnorm = cu_add_rmsnorm;
	/* Version 4's fused decode ops (a layer's ~23 launches at batch 1 down to 8), on by default
	 * since run 29 with the norm and the MoE fused at one token only (KVGATE_CUDA_PN,
	 * KVGATE_CUDA_MOE_FN): faster than version 3 at batch 1, 8 and 32 in that run's quick bench;
	 * KVGATE_CUDA_FUSE=0 gives version 3 (bench/NOTES-cuda.md, sixth session). test_cuda_ops
	 * checks them against the CPU. */
	if (c->fuse) {
		be->glu = cu_glu;
		be->moe_router = cu_moe_router;
		be->moe_ffn_shared = cu_moe_ffn_shared;
		be->norm_matmul2 = cu_norm_matmul2;
		be->mla_prep = cu_mla_prep;
		const char *uv = getenv("KVGATE_CUDA_MLA_UV"); /* =0: the merge kernel and uv apart (A/B) */
		be->attn_mla_uv = uv && *uv == '0' ? NULL : cu_attn_mla_uv;
	}
	if (c->l2pf)
		be->prefetch = cu_prefetch;
	be->step_begin = cu_step_begin;
	be->step_end = cu_step_end;
	be->step_forget = cu_step_forget;
	return be;
}

extern "C" void eng_cuda_set_exact(struct eng_backend *be, int exact)
{
	CU(be)->exact = exact;
}

static size_t meminfo_kb(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	size_t v = 0, kl = strlen(key);
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl) && line[kl] == ':') {
			v = strtoull(line + kl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

extern "C" int eng_cuda_mem_info(struct eng_backend *be, size_t *free_b, size_t *total_b, int *unified,
				 struct sh_err *err)
{
	struct cu *c = CU(be);
	*unified = c->prop.integrated;
	if (c->prop.integrated) { /* Jetson: one memory; the driver's free figure is not what is free */
		size_t avail = meminfo_kb("MemAvailable"), total = meminfo_kb("MemTotal");
		if (!avail || !total)
			return sh_errf(err, "cuda: cannot read /proc/meminfo");
		*free_b = avail * 1024;
		*total_b = total * 1024;
		return SH_OK;
	}
	cudaError_t e = cudaMemGetInfo(free_b, total_b);
	if (e != cudaSuccess)
		return sh_errf(err, "cuda: %s", cudaGetErrorString(e));
	return SH_OK;
}

extern "C" void eng_cuda_describe(struct eng_backend *be, char *buf, size_t len)
{
	struct cu *c = CU(be);
	snprintf(buf, len, "%s (sm_%d%d, %d SMs, %.1f GiB%s, L2 %d MiB)", c->prop.name, c->prop.major, c->prop.minor,
		 c->prop.multiProcessorCount, c->prop.totalGlobalMem / 1073741824.0,
		 c->prop.integrated ? " unified" : "", c->prop.l2CacheSize >> 20);
}
