/* sched.c: see sched.h. */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefix.h"

/* ---- output to the HTTP side ---- */

static void out_queue(struct eng_sched *s, struct eng_seq *q)
{
	if (q->out_queued)
		return;
	q->out_queued = 1;
	eng_seq_ref(q);
	q->ready_next = NULL;
	if (s->ready_tail)
		s->ready_tail->ready_next = q;
	else
		s->ready = q;
	s->ready_tail = q;
}

struct eng_seq *eng_sched_take_ready(struct eng_sched *s)
{
	pthread_mutex_lock(&s->out_mu);
	struct eng_seq *r = s->ready;
	/* out_queued stays set until the caller has read q->ready_next under out_mu: clearing it here
	 * let the scheduler thread re-queue a seq (relinking its ready_next) while the HTTP thread
	 * still walked this list, so seqs were skipped or handled twice (a double unref). */
	s->ready = s->ready_tail = NULL;
	pthread_mutex_unlock(&s->out_mu);
	return r;
}

/* Appends text (and a logprob record) to q's outbox; fin ends it. */
static void emit(struct eng_sched *s, struct eng_seq *q, const char *text, size_t len, const struct eng_tok_lp *lp,
		 int fin)
{
	pthread_mutex_lock(&s->out_mu);
	if (len) {
		if (q->out_len + len > q->out_cap) {
			q->out_cap = (q->out_len + len) * 2;
			q->out = sh_realloc(q->out, q->out_cap);
		}
		memcpy(q->out + q->out_len, text, len);
		q->out_len += len;
	}
	if (lp) {
		if (q->out_nlp == q->out_caplp) {
			q->out_caplp = q->out_caplp ? q->out_caplp * 2 : 8;
			q->out_lp = sh_realloc(q->out_lp, sizeof(*q->out_lp) * (size_t)q->out_caplp);
		}
		q->out_lp[q->out_nlp++] = *lp;
	}
	q->out_ngen = q->n_gen;
	q->out_cached = q->n_cached;
	if (fin)
		q->out_fin = fin;
	out_queue(s, q);
	pthread_mutex_unlock(&s->out_mu);
}

static void observe(struct eng_sched *s, const struct sh_metric *m, struct sh_series *ser, double v)
{
	if (!s->hist.mu || !m)
		return;
	pthread_mutex_lock(s->hist.mu);
	sh_series_observe(m, ser, v);
	pthread_mutex_unlock(s->hist.mu);
}

/* ---- queues ---- */

static void running_remove(struct eng_sched *s, struct eng_seq *q)
{
	for (int i = 0; i < s->n_running; i++)
		if (s->running[i] == q) {
			memmove(&s->running[i], &s->running[i + 1], sizeof(*s->running) * (size_t)(s->n_running - i - 1));
			s->n_running--;
			return;
		}
}

static void waiting_insert(struct eng_sched *s, int at, struct eng_seq *q)
{
	if (s->n_waiting == s->cap_waiting) {
		s->cap_waiting = s->cap_waiting ? s->cap_waiting * 2 : 64;
		s->waiting = sh_realloc(s->waiting, sizeof(*s->waiting) * (size_t)s->cap_waiting);
	}
	memmove(&s->waiting[at + 1], &s->waiting[at], sizeof(*s->waiting) * (size_t)(s->n_waiting - at));
	s->waiting[at] = q;
	s->n_waiting++;
	q->state = ENG_SEQ_WAITING;
}

static void waiting_remove_at(struct eng_sched *s, int i)
{
	memmove(&s->waiting[i], &s->waiting[i + 1], sizeof(*s->waiting) * (size_t)(s->n_waiting - i - 1));
	s->n_waiting--;
}

/* Ends q: blocks released, the rest of its text and the reason sent, the scheduler's reference
 * dropped. q must already be out of the running and waiting queues. */
