/* prefix.c: prefix-block hashes (see prefix.h, DESIGN.md contract 1). */
#include "prefix.h"

#include <string.h>
#include <xxhash.h>

uint64_t sh_prefix_seed(const char *model, size_t len)
{
	return XXH3_64bits(model, len);
}

uint64_t sh_prefix_block(uint64_t seed, const int32_t *ids, size_t block)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	/* the ids already are little-endian 32-bit integers in memory */
	return XXH3_64bits_withSeed(ids, block * sizeof(int32_t), seed);
#else
	XXH3_state_t *st = XXH3_createState();
	uint8_t le[4 * 256];
	uint64_t h;
	size_t i = 0;

	XXH3_64bits_reset_withSeed(st, seed);
	while (i < block) {
		size_t k, n = block - i < 256 ? block - i : 256;
		for (k = 0; k < n; k++) {
			uint32_t v = (uint32_t)ids[i + k];
			le[4 * k] = (uint8_t)v;
			le[4 * k + 1] = (uint8_t)(v >> 8);
			le[4 * k + 2] = (uint8_t)(v >> 16);
			le[4 * k + 3] = (uint8_t)(v >> 24);
		}
		XXH3_64bits_update(st, le, 4 * n);
		i += n;
	}
	h = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return h;
#endif
}

size_t sh_prefix_hashes(uint64_t seed, const int32_t *ids, size_t n, size_t block, uint64_t *out)
{
	size_t nb = block ? n / block : 0;
	for (size_t i = 0; i < nb; i++) {
		seed = sh_prefix_block(seed, ids + i * block, block);
		out[i] = seed;
	}
	return nb;
}
