/* ppl.h: held-out perplexity with the recipe of models/<name>/eval/heldout_ppl.json, which is also
 * the usual Hugging Face one: cut the token ids into consecutive windows of W (the last one shorter),
 * feed each window as [BOS] + window[:-1] into an empty KV cache and score every token of the window;
 * perplexity = exp(sum NLL / tokens). The KV cache is in the format the caller picks, so the figure
 * measures that format's accuracy: every token's logits come from attention over the quantised rows. */
#ifndef ENG_PPL_H
#define ENG_PPL_H

#include <stdint.h>

#include "kv.h"
#include "model.h"

struct eng_ppl_window {
	int start;   /* index of the window's first token in the ids */
	int n;       /* tokens scored */
	double nll;  /* sum of -ln p(token), nats */
};

struct eng_ppl_opts {
	int window;          /* tokens per window (1 .. max_position_embeddings - 1) */
	int bos;             /* id fed before each window */
	int max_windows;     /* 0: all */
	/* called after each window (may be NULL): i of n windows done */
	void (*progress)(void *ud, int i, int n, const struct eng_ppl_window *w);
	void *ud;
};

/* Number of windows eng_ppl_run fills for n ids. */
int eng_ppl_n_windows(int n_ids, const struct eng_ppl_opts *o);

/* Scores ids[0..n_ids) on m with a KV cache of format fmt, window by window, in chunks of
 * m->opts.max_tokens tokens per forward call; out gets eng_ppl_n_windows() entries (caller's
 * array). SH_OK, or SH_ERR with err filled (a bad id or option, no memory for the cache). */
int eng_ppl_run(struct eng_model *m, enum eng_kv_fmt fmt, const int32_t *ids, int n_ids,
		const struct eng_ppl_opts *o, struct eng_ppl_window *out, struct sh_err *err);

#endif
