/* sched.h: the scheduler. One thread owns the model, the KV cache and the prefix cache and runs
 * steps: each step takes what arrived, drops what was cancelled, builds one flattened batch under
 * a token budget and runs it through the model, then samples and hands text to the HTTP side.
 *
 * Policy (vLLM v1 style):
 * - running sequences first: every decode (one token each), then the rest of chunked prefills,
 *   all within max_batched_tokens;
 * - then admission from the waiting queue while the budget lasts and fewer than max_num_seqs run:
 *   preempted sequences first, then first come first served, fair across users (among the users
 *   with the fewest running sequences, the one admitted longest ago goes first: round robin);
 *   a sequence is admitted only when the blocks for its whole prompt (less prefix-cache hits)
 *   plus one are free or evictable;
 * - when a running sequence needs a block and none is free, the unreferenced prefix-cache blocks
 *   go first (LRU), then the most recently admitted other sequence is preempted: its blocks are
 *   released and it is recomputed later from its prompt and what it generated (recompute);
 * - a cancelled sequence (client gone) is finished and its blocks released at the next step.
 * Sampling uses each sequence's own generator, so results do not depend on the batch.
 *
 * Testing aid: KVGATE_ENGINE_STEP_DELAY_MS=N in the environment sleeps N ms after every step, so
 * that integration tests can observe a sequence mid-flight (cancel, preemption) on tiny models. */
#ifndef ENG_SCHED_H
#define ENG_SCHED_H

#include <pthread.h>
#include <stdint.h>

#include "kv.h"
#include "metrics.h"
#include "model.h"
#include "pcache.h"
#include "seq.h"
#include "tok.h"

struct eng_sched_conf {
	int max_num_seqs;           /* sequences running at once */
	int max_batched_tokens;     /* tokens per step (<= the model's workspace, opts.max_tokens) */
	int prefix_caching;         /* 0: off */
	const char *model_name;     /* seeds the prefix hashes (contract 1) */
	int log_cap;                /* routing log events kept */
};

struct eng_sched_stats {
	int running, waiting;
	int total_blocks, free_blocks, cached_blocks, evictable_blocks;
	uint64_t prompt_tokens, gen_tokens, preemptions, steps;
	uint64_t pc_queries, pc_hits;       /* tokens */
	uint64_t finished[5];               /* by enum eng_finish */
};

/* Histograms the scheduler observes (under *mu, which the server also takes to render). */
struct eng_sched_hist {
	pthread_mutex_t *mu;
	const struct sh_metric *ttft, *itl, *e2e;
	struct sh_series *s_ttft, *s_itl, *s_e2e;
};

#define ENG_SCHED_USERS 256     /* users remembered for fairness */

struct eng_sched_user {
	char name[64];
	uint64_t last;              /* admit_clock of the user's last admission */
};

struct eng_sched {
	struct eng_model *m;
	struct eng_kv *kv;
	struct sh_tok *tok;
	struct eng_pcache *pc;              /* NULL without prefix caching */
	struct eng_sched_conf conf;
	uint64_t hash_seed;
	int32_t eos[2];
	struct eng_sched_hist hist;

	pthread_t thr;
	int started;
	pthread_mutex_t mu;                 /* inbox, stop, stats */
	pthread_cond_t cv;
	struct eng_seq *inbox, *inbox_tail;
	int stop;
	struct eng_sched_stats st;

	/* scheduler thread only */
	struct eng_seq **waiting;
	int n_waiting, cap_waiting;
	struct eng_seq **running;           /* by admission order */
	int n_running;
	int32_t *ids, *pos, *sidx;          /* (max_batched_tokens) */
	uint8_t *want;
	struct eng_kv_seq **bkv;            /* (max_num_seqs) */
	struct eng_seq **bseq;
	int *bn;                            /* tokens of each batch sequence */
	float *logits;                      /* (max_num_seqs, vocab) */
	uint8_t *in_batch;                  /* per running slot */
	uint64_t prefix_queries, prefix_hits;
	int step_delay_us;
	struct eng_sched_user users[ENG_SCHED_USERS];
	int n_users;
	uint64_t admit_clock;

	/* output to the HTTP side */
	pthread_mutex_t out_mu;
	struct eng_seq *ready, *ready_tail;
	void (*notify)(void *ud);           /* called (any thread) when ready gets a sequence */
	void *notify_ud;
};

/* A scheduler over m and kv (which it uses from its own thread only, once started). tok decodes
 * the output. notify is called from the scheduler thread after each step that produced output. */
struct eng_sched *eng_sched_new(struct eng_model *m, struct eng_kv *kv, struct sh_tok *tok,
				const struct eng_sched_conf *conf, void (*notify)(void *), void *notify_ud);
int eng_sched_start(struct eng_sched *s, struct sh_err *err);
/* Stops the thread (running sequences are aborted) and frees. NULL is a no-op. */
void eng_sched_free(struct eng_sched *s);

/* Hands a sequence over (any thread); the scheduler takes its own reference. */
void eng_sched_submit(struct eng_sched *s, struct eng_seq *seq);
/* Wakes the scheduler (after a cancel). */
void eng_sched_kick(struct eng_sched *s);

/* The sequences with new output, as a list linked by ready_next, each holding one reference the
 * caller drops (eng_seq_unref) after reading its outbox under out_mu. */
struct eng_seq *eng_sched_take_ready(struct eng_sched *s);

/* Runs steps on the calling thread until nothing is left to do (tests; the thread must not run). */
void eng_sched_run_idle(struct eng_sched *s);

void eng_sched_stats(struct eng_sched *s, struct eng_sched_stats *out);

#endif
