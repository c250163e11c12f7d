/* prefix.h: prefix-block hashes, DESIGN.md contract 1. The proxy and the engine hash a prompt's
 * token ids (after the chat template) the same way, so that the engine's prefix cache and the
 * proxy's routing index are keyed alike:
 *   split the ids into full blocks of B tokens (a partial last block has no hash);
 *   h[0] = XXH3_64(block 0, seed = XXH3_64(model name)), h[i] = XXH3_64(block i, seed = h[i-1]);
 *   each token hashed as a little-endian 32-bit integer. */
#ifndef SH_PREFIX_H
#define SH_PREFIX_H

#include <stddef.h>
#include <stdint.h>

#define SH_PREFIX_BLOCK_DEFAULT 16

/* The seed of block 0: XXH3_64 of the model name's bytes (without the NUL). */
uint64_t sh_prefix_seed(const char *model, size_t len);

/* The hash of one block of `block` ids chained on seed (the model seed, or the previous hash). */
uint64_t sh_prefix_block(uint64_t seed, const int32_t *ids, size_t block);

/* Hashes every full block of ids[0..n): writes n / block hashes to out (room for that many) and
 * returns their number. block must be > 0. */
size_t sh_prefix_hashes(uint64_t seed, const int32_t *ids, size_t n, size_t block, uint64_t *out);

#endif