static void finish(struct eng_sched *s, struct eng_seq *q, int fin)
{
	eng_kv_seq_release(s->kv, &q->kv);
	q->state = ENG_SEQ_DONE;
	const char *rest = NULL;
	size_t rlen = 0;
	if (fin != ENG_FIN_STOP && q->text_len > q->text_sent) {
		/* text held back for a possible stop string that never came */
		rest = q->text + q->text_sent;
		rlen = q->text_len - q->text_sent;
	}
	emit(s, q, rest, rlen, NULL, fin);
	int64_t now = sh_now_us();
	if (fin == ENG_FIN_STOP || fin == ENG_FIN_LENGTH)
		observe(s, s->hist.e2e, s->hist.s_e2e, (now - q->t_arrival_us) / 1e6);
	pthread_mutex_lock(&s->mu);
	s->st.finished[fin]++;
	pthread_mutex_unlock(&s->mu);
	eng_seq_unref(q);
}

/* ---- blocks ---- */

/* Blocks eng_kv_seq_prepare(pos0, n) would take from the free list (fresh and copies). */
static int blocks_needed(const struct eng_kv *kv, const struct eng_kv_seq *ks, int pos0, int n)
{
	int B = kv->block_tokens, need = (pos0 + n + B - 1) / B, first = pos0 / B;
	int k = need > ks->n_blocks ? need - ks->n_blocks : 0;
	for (int i = first; i < ks->n_blocks && i < need; i++)
		k += kv->ref[ks->blocks[i]] > 1;
	return k;
}

static int make_free(struct eng_sched *s, int want)
{
	if (s->kv->n_free >= want)
		return 1;
	if (s->pc)
		eng_pcache_make_free(s->pc, want);
	return s->kv->n_free >= want;
}

/* Offers q's newly completed full blocks to the prefix cache. */
static void hash_blocks(struct eng_sched *s, struct eng_seq *q)
{
	int B = s->kv->block_tokens;
	while ((q->n_hashed + 1) * B <= q->kv.n_tokens) {
		uint64_t prev = q->n_hashed ? q->last_hash : s->hash_seed;
		q->last_hash = sh_prefix_block(prev, q->toks + (size_t)q->n_hashed * B, (size_t)B);
		if (s->pc)
			eng_pcache_insert(s->pc, q->last_hash, q->kv.blocks[q->n_hashed]);
		q->n_hashed++;
	}
}

/* Prefix-cache lookup for a sequence being admitted: attaches the cached blocks of its leading
 * full blocks and sets how many tokens need no computing (at least one token is always computed,
 * for its logits). */
static void attach_prefix(struct eng_sched *s, struct eng_seq *q)
{
	int B = s->kv->block_tokens;
	q->n_hashed = 0;
	q->last_hash = s->hash_seed;
	if (!s->pc)
		return;
	int nfull = q->n_toks / B, k = 0;
	uint64_t h = s->hash_seed;
	q->kv.cap = nfull > 0 ? nfull : 1;
	q->kv.blocks = sh_realloc(q->kv.blocks, sizeof(int32_t) * (size_t)q->kv.cap);
	for (; k < nfull; k++) {
		uint64_t hk = sh_prefix_block(h, q->toks + (size_t)k * B, (size_t)B);
		int b = eng_pcache_lookup(s->pc, hk);
		if (b < 0)
			break;
		s->kv->ref[b]++;
		q->kv.blocks[k] = b;
		h = hk;
	}
	q->kv.n_blocks = k;
	q->kv.n_tokens = SH_MIN(k * B, q->n_toks - 1);
	q->n_hashed = k;
	q->last_hash = h;
}

static void preempt(struct eng_sched *s, struct eng_seq *q)
{
	running_remove(s, q);
	eng_kv_seq_release(s->kv, &q->kv);
	q->n_hashed = 0;
	q->n_preempted++;
	/* preempted sequences go first, in the order they were admitted */
	int at = 0;
	while (at < s->n_waiting && s->waiting[at]->n_preempted && s->waiting[at]->t_arrival_us <= q->t_arrival_us)
		at++;
	waiting_insert(s, at, q);
	pthread_mutex_lock(&s->mu);
	s->st.preemptions++;
	pthread_mutex_unlock(&s->mu);
}

