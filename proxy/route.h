/* route.h: the route stage: which instance of the chosen pool. The prompt's prefix-block hashes
 * are matched against each instance's index of blocks it likely holds (proxy/pindex.c); the
 * instance with the longest cached prefix wins unless load is imbalanced (SGLang's rule: max - min
 * requests in flight above route_balance_abs and max above min * route_balance_rel_pct / 100:
 * then the least loaded), and only if it holds at least route_cache_threshold_pct of the prompt's
 * blocks. Misses and ties go to the least outstanding tokens; a session hint (x-session-affinity,
 * x-session-id, session-id) breaks ties. Each decision is counted in
 * kvgate_route_decisions_total{pool,cause="prefix"|"load"|"miss"}. route_policy least_loaded or
 * round_robin ignore the index (cause= the policy): the baselines bench/routing.sh compares with. */
#ifndef PX_ROUTE_H
#define PX_ROUTE_H

#include "px.h"

int px_route_stage(struct px_req *r);

/* Per-instance indexes and metric series (at start). */
void px_route_init(struct px_server *srv);
void px_route_release(struct px_server *srv);

#endif
