/* seq.h: one generated sequence (one choice of one request) as the scheduler and the HTTP side
 * share it. The HTTP side makes it (eng_seq_new), submits it (eng_sched_submit) and reads what it
 * produced from its outbox; the scheduler owns everything marked "scheduler only".
 *
 * Lifetime: reference counted. eng_seq_new gives the caller one reference; submission adds the
 * scheduler's, and a seq waiting in the ready list holds one more. Whoever drops the last one
 * frees it (eng_seq_unref). The HTTP side that goes away calls eng_seq_cancel, sets ud to NULL
 * (under the scheduler's out lock) and drops its reference: the scheduler frees the KV blocks at
 * its next step. */
#ifndef ENG_SEQ_H
#define ENG_SEQ_H

#include <stdatomic.h>
#include <stdint.h>

#include "kv.h"
#include "sampler.h"

#define ENG_MAX_TOP_LOGPROBS 20
#define ENG_MAX_STOP 64         /* stop strings per request */
#define ENG_MAX_STOP_LEN 512    /* bytes per stop string */
#define ENG_MAX_STOP_IDS 256
#define ENG_MAX_BIAS 1024       /* logit_bias entries */

enum eng_seq_state { ENG_SEQ_NEW, ENG_SEQ_WAITING, ENG_SEQ_RUNNING, ENG_SEQ_DONE };
enum eng_finish { ENG_FIN_NONE = 0, ENG_FIN_STOP, ENG_FIN_LENGTH, ENG_FIN_ABORT, ENG_FIN_ERROR };

/* What a request asks of one sequence. Strings and arrays are owned by the seq once given. */
struct eng_seq_params {
	struct eng_sampling smp;
	uint64_t seed;
	int max_tokens;             /* >= 1, already clamped to the room left */
	int ignore_eos;
	char **stop;                /* n_stop strings */
	int n_stop;
	int32_t *stop_ids;
	int n_stop_ids;
	int logprobs;               /* -1: none; else top alternatives per token (0..20) */
	int skip_special;           /* leave special tokens out of the text */
};

/* One generated token's log-probabilities. */
struct eng_tok_lp {
	int32_t id;
	float lp;
	int n_top;
	int32_t top_ids[ENG_MAX_TOP_LOGPROBS];
	float top_lps[ENG_MAX_TOP_LOGPROBS];
};

struct eng_seq {
	/* set before submission, read-only after */
	uint64_t id;
	int index;                      /* choice index in its request */
	int prompt_shared;              /* a later choice of one prompt (n > 1): its prompt is counted once */
	char user[64];                  /* x-kvgate-user, "" when none: fairness key */
	struct eng_seq_params par;
	int64_t t_arrival_us;

	/* scheduler only */
	int32_t *toks;                  /* prompt then generated ids: n_toks of cap_toks */
	int n_toks, cap_toks, n_prompt;
	struct eng_kv_seq kv;           /* kv.n_tokens: tokens whose KV rows are written */
	int n_hashed;                   /* full blocks hashed (and offered to the prefix cache) */
	uint64_t last_hash;             /* hash of block n_hashed - 1 (the model seed when 0) */
	int n_cached;                   /* prompt tokens found in the prefix cache at first admission */
	int admitted;                   /* admitted at least once */
	int n_preempted;
	struct eng_sampler smp;
	struct sh_tok_stream *detok;
	char *text;                     /* generated text: text_len bytes, text_sent already out */
	size_t text_len, text_cap, text_sent;
	int64_t t_first_us, t_last_us;
	enum eng_seq_state state;
	int n_gen;
	struct eng_seq *next;           /* in the inbox */

	/* shared */
	atomic_int refs;
	atomic_int cancel;

	/* outbox, under the scheduler's out lock */
	char *out;                      /* text not yet taken: out_len of out_cap */
	size_t out_len, out_cap;
	struct eng_tok_lp *out_lp;      /* logprobs of tokens not yet taken */
	int out_nlp, out_caplp;
	int out_fin;                    /* enum eng_finish once finished */
	int out_ngen;                   /* tokens generated so far */
	int out_cached;                 /* prompt tokens served from the prefix cache */
	int out_queued;                 /* in the ready list */
	void *ud;                       /* the HTTP side's object; NULL once it let go */
	struct eng_seq *ready_next;
};

/* A new sequence over a copy of the prompt (n_prompt >= 1); p's strings and arrays move into it
 * (p is zeroed). One reference for the caller. */
struct eng_seq *eng_seq_new(const int32_t *prompt, int n_prompt, struct eng_seq_params *p);
void eng_seq_ref(struct eng_seq *s);
/* Drops a reference; the last one frees (the KV blocks must have been released: the scheduler
 * does it before dropping its own). NULL is a no-op. */
void eng_seq_unref(struct eng_seq *s);
/* Asks the scheduler to stop it (any thread). */
static inline void eng_seq_cancel(struct eng_seq *s) { atomic_store(&s->cancel, 1); }

void eng_seq_params_release(struct eng_seq_params *p);

#endif
