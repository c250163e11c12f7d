/* pindex.h: a per-instance index of prefix-block hashes (DESIGN.md contract 1) that the instance
 * likely holds in its KV cache: a fixed-capacity hash set with LRU eviction. Approximate when fed
 * with what kvgate routed there; exact when fed with the engine's own reports (contract 2). */
#ifndef PX_PINDEX_H
#define PX_PINDEX_H

#include <stddef.h>
#include <stdint.h>

struct px_pindex;

/* cap: blocks kept (at least 16). */
struct px_pindex *px_pindex_new(size_t cap);
void px_pindex_free(struct px_pindex *ix);

/* How many of hashes[0..n) are held, counting from the first and stopping at the first miss (the
 * hashes chain, so a held block implies its prefix was computed; a gap ends the usable prefix). */
size_t px_pindex_match(const struct px_pindex *ix, const uint64_t *hashes, size_t n);

/* Insert hashes[0..n) (or mark them most recently used), hashes[0] the most recent of all. */
void px_pindex_add(struct px_pindex *ix, const uint64_t *hashes, size_t n);

/* Forget one hash (the engine evicted it). */
void px_pindex_remove(struct px_pindex *ix, uint64_t h);

size_t px_pindex_len(const struct px_pindex *ix);

/* Forget everything. */
void px_pindex_clear(struct px_pindex *ix);

#endif
