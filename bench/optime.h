/* optime.h: a backend wrapper that times every op and counts the experts MoE calls touch
 * (bench/optime.c). */
#ifndef OPTIME_H
#define OPTIME_H

#include "engine/backend.h"

struct eng_backend *optime_wrap(struct eng_backend *in);
void optime_reset(struct eng_backend *be);
void optime_print(struct eng_backend *be, const char *title, int reps);
/* MoE calls since the reset (at most 256), and in *touched the routed experts each touched. */
int optime_experts(struct eng_backend *be, const int **touched);

#endif
