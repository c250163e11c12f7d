/* pool.h: a fixed pthread pool that runs one parallel loop at a time. The calling thread takes part;
 * eng_pool_run returns when every item is done. Not reentrant: a task must not call eng_pool_run. */
#ifndef ENG_POOL_H
#define ENG_POOL_H

/* fn(ctx, begin, end, worker): items [begin, end); worker in [0, eng_pool_size) for per-thread scratch. */
typedef void (*eng_pool_fn)(void *ctx, int begin, int end, int worker);

struct eng_pool;

/* n_threads <= 0: the number of online CPUs. */
struct eng_pool *eng_pool_new(int n_threads);
void eng_pool_free(struct eng_pool *p);
int eng_pool_size(const struct eng_pool *p);
/* Runs fn over n items in chunks of at least grain items. */
void eng_pool_run(struct eng_pool *p, int n, int grain, eng_pool_fn fn, void *ctx);

#endif
