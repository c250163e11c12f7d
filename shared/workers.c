/* workers.c: see workers.h. */
#include "workers.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static void run_done(struct sh_workers *w)
{
	struct sh_job *j, *next;

	pthread_mutex_lock(&w->mu);
	j = w->done;
	w->done = NULL;
	pthread_mutex_unlock(&w->mu);
	/* the list is newest first: done() in the order the runs ended does not matter */
	for (; j; j = next) {
		next = j->next;
		j->done(j);
	}
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t v;

	(void)what;
	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return;
	run_done(arg);
}

static void *worker(void *arg)
{
	struct sh_workers *w = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&w->mu);
	for (;;) {
		struct sh_job *j;

		while (!w->todo && !w->stop)
			pthread_cond_wait(&w->cv, &w->mu);
		if (!w->todo)
			break;  /* stopping, nothing left */
		j = w->todo;
		w->todo = j->next;
		if (!w->todo)
			w->todo_tail = NULL;
		pthread_mutex_unlock(&w->mu);
		j->run(j);
		pthread_mutex_lock(&w->mu);
		j->next = w->done;
		w->done = j;
		/* fails only with the counter at its maximum: the loop is awake anyway */
		ssize_t k = write(w->efd, &one, sizeof(one));
		(void)k;
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int sh_workers_start(struct sh_workers *w, struct event_base *base, int n, struct sh_err *err)
{
	int i;

	memset(w, 0, sizeof(*w));
	w->efd = -1;
	if (n <= 0)
		return SH_OK;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->efd < 0)
		return sh_errf(err, "eventfd: %s", strerror(errno));
	w->ev = event_new(base, w->efd, EV_READ | EV_PERSIST, wake_cb, w);
	event_add(w->ev, NULL);
	w->th = sh_calloc((size_t)n, sizeof(*w->th));
	for (i = 0; i < n; i++) {
		if (pthread_create(&w->th[i], NULL, worker, w) != 0) {
			w->n = i;
			sh_workers_stop(w);
			return sh_errf(err, "cannot start worker thread %d", i);
		}
	}
	w->n = n;
	return SH_OK;
}

void sh_workers_submit(struct sh_workers *w, struct sh_job *j)
{
	if (!w->n) {
		j->run(j);
		j->done(j);
		return;
	}
	j->next = NULL;
	pthread_mutex_lock(&w->mu);
	if (w->todo_tail)
		w->todo_tail->next = j;
	else
		w->todo = j;
	w->todo_tail = j;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

void sh_workers_stop(struct sh_workers *w)
{
	int i;

	if (w->efd < 0)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = 1;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	for (i = 0; i < w->n; i++)
		pthread_join(w->th[i], NULL);
	run_done(w);
	if (w->ev)
		event_free(w->ev);
	close(w->efd);
	free(w->th);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	memset(w, 0, sizeof(*w));
	w->efd = -1;
}
