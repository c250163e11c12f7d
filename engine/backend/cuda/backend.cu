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
		if (c->scratch[slot])
			CU_CHECK(cudaFree(c->scratch[slot])); /* synchronises: queued users of the old one are done */
		c->scratch_bytes[slot] = bytes + bytes / 4 + (1 << 20);
		CU_CHECK(cudaMalloc(&c->scratch[slot], c->scratch_bytes[slot]));
	}
	return c->scratch[slot];
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
	(void)be;
	if (p)
		CU_CHECK(cudaFree(p));
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

static void cu_copy2d(struct eng_backend *be, void *dst, size_t dpitch, const void *src, size_t spitch,
		      size_t width, size_t rows)
{
	if (width && rows)
		CU_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice, CU(be)->st));
}

static void cu_zero(struct eng_backend *be, void *p, size_t n)
{
	if (n)
		CU_CHECK(cudaMemsetAsync(p, 0, n, CU(be)->st));
}

/* ---- lifecycle ---- */

static void cu_free(struct eng_backend *be)
{
	if (!be)
		return;
	struct cu *c = CU(be);
	cudaStreamSynchronize(c->st);
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
	const char *ex = getenv("KVGATE_CUDA_EXACT");
	c->exact = ex && *ex == '1';

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
