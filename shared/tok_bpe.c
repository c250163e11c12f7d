/* tok_bpe.c: the BPE model over one pre-tokenized word, as the Rust `tokenizers` crate runs it:
 * symbols start as characters (bytes for a byte-level vocabulary), then the adjacent pair with the
 * lowest merge rank is merged, leftmost first, until no pair has a merge. Short words scan a rank
 * array (cheaper than a heap below ~100 symbols); long ones (runs of spaces, minified code) use a
 * binary heap, so a word costs O(n log n). Results of short words go to a direct-mapped cache. */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

#define HEAP_FROM 96   /* symbols from which the heap beats scanning */

void tok_work_release(struct tok_work *w)
{
	free(w->sym);
	free(w->rank);
	free(w->heap);
	memset(w, 0, sizeof(*w));
}

static void work_reserve(struct tok_work *w, size_t n)
{
	if (n > w->sym_cap) {
		size_t c = w->sym_cap ? w->sym_cap : 64;
		while (c < n)
			c *= 2;
		w->sym = sh_realloc(w->sym, c * sizeof(*w->sym));
		w->rank = sh_realloc(w->rank, c * sizeof(*w->rank));
		w->sym_cap = c;
	}
}

static void sym_add(struct tok_work *w, size_t *n, int32_t id, uint32_t len)
{
	struct tok_sym *s = &w->sym[*n];
	s->id = id;
	s->len = len;
	s->prev = (int32_t)*n - 1;
	s->next = -1;
	if (*n)
		w->sym[*n - 1].next = (int32_t)*n;
	(*n)++;
}

/* Initial symbols of the word; returns their count. */
static size_t word_symbols(const struct sh_tok *tok, struct tok_work *w, const char *s, size_t len)
{
	size_t n = 0, i = 0;
	int32_t unk = -1;
	uint32_t unk_len = 0;

	work_reserve(w, len + 1);
	if (tok->bytelevel) {
		for (i = 0; i < len; i++) {
			int32_t id = tok->byte_id[(unsigned char)s[i]];
			if (id >= 0)
				sym_add(w, &n, id, 1);
			else if (tok->unk_id >= 0)
				sym_add(w, &n, tok->unk_id, 1);
		}
		return n;
	}
	while (i < len) {
		int l = tok_utf8_len((const unsigned char *)s + i, len - i);
		int32_t id;
		if (!l)
			l = 1;
		id = tok_map_get(&tok->vocab, tok->bytes, tok->bytes_len, s + i, (size_t)l);
		if (id >= 0) {
			if (unk >= 0) {
				sym_add(w, &n, unk, unk_len);
				unk = -1;
			}
			sym_add(w, &n, id, (uint32_t)l);
		} else {
			int fb = tok->byte_fallback;
			for (int k = 0; fb && k < l; k++)
				if (tok->fallback_id[(unsigned char)s[i + k]] < 0)
					fb = 0;
			if (fb) {
				for (int k = 0; k < l; k++)
					sym_add(w, &n, tok->fallback_id[(unsigned char)s[i + k]], 1);
			} else if (tok->unk_id >= 0) {
				if (unk >= 0 && tok->fuse_unk) {
					unk_len += (uint32_t)l;
				} else {
					if (unk >= 0)
						sym_add(w, &n, unk, unk_len);
					unk = tok->unk_id;
					unk_len = (uint32_t)l;
				}
			}
		}
		i += (size_t)l;
	}
	if (unk >= 0)
		sym_add(w, &n, unk, unk_len);
	return n;
}

static inline uint32_t pair_rank(const struct sh_tok *tok, const struct tok_sym *sym, int32_t i,
				 int32_t *new_id)
{
	uint32_t r;
	if (i < 0 || sym[i].next < 0)
		return UINT32_MAX;
	if (!tok_merges_get(&tok->merges, sym[i].id, sym[sym[i].next].id, &r, new_id))
		return UINT32_MAX;
	return r;
}

static void merge_at(struct tok_sym *sym, int32_t i, int32_t new_id)
{
	int32_t j = sym[i].next;
	sym[i].id = new_id;
	sym[i].len += sym[j].len;
	sym[j].len = 0;
	sym[i].next = sym[j].next;
	if (sym[j].next >= 0)
		sym[sym[j].next].prev = i;
}

