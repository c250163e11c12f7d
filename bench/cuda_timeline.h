/* cuda_timeline.h: a decode step's kernels as they really run (graphs, PDL), from CUPTI's kernel
 * records (bench/cuda_timeline.c). */
#ifndef CUDA_TIMELINE_H
#define CUDA_TIMELINE_H

#include "sh.h"

#define TL_MAX_STEPS 16

/* Starts recording kernels (SH_ERR with err when CUPTI refuses). */
int tl_start(struct sh_err *err);
/* A step's start, then its end (after waiting for it): call twice a step, at most TL_MAX_STEPS. */
void tl_mark(void);
/* Stops recording and prints the table of the marked steps: kernels by what they add to the step. */
int tl_print(const char *title, struct sh_err *err);

#endif
