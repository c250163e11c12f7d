/* workers.h: a few threads for work too long for the event loop (counting a long prompt's tokens:
 * ~5 MB/s, so a 400 KB agent context would stall every stream for 80 ms). A job's run() goes on a
 * worker; its done() then runs on the loop thread, which wakes through an eventfd. run() may only
 * touch what the job owns and thread-safe shared state (the tokenizers); done() is where the loop's
 * state is touched again. */
#ifndef PX_WORKERS_H
#define PX_WORKERS_H

#include <event2/event.h>
#include <pthread.h>

#include "sh.h"

struct px_job {
	void (*run)(struct px_job *j);   /* on a worker */
	void (*done)(struct px_job *j);  /* on the loop thread, after run */
	struct px_job *next;
};

struct px_workers {
	pthread_t *th;
	int n;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct px_job *todo, *todo_tail, *done;
	int stop;
	int efd;
	struct event *ev;
};

/* n threads (0: none; px_workers_submit then runs jobs at once on the caller's thread). */
int px_workers_start(struct px_workers *w, struct event_base *base, int n, struct sh_err *err);
void px_workers_submit(struct px_workers *w, struct px_job *j);
/* Runs the jobs still queued, joins the threads, then every done() (at exit, after the requests are
 * gone: done() must cope with a request that went away, as it must anyway). */
void px_workers_stop(struct px_workers *w);

#endif
