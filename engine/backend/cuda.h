/* cuda.h: the CUDA backend (backend/cuda/, one .cu file per op behind backend.cu's table).
 *
 * Same contract as backend.h: weights F32/BF16/F16, fp32 activations and accumulation, the paged KV
 * cache in device memory with the block layout of kv_layout.h (F32, BF16, FP8, INT8, FP8_TENSOR).
 * "auto" for --kv-cache-dtype is the model dtype here: pass ENG_KV_BF16 as eng_kv_fmt_parse's default.
 * Pointers handed to the ops are device memory (alloc/release/to_dev/to_host); ids, positions,
 * sequence indices and block tables stay host arrays and are uploaded when their contents change.
 * Every op is queued on the backend's one stream; to_host synchronises it.
 *
 * Built only when the Makefile finds nvcc; it then defines KV_HAVE_CUDA for the C side, so callers
 * write `#ifdef KV_HAVE_CUDA ... eng_cuda_new(...) ... #endif`. */
#ifndef ENG_CUDA_H
#define ENG_CUDA_H

#include <stddef.h>

#include "engine/backend.h"
#include "sh.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The backend on CUDA device `device` (0-based). NULL with err filled when there is no such device,
 * the driver is missing or older than the runtime, or cuBLAS cannot start. Free with be->free(be). */
struct eng_backend *eng_cuda_new(int device, struct sh_err *err);

/* exact = 1: every matmul through the fp32 GEMV kernel (no bf16 rounding of activations in cuBLAS)
 * and attention through the fp32 kernels (no bf16 tensor-core MLA): the CPU's numbers up to fp32
 * summation order. For tests and debugging; default 0 (fast). */
void eng_cuda_set_exact(struct eng_backend *be, int exact);

/* Recorded decode steps (CUDA graphs, backend.h step_begin): on by default; off with on = 0 or
 * KVGATE_CUDA_GRAPHS=0 in the environment (every step then runs its ops one by one). */
void eng_cuda_set_graphs(struct eng_backend *be, int on);
/* Steps replayed, steps recorded, steps run eagerly (a new shape) since the backend started. */
void eng_cuda_step_stats(struct eng_backend *be, long *replays, long *records, long *eager);

/* Device memory for sizing the KV cache: *free_b and *total_b in bytes. On unified-memory devices
 * (Jetson: integrated, cudaMemGetInfo misreports) free is /proc/meminfo's MemAvailable and total
 * MemTotal. *unified tells which. SH_OK, or SH_ERR with err filled. */
int eng_cuda_mem_info(struct eng_backend *be, size_t *free_b, size_t *total_b, int *unified, struct sh_err *err);

/* One line naming the device (name, compute capability, SMs, memory) into buf. */
void eng_cuda_describe(struct eng_backend *be, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
