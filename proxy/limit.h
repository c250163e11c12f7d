/* limit.h: per-user limits: request and token rates (token buckets refilled continuously, burst
 * up to one minute's worth) and concurrency slots, with an optional bounded wait queue. A slot is
 * released by a cleanup hook on the request, so every ending (done, failed, client gone, timed
 * out in the queue) gives it back. */
#ifndef PX_LIMIT_H
#define PX_LIMIT_H

#include "px.h"

/* The limit stage: rates, then a concurrency slot (or a place in the queue: PX_AGAIN). */
int px_limit_stage(struct px_req *r);

/* Tokens of an admitted request against the user's tokens_per_minute (called by the count stage
 * once the prompt is counted). Returns PX_NEXT or 429 with r->err_* set. */
int px_limit_tokens(struct px_req *r, int64_t tokens);

#endif
