/* pool.c: thread pool (see pool.h). Workers sleep on a condition variable between loops; items are
 * handed out in chunks through an atomic counter so that uneven work balances. */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "sh.h"

struct eng_pool {
	int n;                 /* threads, caller included */
	pthread_t *tid;
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	unsigned long gen;     /* bumped per loop */
	int busy;              /* workers still inside the current loop */
	int quit;
	/* the current loop */
	eng_pool_fn fn;
	void *ctx;
	int items, chunk;
	atomic_int next;
};

struct worker_arg { struct eng_pool *p; int id; };

static void run_chunks(struct eng_pool *p, int id)
{
	for (;;) {
		int b = atomic_fetch_add(&p->next, p->chunk);
		if (b >= p->items)
			break;
		int e = b + p->chunk < p->items ? b + p->chunk : p->items;
		p->fn(p->ctx, b, e, id);
	}
}

static void *worker(void *arg)
{
	struct worker_arg *wa = arg;
	struct eng_pool *p = wa->p;
	int id = wa->id;
	unsigned long seen = 0;
	free(wa);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (p->gen == seen && !p->quit)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->quit)
			break;
		seen = p->gen;
		pthread_mutex_unlock(&p->mu);
		run_chunks(p, id);
		pthread_mutex_lock(&p->mu);
		if (--p->busy == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

struct eng_pool *eng_pool_new(int n)
{
	struct eng_pool *p = sh_calloc(1, sizeof(*p));
	if (n <= 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		n = c > 0 ? (int)c : 1;
	}
	if (n > 256)
		n = 256;
	p->n = n;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	p->tid = sh_calloc((size_t)n, sizeof(pthread_t));
	for (int i = 1; i < n; i++) {
		struct worker_arg *wa = sh_malloc(sizeof(*wa));
		wa->p = p;
		wa->id = i;
		if (pthread_create(&p->tid[i], NULL, worker, wa)) {
			free(wa);
			p->n = i; /* fewer threads; still correct */
			break;
		}
	}
	return p;
}

void eng_pool_free(struct eng_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->quit = 1;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (int i = 1; i < p->n; i++)
		pthread_join(p->tid[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	free(p->tid);
	free(p);
}

int eng_pool_size(const struct eng_pool *p)
{
	return p->n;
}

void eng_pool_run(struct eng_pool *p, int n, int grain, eng_pool_fn fn, void *ctx)
{
	if (n <= 0)
		return;
	if (grain < 1)
		grain = 1;
	int chunk = (n + p->n * 4 - 1) / (p->n * 4);
	if (chunk < grain)
		chunk = grain;
	if (p->n == 1 || chunk >= n) {
		fn(ctx, 0, n, 0);
		return;
	}
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->ctx = ctx;
	p->items = n;
	p->chunk = chunk;
	atomic_store(&p->next, 0);
	p->busy = p->n - 1;
	p->gen++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	run_chunks(p, 0);
	pthread_mutex_lock(&p->mu);
	while (p->busy)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}