/* ---- one step ---- */

static int running_count_user(const struct eng_sched *s, const char *user)
{
	int n = 0;
	for (int i = 0; i < s->n_running; i++)
		n += !strcmp(s->running[i]->user, user);
	return n;
}

/* When a user last had a sequence admitted (0: never, or forgotten). */
static uint64_t user_last(const struct eng_sched *s, const char *user)
{
	for (int i = 0; i < s->n_users; i++)
		if (!strcmp(s->users[i].name, user))
			return s->users[i].last;
	return 0;
}

static void user_admitted(struct eng_sched *s, const char *user)
{
	int k = -1;
	for (int i = 0; i < s->n_users && k < 0; i++)
		if (!strcmp(s->users[i].name, user))
			k = i;
	if (k < 0 && s->n_users < ENG_SCHED_USERS) {
		k = s->n_users++;
	} else if (k < 0) {
		k = 0;  /* forget the user served longest ago */
		for (int i = 1; i < s->n_users; i++)
			if (s->users[i].last < s->users[k].last)
				k = i;
	}
	snprintf(s->users[k].name, sizeof(s->users[k].name), "%s", user);
	s->users[k].last = ++s->admit_clock;
}

/* The waiting sequence to admit next: a preempted one first; else, among the users with the
 * fewest running sequences, the one served longest ago, its earliest sequence. Without user ids
 * (one user "") this is first come first served. */
static int pick_waiting(const struct eng_sched *s)
{
	int best = -1, best_n = 0;
	uint64_t best_last = 0;
	for (int i = 0; i < s->n_waiting; i++) {
		const struct eng_seq *q = s->waiting[i];
		if (q->n_preempted)
			return i;
		int n = running_count_user(s, q->user);
		uint64_t last = user_last(s, q->user);
		if (best < 0 || n < best_n || (n == best_n && last < best_last)) {
			best = i;
			best_n = n;
			best_last = last;
		}
	}
	return best;
}

static void take_inbox(struct eng_sched *s)
{
	pthread_mutex_lock(&s->mu);
	struct eng_seq *q = s->inbox;
	s->inbox = s->inbox_tail = NULL;
	pthread_mutex_unlock(&s->mu);
	while (q) {
		struct eng_seq *next = q->next;
		q->next = NULL;
		waiting_insert(s, s->n_waiting, q);
		q = next;
	}
}

static void drop_cancelled(struct eng_sched *s, int all)
{
	for (int i = 0; i < s->n_running;) {
		struct eng_seq *q = s->running[i];
		if (all || atomic_load(&q->cancel)) {
			running_remove(s, q);
			finish(s, q, ENG_FIN_ABORT);
		} else {
			i++;
		}
	}
	for (int i = 0; i < s->n_waiting;) {
		struct eng_seq *q = s->waiting[i];
		if (all || atomic_load(&q->cancel)) {
			waiting_remove_at(s, i);
			finish(s, q, ENG_FIN_ABORT);
		} else {
			i++;
		}
	}
}

/* Appends n tokens of q (from its first uncomputed one) to the batch. */
static void batch_add(struct eng_sched *s, int *nt, int *ns, struct eng_seq *q, int n)
{
	int j = *ns, p0 = q->kv.n_tokens;
	s->bkv[j] = &q->kv;
	s->bseq[j] = q;
	s->bn[j] = n;
	for (int i = 0; i < n; i++) {
		s->ids[*nt] = q->toks[p0 + i];
		s->pos[*nt] = p0 + i;
		s->sidx[*nt] = j;
		s->want[*nt] = (i == n - 1 && p0 + n == q->n_toks);
		(*nt)++;
	}
	(*ns)++;
}

static int in_batch(const struct eng_sched *s, int ns, const struct eng_seq *q)
{
	for (int j = 0; j < ns; j++)
		if (s->bseq[j] == q)
			return 1;
	return 0;
}

/* Makes room for n tokens of q. May preempt other running sequences not yet in the batch (the
 * latest admitted first). Returns 0 when q itself must wait (it was preempted or finished). */
