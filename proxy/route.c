/* route.c: cache-aware choice of instance (see route.h). */
#include "route.h"

#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "pindex.h"
#include "pxmetrics.h"
#include "upstream.h"

void px_route_init(struct px_server *srv)
{
	char labels[200];
	size_t i, j;

	for (i = 0; i < srv->n_pools; i++) {
		struct px_pool *p = &srv->pools[i];
		for (j = 0; j < p->n_ups; j++)
			p->ups[j].index = px_pindex_new((size_t)srv->conf.route_index_blocks);
		snprintf(labels, sizeof(labels), "pool=\"%.100s\",cause=\"prefix\"", p->name);
		p->m_prefix = sh_series_get(srv->met.route_decisions, labels);
		snprintf(labels, sizeof(labels), "pool=\"%.100s\",cause=\"load\"", p->name);
		p->m_load = sh_series_get(srv->met.route_decisions, labels);
		snprintf(labels, sizeof(labels), "pool=\"%.100s\",cause=\"miss\"", p->name);
		p->m_miss = sh_series_get(srv->met.route_decisions, labels);
		if (strcmp(srv->conf.route_policy, "cache_aware") != 0) {
			snprintf(labels, sizeof(labels), "pool=\"%.100s\",cause=\"%s\"", p->name,
				 srv->conf.route_policy);
			p->m_rr = sh_series_get(srv->met.route_decisions, labels);
		}
	}
}

void px_route_release(struct px_server *srv)
{
	size_t i, j;

	for (i = 0; i < srv->n_pools; i++)
		for (j = 0; j < srv->pools[i].n_ups; j++) {
			px_pindex_free(srv->pools[i].ups[j].index);
			srv->pools[i].ups[j].index = NULL;
		}
}

/* The session hint's preferred instance, or -1. */
static long hinted(const struct px_req *r, size_t n)
{
	static const char *const names[] = { "x-session-affinity", "x-session-id", "session-id" };
	const char *v;
	size_t i, len;

	for (i = 0; i < SH_ARRAY_LEN(names); i++) {
		v = sh_http_header(r->msg, names[i], &len);
		if (v && len)
			return (long)(XXH3_64bits(v, len) % n);
	}
	return -1;
}

/* a better than b on load: fewer outstanding tokens, then fewer requests; hint breaks the tie */
static int lighter(const struct px_upstream *a, const struct px_upstream *b, const struct px_upstream *hint)
{
	if (a->outstanding != b->outstanding)
		return a->outstanding < b->outstanding;
	if (a->in_flight != b->in_flight)
		return a->in_flight < b->in_flight;
	return a == hint;
}

int px_route_stage(struct px_req *r)
{
	struct px_server *srv = r->conn->srv;
	struct px_conf *cf = &srv->conf;
	struct px_pool *p = r->pool;
	struct px_upstream *usable[256], *least = NULL, *cached = NULL, *hint = NULL;
	size_t nu = 0, i, m, best_match = 0;
	int64_t now = sh_now_us();
	int lo = 0, hi = 0;
	long h;

	if (!p || p->n_ups < 2)
		return PX_NEXT;  /* nothing to choose: forward picks the one (and retries) */
	/* start the scan at a rotating offset, so that ties (idle instances, misses) go round-robin */
	for (i = 0; i < p->n_ups && nu < SH_ARRAY_LEN(usable); i++) {
		struct px_upstream *u = &p->ups[(p->rr + i) % p->n_ups];
		if (!u->draining && (u->healthy || now >= u->retry_at_us))
			usable[nu++] = u;
	}
	p->rr++;
	if (nu < 2)
		return PX_NEXT;
	h = hinted(r, p->n_ups);
	hint = h >= 0 ? &p->ups[h] : NULL;
	for (i = 0; i < nu; i++) {
		struct px_upstream *u = usable[i];
		if (i == 0 || u->in_flight < lo)
			lo = u->in_flight;
		if (i == 0 || u->in_flight > hi)
			hi = u->in_flight;
		if (!least || lighter(u, least, hint))
			least = u;
		if (r->nhashes) {
			m = px_pindex_match(u->index, r->hashes, r->nhashes);
			if (m > best_match || (m == best_match && m && cached && lighter(u, cached, hint))) {
				best_match = m;
				cached = u;
			}
		}
	}
	if (r->nhashes)
		sh_series_add(srv->met.blocks_requested, (double)r->nhashes);
	if (p->m_rr) {
		/* the policies to compare against: no use of the index at all */
		r->route_up = strcmp(cf->route_policy, "round_robin") == 0 ? usable[0] : least;
		sh_series_add(p->m_rr, 1);
	} else if (hi - lo > cf->route_balance_abs && (int64_t)hi * 100 > (int64_t)lo * cf->route_balance_rel_pct) {
		r->route_up = least;
		sh_series_add(p->m_load, 1);
	} else if (cached && best_match * 100 >= r->nhashes * (size_t)cf->route_cache_threshold_pct) {
		r->route_up = cached;
		sh_series_add(p->m_prefix, 1);
		sh_series_add(srv->met.blocks_matched, (double)best_match);
	} else {
		r->route_up = least;
		sh_series_add(p->m_miss, 1);
	}
	/* What we send there is what it will hold (until its own reports say otherwise). */
	if (r->nhashes)
		px_pindex_add(r->route_up->index, r->hashes, r->nhashes);
	return PX_NEXT;
}
