/* ppl.c: held-out perplexity (see ppl.h). */
#include "ppl.h"

#include <math.h>
#include <stdlib.h>

int eng_ppl_n_windows(int n_ids, const struct eng_ppl_opts *o)
{
	if (n_ids <= 0 || o->window <= 0)
		return 0;
	int n = (n_ids + o->window - 1) / o->window;
	return o->max_windows > 0 ? SH_MIN(n, o->max_windows) : n;
}

/* -ln softmax(logits)[target], in double: the sum over 84k tokens must not drift in float. */
static double token_nll(const float *logits, int V, int target)
{
	float mx = logits[0];
	for (int v = 1; v < V; v++)
		mx = logits[v] > mx ? logits[v] : mx;
	double s = 0;
	for (int v = 0; v < V; v++)
		s += exp((double)logits[v] - mx);
	return log(s) + mx - logits[target];
}

int eng_ppl_run(struct eng_model *m, enum eng_kv_fmt fmt, const int32_t *ids, int n_ids,
		const struct eng_ppl_opts *o, struct eng_ppl_window *out, struct sh_err *err)
{
	int W = o->window, V = m->cfg.vocab, T = m->opts.max_tokens;
	int nw = eng_ppl_n_windows(n_ids, o);
	if (W < 1 || W >= m->cfg.max_pos)
		return sh_errf(err, "window %d: 1..%d (max_position_embeddings - 1)", W, m->cfg.max_pos - 1);
	if (o->bos < 0 || o->bos >= V)
		return sh_errf(err, "BOS id %d is outside the vocabulary (%d)", o->bos, V);
	for (int i = 0; i < n_ids; i++)
		if (ids[i] < 0 || ids[i] >= V)
			return sh_errf(err, "token %d: id %d is outside the vocabulary (%d)", i, ids[i], V);

	struct eng_kv_shape shape;
	eng_model_kv_shape(m, &shape);
	/* one window's blocks; each window starts from an empty cache (its blocks are released) */
	struct eng_kv *kv = eng_kv_new(m->be, fmt, &shape, (W + ENG_KV_BLOCK_TOKENS - 1) / ENG_KV_BLOCK_TOKENS, err);
	if (!kv)
		return SH_ERR;
	int32_t *in = sh_malloc(sizeof(int32_t) * (size_t)W);  /* [BOS] + window[:-1] */
	int32_t *pos = sh_malloc(sizeof(int32_t) * (size_t)T);
	int32_t *si = sh_calloc((size_t)T, sizeof(int32_t));
	uint8_t *want = sh_malloc((size_t)T);
	float *logits = sh_malloc(sizeof(float) * (size_t)T * (size_t)V); /* (T, V) */
	struct eng_kv_seq seq;
	struct eng_kv_seq *seqs[1] = {&seq};
	int rc = SH_OK;

	for (int i = 0; i < T; i++)
		want[i] = 1;
	for (int w = 0; w < nw && rc == SH_OK; w++) {
		int s0 = w * W, n = SH_MIN(W, n_ids - s0);
		double nll = 0;
		in[0] = o->bos;
		for (int i = 1; i < n; i++)
			in[i] = ids[s0 + i - 1];
		eng_kv_seq_init(&seq);
		for (int p0 = 0; p0 < n; p0 += T) {
			int k = SH_MIN(T, n - p0);
			for (int i = 0; i < k; i++)
				pos[i] = p0 + i;
			struct eng_batch b = {k, in + p0, pos, si, seqs, 1, want};
			if ((rc = eng_kv_seq_prepare(kv, &seq, p0, k, err)) ||
			    (rc = eng_model_forward(m, kv, &b, logits, err)))
				break;
			seq.n_tokens += k;
			/* logits of input position p0+i predict window token p0+i */
			for (int i = 0; i < k; i++)
				nll += token_nll(logits + (size_t)i * V, V, ids[s0 + p0 + i]);
		}
		eng_kv_seq_release(kv, &seq);
		out[w] = (struct eng_ppl_window){s0, n, nll};
		if (rc == SH_OK && o->progress)
			o->progress(o->ud, w + 1, nw, &out[w]);
	}
	free(in);
	free(pos);
	free(si);
	free(want);
	free(logits);
	eng_kv_free(kv);
	return rc;
}