static void merge_scan(const struct sh_tok *tok, struct tok_work *w, size_t n)
{
	struct tok_sym *sym = w->sym;
	uint32_t *rank = w->rank;
	int32_t nid;

	for (size_t i = 0; i < n; i++)
		rank[i] = pair_rank(tok, sym, (int32_t)i, &nid);
	for (;;) {
		uint32_t best = UINT32_MAX;
		int32_t bi = -1;
		for (int32_t i = 0; i >= 0; i = sym[i].next)
			if (rank[i] < best) {
				best = rank[i];
				bi = i;
			}
		if (bi < 0)
			break;
		pair_rank(tok, sym, bi, &nid);
		rank[sym[bi].next] = UINT32_MAX;
		merge_at(sym, bi, nid);
		rank[bi] = pair_rank(tok, sym, bi, &nid);
		if (sym[bi].prev >= 0)
			rank[sym[bi].prev] = pair_rank(tok, sym, sym[bi].prev, &nid);
	}
}

/* Min-heap of rank << 32 | position: the lowest rank first, then the leftmost. */
static void heap_push(struct tok_work *w, size_t *hn, uint64_t v)
{
	size_t i = (*hn)++;
	if (*hn > w->heap_cap) {
		w->heap_cap = w->heap_cap ? w->heap_cap * 2 : 256;
		w->heap = sh_realloc(w->heap, w->heap_cap * sizeof(*w->heap));
	}
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (w->heap[p] <= v)
			break;
		w->heap[i] = w->heap[p];
		i = p;
	}
	w->heap[i] = v;
}

static uint64_t heap_pop(struct tok_work *w, size_t *hn)
{
	uint64_t top = w->heap[0], v = w->heap[--(*hn)];
	size_t i = 0, n = *hn;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && w->heap[c + 1] < w->heap[c])
			c++;
		if (w->heap[c] >= v)
			break;
		w->heap[i] = w->heap[c];
		i = c;
	}
	if (n)
		w->heap[i] = v;
	return top;
}

static void merge_heap(const struct sh_tok *tok, struct tok_work *w, size_t n)
{
	struct tok_sym *sym = w->sym;
	size_t hn = 0;
	int32_t nid;
	uint32_t r;

	for (size_t i = 0; i + 1 < n; i++)
		if ((r = pair_rank(tok, sym, (int32_t)i, &nid)) != UINT32_MAX)
			heap_push(w, &hn, (uint64_t)r << 32 | i);
	while (hn) {
		uint64_t top = heap_pop(w, &hn);
		int32_t i = (int32_t)(uint32_t)top;
		if (!sym[i].len || sym[i].next < 0)
			continue;
		if (pair_rank(tok, sym, i, &nid) != (uint32_t)(top >> 32))
			continue;   /* the pair changed since this entry was pushed */
		merge_at(sym, i, nid);
		if ((r = pair_rank(tok, sym, i, &nid)) != UINT32_MAX)
			heap_push(w, &hn, (uint64_t)r << 32 | (uint32_t)i);
		if (sym[i].prev >= 0 && (r = pair_rank(tok, sym, sym[i].prev, &nid)) != UINT32_MAX)
			heap_push(w, &hn, (uint64_t)r << 32 | (uint32_t)sym[i].prev);
	}
}

void tok_bpe_word(struct sh_tok *tok, struct tok_work *w, const char *s, size_t len,
		  struct sh_tok_ids *out)
{
	uint64_t h = 0;
	size_t n;
	struct tok_cache_slot *slot = NULL;

	if (!len)
		return;
	if (tok->ignore_merges) {
		int32_t id = tok_map_get(&tok->vocab, tok->bytes, tok->bytes_len, s, len);
		if (id >= 0) {
			sh_tok_ids_push(out, id);
			return;
		}
	}
	if (len <= sizeof(slot->w)) {
		h = tok_hash(s, len);
		slot = &tok->cache[h & (TOK_CACHE_SLOTS - 1)];
		if (!pthread_mutex_trylock(&tok->cache_lock)) {
			int hit = slot->h == h && slot->wlen == len && !memcmp(slot->w, s, len);
			if (hit)
				for (uint16_t i = 0; i < slot->nid; i++)
					sh_tok_ids_push(out, slot->ids[i]);
			pthread_mutex_unlock(&tok->cache_lock);
			if (hit)
				return;
		}
	}
	n = word_symbols(tok, w, s, len);
	if (!n)
		return;
	if (n < HEAP_FROM)
		merge_scan(tok, w, n);
	else
		merge_heap(tok, w, n);
	{
		size_t first = out->n;
		for (int32_t i = 0; i >= 0; i = w->sym[i].next)
			sh_tok_ids_push(out, w->sym[i].id);
		if (slot && out->n - first <= SH_ARRAY_LEN(slot->ids) &&
		    !pthread_mutex_trylock(&tok->cache_lock)) {
			slot->h = h;
			slot->wlen = (uint16_t)len;
			slot->nid = (uint16_t)(out->n - first);
			memcpy(slot->w, s, len);
			memcpy(slot->ids, out->ids + first, slot->nid * sizeof(int32_t));
			pthread_mutex_unlock(&tok->cache_lock);
		}
	}
}