static int reserve(struct eng_sched *s, struct eng_seq *q, int n, int ns)
{
	for (;;) {
		int need = blocks_needed(s->kv, &q->kv, q->kv.n_tokens, n);
		if (make_free(s, need))
			return eng_kv_seq_prepare(s->kv, &q->kv, q->kv.n_tokens, n, NULL) == SH_OK;
		struct eng_seq *victim = NULL;
		for (int i = s->n_running - 1; i >= 0; i--)
			if (s->running[i] != q && !in_batch(s, ns, s->running[i])) {
				victim = s->running[i];
				break;
			}
		if (!victim) {
			if (s->n_running > 1 || ns > 0) {
				preempt(s, q);
			} else {
				/* alone and still no room: cannot happen with max_tokens clamped to the pool */
				running_remove(s, q);
				finish(s, q, ENG_FIN_LENGTH);
			}
			return 0;
		}
		preempt(s, victim);
	}
}

static int is_stop_id(const struct eng_sched *s, const struct eng_seq *q, int32_t t)
{
	if (!q->par.ignore_eos && (t == s->eos[0] || t == s->eos[1]))
		return 1;
	for (int i = 0; i < q->par.n_stop_ids; i++)
		if (q->par.stop_ids[i] == t)
			return 1;
	return 0;
}

static void text_append(struct eng_seq *q, const char *p, size_t n)
{
	if (q->text_len + n + 1 > q->text_cap) {
		q->text_cap = (q->text_len + n + 1) * 2;
		q->text = sh_realloc(q->text, q->text_cap);
	}
	memcpy(q->text + q->text_len, p, n);
	q->text_len += n;
	q->text[q->text_len] = 0;
}

/* After new text: a stop string ends the sequence (the text cut before it); otherwise sends all
 * but the longest tail that could still begin a stop string. Returns 1 when stopped. */
static int stop_strings(struct eng_seq *q, size_t *send_to)
{
	size_t best = (size_t)-1;
	for (int i = 0; i < q->par.n_stop; i++) {
		const char *st = q->par.stop[i];
		size_t L = strlen(st);
		if (!L)
			continue;
		size_t from = q->text_sent;
		const char *hit = q->text_len >= from + L ? memmem(q->text + from, q->text_len - from, st, L) : NULL;
		if (hit && (size_t)(hit - q->text) < best)
			best = (size_t)(hit - q->text);
	}
	if (best != (size_t)-1) {
		q->text_len = best;
		*send_to = best;
		return 1;
	}
	size_t hold = 0;
	for (int i = 0; i < q->par.n_stop; i++) {
		const char *st = q->par.stop[i];
		size_t L = strlen(st);
		for (size_t k = SH_MIN(L - (L > 0), q->text_len - q->text_sent); k > hold; k--)
			if (!memcmp(q->text + q->text_len - k, st, k)) {
				hold = k;
				break;
			}
	}
	*send_to = q->text_len - hold;
	return 0;
}

