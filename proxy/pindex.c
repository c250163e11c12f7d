/* pindex.c: block-hash set with LRU eviction (see pindex.h). Entries live in one array; the hash
 * table holds entry indices with linear probing (load <= 1/2) and backward-shift deletion; the LRU
 * list links entries by index. No allocation after _new. */
#include "pindex.h"

#include <stdlib.h>
#include <string.h>

#include "sh.h"

#define NIL UINT32_MAX

struct entry {
	uint64_t h;
	uint32_t prev, next;            /* LRU: head is the most recent */
};

struct px_pindex {
	struct entry *e;
	size_t cap, len;
	uint32_t *slot;                 /* table of entry indices, NIL = empty */
	size_t mask;
	uint32_t head, tail, free_top;  /* free entries are chained through next */
};

static size_t bucket(const struct px_pindex *ix, uint64_t h)
{
	/* hashes are already XXH3 output: the low bits are uniform */
	return (size_t)(h ^ (h >> 29)) & ix->mask;
}

void px_pindex_clear(struct px_pindex *ix)
{
	size_t i;

	memset(ix->slot, 0xff, (ix->mask + 1) * sizeof(*ix->slot));
	ix->head = ix->tail = NIL;
	for (i = 0; i < ix->cap; i++)
		ix->e[i].next = i + 1 < ix->cap ? (uint32_t)(i + 1) : NIL;
	ix->free_top = 0;
	ix->len = 0;
}

struct px_pindex *px_pindex_new(size_t cap)
{
	struct px_pindex *ix = sh_calloc(1, sizeof(*ix));
	size_t n = 32;

	if (cap < 16)
		cap = 16;
	while (n < cap * 2)
		n *= 2;
	ix->cap = cap;
	ix->e = sh_malloc(cap * sizeof(*ix->e));
	ix->slot = sh_malloc(n * sizeof(*ix->slot));
	ix->mask = n - 1;
	px_pindex_clear(ix);
	return ix;
}

void px_pindex_free(struct px_pindex *ix)
{
	if (!ix)
		return;
	free(ix->e);
	free(ix->slot);
	free(ix);
}

size_t px_pindex_len(const struct px_pindex *ix)
{
	return ix->len;
}

/* The table slot holding h, or the empty slot where it would go. */
static size_t find(const struct px_pindex *ix, uint64_t h)
{
	size_t i = bucket(ix, h);

	while (ix->slot[i] != NIL && ix->e[ix->slot[i]].h != h)
		i = (i + 1) & ix->mask;
	return i;
}

static void lru_unlink(struct px_pindex *ix, uint32_t k)
{
	struct entry *x = &ix->e[k];

	if (x->prev != NIL)
		ix->e[x->prev].next = x->next;
	else
		ix->head = x->next;
	if (x->next != NIL)
		ix->e[x->next].prev = x->prev;
	else
		ix->tail = x->prev;
}

static void lru_push(struct px_pindex *ix, uint32_t k)
{
	ix->e[k].prev = NIL;
	ix->e[k].next = ix->head;
	if (ix->head != NIL)
		ix->e[ix->head].prev = k;
	ix->head = k;
	if (ix->tail == NIL)
		ix->tail = k;
}

/* Empty slot i, shifting later members of its probe run back so lookups stay correct. */
static void table_delete(struct px_pindex *ix, size_t i)
{
	size_t j = i, want;

	for (;;) {
		ix->slot[i] = NIL;
		for (;;) {
			j = (j + 1) & ix->mask;
			if (ix->slot[j] == NIL)
				return;
			want = bucket(ix, ix->e[ix->slot[j]].h);
			/* j's entry may move to i if its home is not cyclically in (i, j] */
			if (i <= j ? (want <= i || want > j) : (want <= i && want > j))
				break;
		}
		ix->slot[i] = ix->slot[j];
		i = j;
	}
}

static void drop(struct px_pindex *ix, uint32_t k)
{
	table_delete(ix, find(ix, ix->e[k].h));
	lru_unlink(ix, k);
	ix->e[k].next = ix->free_top;
	ix->free_top = k;
	ix->len--;
}

size_t px_pindex_match(const struct px_pindex *ix, const uint64_t *hashes, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (ix->slot[find(ix, hashes[i])] == NIL)
			break;
	return i;
}

void px_pindex_add(struct px_pindex *ix, const uint64_t *hashes, size_t n)
{
	size_t i, s;
	uint32_t k;

	/* Last block first, so that a prompt's first blocks end up the most recent: like an engine
	 * that evicts leaves first, the shared prefix outlives the tails that hang off it. */
	for (i = n; i-- > 0;) {
		s = find(ix, hashes[i]);
		if (ix->slot[s] != NIL) {
			k = ix->slot[s];
			lru_unlink(ix, k);
			lru_push(ix, k);
			continue;
		}
		if (ix->len == ix->cap) {
			drop(ix, ix->tail);
			s = find(ix, hashes[i]);  /* the deletion may have moved the run */
		}
		k = ix->free_top;
		ix->free_top = ix->e[k].next;
		ix->e[k].h = hashes[i];
		lru_push(ix, k);
		ix->slot[s] = k;
		ix->len++;
	}
}

void px_pindex_remove(struct px_pindex *ix, uint64_t h)
{
	size_t s = find(ix, h);

	if (ix->slot[s] != NIL)
		drop(ix, ix->slot[s]);
}
