/* pcache.h: the prefix cache. Full KV blocks keyed by their DESIGN.md contract-1 hash (the hash of
 * the block's tokens chained on the previous block's hash, seeded with the model name), so the
 * proxy's routing index and this cache speak one language.
 *
 * The cache holds one reference on each block it knows. A cached block that no sequence uses
 * (reference count 1: only the cache) is evictable; eviction takes the least recently used such
 * block and returns it to the pool. Every insertion and eviction is logged with a sequence number
 * for the routing-state report (DESIGN.md contract 2); the log is a bounded ring, and a reader
 * whose `since` fell off the ring is told to reset and given the whole current set.
 *
 * Threading: everything but eng_pcache_report runs on the scheduler thread; the report may be
 * called from any thread (the log has its own lock). */
#ifndef ENG_PCACHE_H
#define ENG_PCACHE_H

#include <pthread.h>
#include <stdint.h>

#include "kv.h"

struct eng_pcache_ent {
	uint64_t hash;
	int32_t block;
	int32_t lru_prev, lru_next;     /* entry indices, -1 at the ends; head = most recent */
	int32_t next;                   /* hash chain */
};

struct eng_pcache_ev {
	uint64_t seq;
	uint64_t hash;
	int added;                      /* 1 added, 0 evicted */
};

struct eng_pcache {
	struct eng_kv *kv;
	struct eng_pcache_ent *ents;    /* (kv->n_blocks) */
	int32_t *free_ents;
	int n_free_ents;
	int32_t *buckets;               /* (n_buckets), -1 empty */
	int n_buckets;
	int32_t lru_head, lru_tail;
	int n;                          /* cached blocks */
	uint64_t queries, hits;         /* blocks looked up / found (tokens = blocks * block size) */
	/* routing log */
	pthread_mutex_t log_mu;
	struct eng_pcache_ev *log;      /* ring of log_cap */
	int log_cap;
	uint64_t log_seq;               /* number of the last event; events are 1.. */
	uint64_t *live;                 /* snapshot of the cached hashes (under log_mu), for resets */
	int n_live;
};

/* log_cap: events kept for the report (>= 16). */
struct eng_pcache *eng_pcache_new(struct eng_kv *kv, int log_cap);
void eng_pcache_free(struct eng_pcache *c);

/* The block cached under hash, or -1. Marks it most recently used. Counts a query (and a hit). */
int eng_pcache_lookup(struct eng_pcache *c, uint64_t hash);
/* Whether hash is cached (no counting, no LRU change). */
int eng_pcache_has(const struct eng_pcache *c, uint64_t hash);
/* Caches block under hash (the cache takes a reference). No-op when hash is already cached. */
void eng_pcache_insert(struct eng_pcache *c, uint64_t hash, int32_t block);
/* Cached blocks that nobody else uses (what eviction can free). */
int eng_pcache_evictable(const struct eng_pcache *c);
/* Evicts least recently used unreferenced blocks until kv->n_free >= want or none is left.
 * Returns kv->n_free. */
int eng_pcache_make_free(struct eng_pcache *c, int want);
/* Drops every unreferenced cached block. */
void eng_pcache_clear(struct eng_pcache *c);

/* The routing report since sequence number `since`: the callback gets every hash added or
 * evicted after it, in order; *reset is 1 when `since` is older than the log keeps (then only the
 * currently cached hashes are given, as added). Returns the current sequence number. */
uint64_t eng_pcache_report(struct eng_pcache *c, uint64_t since, int *reset,
			   void (*fn)(void *ud, uint64_t hash, int added), void *ud);

#endif
