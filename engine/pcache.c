/* pcache.c: see pcache.h. A fixed table of entries (one per KV block at most), a chained hash
 * index and an LRU list threaded through the entries. */
#include "pcache.h"

#include <stdlib.h>
#include <string.h>

#include "sh.h"

static int bucket_of(const struct eng_pcache *c, uint64_t h)
{
	return (int)((h ^ (h >> 29)) % (uint64_t)c->n_buckets);
}

struct eng_pcache *eng_pcache_new(struct eng_kv *kv, int log_cap)
{
	struct eng_pcache *c = sh_calloc(1, sizeof(*c));
	int nb = kv->n_blocks;
	c->kv = kv;
	c->ents = sh_calloc((size_t)nb, sizeof(*c->ents));
	c->free_ents = sh_malloc(sizeof(int32_t) * (size_t)nb);
	for (int i = 0; i < nb; i++)
		c->free_ents[i] = nb - 1 - i;
	c->n_free_ents = nb;
	c->n_buckets = nb * 2 + 1;
	c->buckets = sh_malloc(sizeof(int32_t) * (size_t)c->n_buckets);
	memset(c->buckets, 0xff, sizeof(int32_t) * (size_t)c->n_buckets);
	c->lru_head = c->lru_tail = -1;
	pthread_mutex_init(&c->log_mu, NULL);
	c->log_cap = log_cap < 16 ? 16 : log_cap;
	c->log = sh_calloc((size_t)c->log_cap, sizeof(*c->log));
	c->live = sh_malloc(sizeof(uint64_t) * (size_t)nb);
	return c;
}

void eng_pcache_free(struct eng_pcache *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->log_mu);
	free(c->ents);
	free(c->free_ents);
	free(c->buckets);
	free(c->log);
	free(c->live);
	free(c);
}

static int find(const struct eng_pcache *c, uint64_t h)
{
	for (int e = c->buckets[bucket_of(c, h)]; e >= 0; e = c->ents[e].next)
		if (c->ents[e].hash == h)
			return e;
	return -1;
}

static void lru_unlink(struct eng_pcache *c, int e)
{
	struct eng_pcache_ent *x = &c->ents[e];
	if (x->lru_prev >= 0)
		c->ents[x->lru_prev].lru_next = x->lru_next;
	else
		c->lru_head = x->lru_next;
	if (x->lru_next >= 0)
		c->ents[x->lru_next].lru_prev = x->lru_prev;
	else
		c->lru_tail = x->lru_prev;
}

static void lru_push_head(struct eng_pcache *c, int e)
{
	struct eng_pcache_ent *x = &c->ents[e];
	x->lru_prev = -1;
	x->lru_next = c->lru_head;
	if (c->lru_head >= 0)
		c->ents[c->lru_head].lru_prev = e;
	c->lru_head = e;
	if (c->lru_tail < 0)
		c->lru_tail = e;
}

/* Appends an event and keeps the live snapshot in step (under log_mu). */
static void log_event(struct eng_pcache *c, uint64_t h, int added)
{
	pthread_mutex_lock(&c->log_mu);
	struct eng_pcache_ev *ev = &c->log[c->log_seq % (uint64_t)c->log_cap];
	ev->seq = ++c->log_seq;
	ev->hash = h;
	ev->added = added;
	if (added) {
		c->live[c->n_live++] = h;
	} else {
		for (int i = 0; i < c->n_live; i++)
			if (c->live[i] == h) {
				c->live[i] = c->live[--c->n_live];
				break;
			}
	}
	pthread_mutex_unlock(&c->log_mu);
}

int eng_pcache_lookup(struct eng_pcache *c, uint64_t hash)
{
	int e = find(c, hash);
	c->queries++;
	if (e < 0)
		return -1;
	c->hits++;
	lru_unlink(c, e);
	lru_push_head(c, e);
	return c->ents[e].block;
}

int eng_pcache_has(const struct eng_pcache *c, uint64_t hash)
{
	return find(c, hash) >= 0;
}

void eng_pcache_insert(struct eng_pcache *c, uint64_t hash, int32_t block)
{
	if (find(c, hash) >= 0 || !c->n_free_ents)
		return;
	int e = c->free_ents[--c->n_free_ents];
	struct eng_pcache_ent *x = &c->ents[e];
	int b = bucket_of(c, hash);
	x->hash = hash;
	x->block = block;
	x->next = c->buckets[b];
	c->buckets[b] = e;
	lru_push_head(c, e);
	c->kv->ref[block]++;
	c->n++;
	log_event(c, hash, 1);
}

int eng_pcache_evictable(const struct eng_pcache *c)
{
	int n = 0;
	for (int e = c->lru_head; e >= 0; e = c->ents[e].lru_next)
		n += c->kv->ref[c->ents[e].block] == 1;
	return n;
}

static void evict(struct eng_pcache *c, int e)
{
	struct eng_pcache_ent *x = &c->ents[e];
	int b = bucket_of(c, x->hash);
	int32_t *pp = &c->buckets[b];
	while (*pp != e)
		pp = &c->ents[*pp].next;
	*pp = x->next;
	lru_unlink(c, e);
	struct eng_kv *kv = c->kv;
	SH_BUG_ON(kv->ref[x->block] != 1);
	/* the cache's reference was the last one: the block goes back to the pool (as kv.c's unref) */
	kv->ref[x->block] = 0;
	kv->free_list[kv->n_free++] = x->block;
	c->free_ents[c->n_free_ents++] = e;
	c->n--;
	log_event(c, x->hash, 0);
}

int eng_pcache_make_free(struct eng_pcache *c, int want)
{
	int e = c->lru_tail;
	while (c->kv->n_free < want && e >= 0) {
		int prev = c->ents[e].lru_prev;
		if (c->kv->ref[c->ents[e].block] == 1)
			evict(c, e);
		e = prev;
	}
	return c->kv->n_free;
}

void eng_pcache_clear(struct eng_pcache *c)
{
	eng_pcache_make_free(c, c->kv->n_blocks + 1);
}

uint64_t eng_pcache_report(struct eng_pcache *c, uint64_t since, int *reset,
			   void (*fn)(void *ud, uint64_t hash, int added), void *ud)
{
	pthread_mutex_lock(&c->log_mu);
	uint64_t now = c->log_seq;
	uint64_t oldest = now > (uint64_t)c->log_cap ? now - (uint64_t)c->log_cap + 1 : 1;
	if (since > now || since + 1 < oldest) {
		*reset = 1;
		for (int i = 0; i < c->n_live; i++)
			fn(ud, c->live[i], 1);
	} else {
		*reset = 0;
		for (uint64_t s = since + 1; s <= now; s++) {
			const struct eng_pcache_ev *ev = &c->log[(s - 1) % (uint64_t)c->log_cap];
			fn(ud, ev->hash, ev->added);
		}
	}
	pthread_mutex_unlock(&c->log_mu);
	return now;
}
