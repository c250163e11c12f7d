/* workers.h: a few threads for work too long for an event loop (tokenizing a long prompt: ~5 MB/s,
 * so a 400 KB agent context would stall every stream for 80 ms; kvgate's count, the engine's
 * request parse). A job's run() goes on a
 * worker; its done() then runs on the loop thread, which wakes through an eventfd. run() may only
 * touch what the job owns and thread-safe shared state (the tokenizers); done() is where the loop's
 * state is touched again. */
#ifndef SH_WORKERS_H
#define SH_WORKERS_H

#include <event2/event.h>
#include <pthread.h>

#include "sh.h"

struct sh_job {
	void (*run)(struct sh_job *j);   /* on a worker */
	void (*done)(struct sh_job *j);  /* on the loop thread, after run */
	struct sh_job *next;
};

struct sh_workers {
	pthread_t *th;
	int n;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct sh_job *todo, *todo_tail, *done;
	int stop;
	int efd;
	struct event *ev;
};

/* n threads (0: none; sh_workers_submit then runs jobs at once on the caller's thread). */
int sh_workers_start(struct sh_workers *w, struct event_base *base, int n, struct sh_err *err);
void sh_workers_submit(struct sh_workers *w, struct sh_job *j);
/* Runs the jobs still queued, joins the threads, then every done() (at exit, after the requests are
 * gone: done() must cope with a request that went away, as it must anyway). */
void sh_workers_stop(struct sh_workers *w);

#endif
