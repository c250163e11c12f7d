/* test_workers.c: proxy/workers.c: every job runs once on a worker thread, its done() then once on
 * the loop thread (the one that dispatches the event base); jobs still queued at stop run and get
 * their done(); with no threads a job runs at once on the caller's thread. */
#include <check.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>

#include "workers.h"

#define NJOBS 200

struct tjob {
	struct sh_job job;
	int in;
	long out;
	pthread_t ran_on;
};

static pthread_t loop_thread;
static int n_done, done_off_loop, run_on_loop;
static struct event_base *base;

static void tj_run(struct sh_job *j)
{
	struct tjob *t = (struct tjob *)j;
	long s = 0;

	for (int i = 0; i < 20000; i++)
		s += (t->in * 31 + i) % 7;
	t->out = s;
	t->ran_on = pthread_self();
}

static void tj_done(struct sh_job *j)
{
	struct tjob *t = (struct tjob *)j;
	long s = 0;

	for (int i = 0; i < 20000; i++)
		s += (t->in * 31 + i) % 7;
	ck_assert_int_eq(t->out, s);
	done_off_loop += !pthread_equal(pthread_self(), loop_thread);
	run_on_loop += pthread_equal(t->ran_on, loop_thread) != 0;
	if (++n_done == NJOBS && base)
		event_base_loopbreak(base);
}

START_TEST(jobs_run_and_come_back)
{
	struct sh_workers w;
	struct sh_err err;
	struct tjob *jobs = calloc(NJOBS, sizeof(*jobs));

	loop_thread = pthread_self();
	base = event_base_new();
	n_done = done_off_loop = run_on_loop = 0;
	ck_assert_int_eq(sh_workers_start(&w, base, 3, &err), SH_OK);
	for (int i = 0; i < NJOBS; i++) {
		jobs[i].job.run = tj_run;
		jobs[i].job.done = tj_done;
		jobs[i].in = i;
		sh_workers_submit(&w, &jobs[i].job);
	}
	event_base_dispatch(base);
	ck_assert_int_eq(n_done, NJOBS);
	ck_assert_int_eq(done_off_loop, 0);
	ck_assert_int_eq(run_on_loop, 0);
	/* queued at stop: run, then done, inside stop */
	n_done = 0;
	for (int i = 0; i < NJOBS; i++)
		sh_workers_submit(&w, &jobs[i].job);
	sh_workers_stop(&w);
	ck_assert_int_eq(n_done, NJOBS);
	event_base_free(base);
	base = NULL;
	free(jobs);
}
END_TEST

START_TEST(no_threads)
{
	struct sh_workers w;
	struct sh_err err;
	struct tjob t = {{tj_run, tj_done, NULL}, 5, 0, 0};

	loop_thread = pthread_self();
	n_done = done_off_loop = run_on_loop = 0;
	ck_assert_int_eq(sh_workers_start(&w, NULL, 0, &err), SH_OK);
	sh_workers_submit(&w, &t.job);
	ck_assert_int_eq(n_done, 1);
	ck_assert_int_eq(run_on_loop, 1);
	sh_workers_stop(&w);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("workers");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, jobs_run_and_come_back);
	tcase_add_test(tc, no_threads);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
