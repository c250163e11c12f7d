/* seq.c: see seq.h. */
#include "seq.h"

#include <stdlib.h>
#include <string.h>

#include "tok.h"

void eng_seq_params_release(struct eng_seq_params *p)
{
	for (int i = 0; i < p->n_stop; i++)
		free(p->stop[i]);
	free(p->stop);
	free(p->stop_ids);
	free(p->smp.bias_ids);
	free(p->smp.bias);
	p->stop = NULL;
	p->stop_ids = NULL;
	p->n_stop = p->n_stop_ids = 0;
	p->smp.bias_ids = NULL;
	p->smp.bias = NULL;
	p->smp.n_bias = 0;
}

struct eng_seq *eng_seq_new(const int32_t *prompt, int n_prompt, struct eng_seq_params *p)
{
	struct eng_seq *s = sh_calloc(1, sizeof(*s));
	s->par = *p;
	memset(p, 0, sizeof(*p));
	s->cap_toks = n_prompt + s->par.max_tokens + 1;
	s->toks = sh_malloc(sizeof(int32_t) * (size_t)s->cap_toks);
	memcpy(s->toks, prompt, sizeof(int32_t) * (size_t)n_prompt);
	s->n_toks = s->n_prompt = n_prompt;
	eng_kv_seq_init(&s->kv);
	eng_sampler_setup(&s->smp, &s->par.smp, s->par.seed);
	s->t_arrival_us = sh_now_us();
	atomic_init(&s->refs, 1);
	atomic_init(&s->cancel, 0);
	return s;
}

void eng_seq_ref(struct eng_seq *s)
{
	atomic_fetch_add(&s->refs, 1);
}

void eng_seq_unref(struct eng_seq *s)
{
	if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	SH_BUG_ON(s->kv.n_blocks != 0);
	eng_seq_params_release(&s->par);
	eng_sampler_release(&s->smp);
	sh_tok_stream_free(s->detok);
	free(s->toks);
	free(s->text);
	free(s->out);
	free(s->out_lp);
	free(s);
}