/* A token was sampled for q: record it, send its text, finish when it ends the sequence. */
static void on_token(struct eng_sched *s, struct eng_seq *q, int32_t t, const float *logits)
{
	int V = s->m->cfg.vocab;
	struct eng_tok_lp lp, *lpp = NULL;
	if (q->par.logprobs >= 0) {
		lp.id = t;
		lp.n_top = eng_logprobs(logits, V, t, &lp.lp, q->par.logprobs, lp.top_ids, lp.top_lps);
		lpp = &lp;
	}
	int64_t now = sh_now_us();
	if (!q->n_gen) {
		q->t_first_us = now;
		observe(s, s->hist.ttft, s->hist.s_ttft, (now - q->t_arrival_us) / 1e6);
	} else {
		observe(s, s->hist.itl, s->hist.s_itl, (now - q->t_last_us) / 1e6);
	}
	q->t_last_us = now;
	q->toks[q->n_toks++] = t;
	q->n_gen++;
	pthread_mutex_lock(&s->mu);
	s->st.gen_tokens++;
	pthread_mutex_unlock(&s->mu);

	int fin = ENG_FIN_NONE;
	if (is_stop_id(s, q, t)) {
		fin = ENG_FIN_STOP;
	} else if (s->tok) {
		if (!q->detok)
			q->detok = sh_tok_stream_new(s->tok, q->par.skip_special ? SH_TOK_SKIP_SPECIAL : 0);
		size_t n = 0;
		const char *p = sh_tok_stream_push(q->detok, t, &n, NULL);
		if (p && n)
			text_append(q, p, n);
	}
	if (!fin && q->n_gen >= q->par.max_tokens)
		fin = ENG_FIN_LENGTH;
	if (fin && q->detok) { /* bytes of an unfinished character: their replacement */
		size_t n = 0;
		const char *p = sh_tok_stream_finish(q->detok, &n);
		if (n)
			text_append(q, p, n);
	}
	size_t send_to = q->text_len;
	if (q->par.n_stop && stop_strings(q, &send_to))
		fin = ENG_FIN_STOP; /* cut before the stop string */
	else if (fin)
		send_to = q->text_len; /* ending anyway (EOS, a stop id, the length): nothing to hold back */
	const char *piece = q->text + q->text_sent;
	size_t plen = send_to > q->text_sent ? send_to - q->text_sent : 0;
	q->text_sent += plen;
	if (fin) {
		/* send what is left in one go with the reason */
		emit(s, q, piece, plen, lpp, ENG_FIN_NONE);
		running_remove(s, q);
		finish(s, q, fin);
	} else {
		emit(s, q, piece, plen, lpp, ENG_FIN_NONE);
	}
}

/* One scheduling step. Returns 0 when there was nothing to run. */
static int step(struct eng_sched *s)
{
	struct sh_err err = {{0}};
	int budget = s->conf.max_batched_tokens, nt = 0, ns = 0;

	take_inbox(s);
	drop_cancelled(s, 0);

	/* 1. running: decodes, then the rest of prefills */
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < s->n_running && budget > 0; i++) {
			struct eng_seq *q = s->running[i];
			int left = q->n_toks - q->kv.n_tokens;
			if ((pass == 0) != (left == 1) || in_batch(s, ns, q))
				continue;
			int n = SH_MIN(left, budget);
			if (!reserve(s, q, n, ns)) {
				i = -1;  /* the queue changed: walk it again (batched ones are skipped) */
				continue;
			}
			batch_add(s, &nt, &ns, q, n);
			budget -= n;
		}
	}
	/* 2. admissions */
	while (budget > 0 && s->n_running < s->conf.max_num_seqs && s->n_waiting) {
		int wi = pick_waiting(s);
		struct eng_seq *q = s->waiting[wi];
		attach_prefix(s, q);
		int need = blocks_needed(s->kv, &q->kv, q->kv.n_tokens, q->n_toks - q->kv.n_tokens + 1);
		int avail = s->kv->n_free + (s->pc ? eng_pcache_evictable(s->pc) : 0);
		if (need > avail) {
			eng_kv_seq_release(s->kv, &q->kv);
			break;
		}
		if (!q->admitted) {
			q->n_cached = q->kv.n_tokens;
			pthread_mutex_lock(&s->mu);
			s->st.prompt_tokens += q->prompt_shared ? 0 : (uint64_t)q->n_prompt;
			pthread_mutex_unlock(&s->mu);
		}
		q->admitted = 1;
		user_admitted(s, q->user);
		if (s->pc) {
			s->prefix_queries += (uint64_t)q->n_toks;
			s->prefix_hits += (uint64_t)q->kv.n_tokens;
		}
		waiting_remove_at(s, wi);
		s->running[s->n_running++] = q;
		q->state = ENG_SEQ_RUNNING;
		int n = SH_MIN(q->n_toks - q->kv.n_tokens, budget);
		if (!make_free(s, blocks_needed(s->kv, &q->kv, q->kv.n_tokens, n)) ||
		    eng_kv_seq_prepare(s->kv, &q->kv, q->kv.n_tokens, n, NULL)) {
			preempt(s, q);  /* counted blocks were not there after all: try later */
			break;
		}
		batch_add(s, &nt, &ns, q, n);
		budget -= n;
	}
	if (!nt)
		return 0;

	/* 3. forward */
	struct eng_batch b = {nt, s->ids, s->pos, s->sidx, s->bkv, ns, s->want};
	int V = s->m->cfg.vocab;
	if (eng_model_forward(s->m, s->kv, &b, s->logits, &err)) {
		fprintf(stderr, "kvgate-engine: step failed: %s\n", err.msg);
		for (int j = 0; j < ns; j++) {
			running_remove(s, s->bseq[j]);
			finish(s, s->bseq[j], ENG_FIN_ERROR);
		}
		return 1;
	}
	/* 4. advance, hash full blocks, sample */
	int row = 0;
	for (int j = 0; j < ns; j++) {
		struct eng_seq *q = s->bseq[j];
		q->kv.n_tokens += s->bn[j];
		hash_blocks(s, q);
		if (q->kv.n_tokens == q->n_toks) {
			float *lg = s->logits + (size_t)row++ * V;
			int32_t t;
			if (q->par.logprobs >= 0) {
				/* logprobs come from the raw logits: sample from a copy */
				float *cp = sh_malloc(sizeof(float) * (size_t)V);
				memcpy(cp, lg, sizeof(float) * (size_t)V);
				t = eng_sampler_sample(&q->smp, cp, V, q->toks, q->n_prompt, q->toks + q->n_prompt, q->n_gen);
				free(cp);
			} else {
				t = eng_sampler_sample(&q->smp, lg, V, q->toks, q->n_prompt, q->toks + q->n_prompt, q->n_gen);
			}
			on_token(s, q, t, lg);
		}
	}
	pthread_mutex_lock(&s->mu);
	s->st.steps++;
	pthread_mutex_unlock(&s->mu);
	return 1;
}

static void publish(struct eng_sched *s)
{
	int cached = s->pc ? s->pc->n : 0, evictable = s->pc ? eng_pcache_evictable(s->pc) : 0;
	pthread_mutex_lock(&s->mu);
	s->st.running = s->n_running;
	s->st.waiting = s->n_waiting;
	s->st.total_blocks = s->kv->n_blocks;
	s->st.free_blocks = s->kv->n_free;
	s->st.cached_blocks = cached;
	s->st.evictable_blocks = evictable;
	s->st.pc_queries = s->prefix_queries;
	s->st.pc_hits = s->prefix_hits;
	pthread_mutex_unlock(&s->mu);
}

static void notify(struct eng_sched *s)
{
	pthread_mutex_lock(&s->out_mu);
	int any = s->ready != NULL;
	pthread_mutex_unlock(&s->out_mu);
	if (any && s->notify)
		s->notify(s->notify_ud);
}

static void *sched_main(void *arg)
{
	struct eng_sched *s = arg;
	for (;;) {
		pthread_mutex_lock(&s->mu);
		while (!s->stop && !s->inbox && !s->n_running && !s->n_waiting)
			pthread_cond_wait(&s->cv, &s->mu);
		int stop = s->stop;
		pthread_mutex_unlock(&s->mu);
		if (stop)
			break;
		int did = step(s);
		publish(s);
		notify(s);
		if (did && s->step_delay_us)
			usleep((useconds_t)s->step_delay_us);
		if (!did && !s->n_running) {
			/* waiting sequences that cannot be admitted with nothing running: a wake-up is needed */
			pthread_mutex_lock(&s->mu);
			if (!s->stop && !s->inbox) {
				struct timespec ts;
				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_nsec += 20 * 1000000;
				if (ts.tv_nsec >= 1000000000) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000;
				}
				pthread_cond_timedwait(&s->cv, &s->mu, &ts);
			}
			pthread_mutex_unlock(&s->mu);
		}
	}
	take_inbox(s);
	drop_cancelled(s, 1);
	publish(s);
	notify(s);
	return NULL;
}

void eng_sched_run_idle(struct eng_sched *s)
{
	for (;;) {
		int did = step(s);
		publish(s);
		if (!did && !s->inbox)
			break;
	}
}

/* ---- lifecycle ---- */

struct eng_sched *eng_sched_new(struct eng_model *m, struct eng_kv *kv, struct sh_tok *tok,
				const struct eng_sched_conf *conf, void (*notify_fn)(void *), void *notify_ud)
{
	struct eng_sched *s = sh_calloc(1, sizeof(*s));
	s->m = m;
	s->kv = kv;
	s->tok = tok;
	s->conf = *conf;
	if (s->conf.max_batched_tokens > m->opts.max_tokens)
		s->conf.max_batched_tokens = m->opts.max_tokens;
	const char *name = conf->model_name ? conf->model_name : "";
	s->hash_seed = sh_prefix_seed(name, strlen(name));
	s->eos[0] = m->cfg.eos_id;
	s->eos[1] = tok ? sh_tok_eos_id(tok) : -1;
	if (conf->prefix_caching)
		s->pc = eng_pcache_new(kv, conf->log_cap > 0 ? conf->log_cap : 65536);
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_mutex_init(&s->out_mu, NULL);
	int T = s->conf.max_batched_tokens, S = s->conf.max_num_seqs;
	s->running = sh_calloc((size_t)S, sizeof(*s->running));
	s->ids = sh_malloc(sizeof(int32_t) * (size_t)T);
	s->pos = sh_malloc(sizeof(int32_t) * (size_t)T);
	s->sidx = sh_malloc(sizeof(int32_t) * (size_t)T);
	s->want = sh_malloc((size_t)T);
	s->bkv = sh_calloc((size_t)S, sizeof(*s->bkv));
	s->bseq = sh_calloc((size_t)S, sizeof(*s->bseq));
	s->bn = sh_calloc((size_t)S, sizeof(int));
	s->logits = sh_malloc(sizeof(float) * (size_t)S * (size_t)m->cfg.vocab);
	const char *d = getenv("KVGATE_ENGINE_STEP_DELAY_MS");
	s->step_delay_us = d ? atoi(d) * 1000 : 0;
	s->notify = notify_fn;
	s->notify_ud = notify_ud;
	publish(s);
	return s;
}

int eng_sched_start(struct eng_sched *s, struct sh_err *err)
{
	if (pthread_create(&s->thr, NULL, sched_main, s))
		return sh_errf(err, "cannot start the scheduler thread");
	s->started = 1;
	return SH_OK;
}

void eng_sched_free(struct eng_sched *s)
{
	if (!s)
		return;
	if (s->started) {
		pthread_mutex_lock(&s->mu);
		s->stop = 1;
		pthread_cond_signal(&s->cv);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->thr, NULL);
	} else {
		take_inbox(s);
		drop_cancelled(s, 1);
	}
	for (struct eng_seq *q = eng_sched_take_ready(s), *n; q; q = n) {
		n = q->ready_next;
		eng_seq_unref(q);
	}
	eng_pcache_free(s->pc);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->out_mu);
	free(s->waiting);
	free(s->running);
	free(s->ids);
	free(s->pos);
	free(s->sidx);
	free(s->want);
	free(s->bkv);
	free(s->bseq);
	free(s->bn);
	free(s->logits);
	free(s);
}

void eng_sched_submit(struct eng_sched *s, struct eng_seq *q)
{
	eng_seq_ref(q);
	pthread_mutex_lock(&s->mu);
	q->next = NULL;
	if (s->inbox_tail)
		s->inbox_tail->next = q;
	else
		s->inbox = q;
	s->inbox_tail = q;
	s->st.waiting++;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

void eng_sched_kick(struct eng_sched *s)
{
	pthread_mutex_lock(&s->mu);
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

void eng_sched_stats(struct eng_sched *s, struct eng_sched_stats *out)
{
	pthread_mutex_lock(&s->mu);
	*out = s->st;
	pthread_mutex_unlock(&s->mu);
}
