/* tok_dec.c: ids -> text through the decoder chain of tokenizer.json, and the streaming decoder.
 *
 * Byte-level vocabularies (the families we serve) decode each id to raw bytes (precomputed at
 * load) and the concatenation is read as UTF-8 with U+FFFD for each maximal invalid subpart, as
 * Rust's from_utf8_lossy and JavaScript's TextDecoder do; streaming then only has to hold back an
 * incomplete trailing character. Other chains (Replace, ByteFallback, Fuse, Strip, Metaspace) run
 * on a list of token strings exactly as the Rust crate's decode_chain steps do; their streaming
 * re-decodes a short window of recent ids and emits what is new. */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

static const char FFFD[] = "\xEF\xBF\xBD";

/* Appends s[0..n) to out as valid UTF-8. With hold, a truncated character at the end is not
 * written; the number of bytes consumed is returned. */
static size_t lossy_add(struct sh_buf *out, const char *s, size_t n, int hold)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run = 0;

	while (i < n) {
		int l, trunc;
		size_t bl;
		if (u[i] < 0x80) {
			i++;
			continue;
		}
		l = tok_utf8_len(u + i, n - i);
		if (l) {
			i += (size_t)l;
			continue;
		}
		bl = tok_utf8_bad_len(u + i, n - i, &trunc);
		if (trunc && hold) {
			sh_buf_add(out, s + run, i - run);
			return i;
		}
		sh_buf_add(out, s + run, i - run);
		sh_buf_add(out, FFFD, 3);
		i += bl;
		run = i;
	}
	sh_buf_add(out, s + run, n - run);
	return n;
}

/* ---- the general chain -------------------------------------------------------------------- */

struct tl {
	char **s;
	size_t *n;
	size_t len;
};

static void tl_set(struct tl *t, size_t i, char *s, size_t n)
{
	free(t->s[i]);
	t->s[i] = s;
	t->n[i] = n;
}

static int byte_token(const char *s, size_t n)
{
	int v = 0;
	if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>')
		return -1;
	for (int k = 3; k < 5; k++) {
		char c = s[k];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else
			return -1;
	}
	return v;
}

static void step(const struct tok_dec *d, struct tl *t)
{
	size_t i;

	switch (d->kind) {
	case DEC_BYTELEVEL:   /* refused at load outside byte-level mode */
		break;
	case DEC_REPLACE:
		for (i = 0; i < t->len; i++) {
			struct sh_buf b = {0};
			const char *p = t->s[i], *end = p + t->n[i], *h;
			while ((h = memmem(p, (size_t)(end - p), d->pat, d->pat_len))) {
				sh_buf_add(&b, p, (size_t)(h - p));
				sh_buf_add(&b, d->with, d->with_len);
				p = h + d->pat_len;
			}
			sh_buf_add(&b, p, (size_t)(end - p));
			tl_set(t, i, b.p, b.n);
		}
		break;
	case DEC_BYTEFALLBACK: {
		/* runs of <0xXX> become their bytes when valid UTF-8, else one U+FFFD per byte */
		size_t o = 0;
		i = 0;
		while (i < t->len) {
			int v = byte_token(t->s[i], t->n[i]);
			if (v < 0) {
				if (o != i) {
					t->s[o] = t->s[i];
					t->n[o] = t->n[i];
					t->s[i] = NULL;
				}
				o++;
				i++;
				continue;
			}
			struct sh_buf b = {0};
			size_t j = i;
			for (; j < t->len && (v = byte_token(t->s[j], t->n[j])) >= 0; j++) {
				char c = (char)v;
				sh_buf_add(&b, &c, 1);
			}
			{
				size_t k, ok = 1, q = 0;
				while (q < b.n) {
					int l = tok_utf8_len((const unsigned char *)b.p + q, b.n - q);
					if (!l) {
						ok = 0;
						break;
					}
					q += (size_t)l;
				}
				for (k = i; k < j; k++) {
					free(t->s[k]);
					t->s[k] = NULL;
				}
				if (ok) {
					t->s[o] = b.p;
					t->n[o] = b.n;
					o++;
				} else {
					for (k = i; k < j; k++) {
						t->s[o] = sh_strdup(FFFD);
						t->n[o] = 3;
						o++;
					}
					free(b.p);
				}
			}
			i = j;
		}
		t->len = o;
		break;
	}
	case DEC_FUSE: {
		struct sh_buf b = {0};
		for (i = 0; i < t->len; i++) {
			sh_buf_add(&b, t->s[i], t->n[i]);
			free(t->s[i]);
			t->s[i] = NULL;
		}
		if (!b.p)
			b.p = sh_calloc(1, 1);
		t->s[0] = b.p;
		t->n[0] = b.n;
		t->len = 1;
		break;
	}
	case DEC_STRIP:
		for (i = 0; i < t->len; i++) {
			const unsigned char *u = (const unsigned char *)t->s[i];
			size_t n = t->n[i], a = 0, z = n;
			for (int k = 0; k < d->start && a < z; k++) {
				int l = tok_utf8_len(u + a, z - a);
				if (!l || tok_utf8_cp(u + a, l) != d->ch)
					break;
				a += (size_t)l;
			}
			for (int k = 0; k < d->stop && z > a; k++) {
				size_t q = z - 1;
				while (q > a && (u[q] & 0xC0) == 0x80)
					q--;
				int l = tok_utf8_len(u + q, z - q);
				if (l != (int)(z - q) || tok_utf8_cp(u + q, l) != d->ch)
					break;
				z = q;
			}
			tl_set(t, i, sh_strndup(t->s[i] + a, z - a), z - a);
		}
		break;
	case DEC_METASPACE:
		for (i = 0; i < t->len; i++) {
			struct sh_buf b = {0};
			const unsigned char *u = (const unsigned char *)t->s[i];
			size_t q = 0, n = t->n[i];
			while (q < n) {
				int l = tok_utf8_len(u + q, n - q);
				if (!l)
					l = 1;
				if (tok_utf8_cp(u + q, l) == d->ch) {
					if (!(i == 0 && d->prepend))
						sh_buf_add(&b, " ", 1);
				} else {
					sh_buf_add(&b, u + q, (size_t)l);
				}
				q += (size_t)l;
			}
			if (!b.p)
				b.p = sh_calloc(1, 1);
			tl_set(t, i, b.p, b.n);
		}
		break;
	}
}

static void decode_into(const struct sh_tok *tok, const int32_t *ids, size_t n, int flags,
			struct sh_buf *out)
{
	if (tok->bytelevel) {
		struct sh_buf raw = {0};
		for (size_t i = 0; i < n; i++) {
			if ((flags & SH_TOK_SKIP_SPECIAL) && (tok->flags[ids[i]] & TOKF_SPECIAL))
				continue;
			sh_buf_add(&raw, tok->bytes[ids[i]], tok->bytes_len[ids[i]]);
		}
		lossy_add(out, raw.p ? raw.p : "", raw.n, 0);
		free(raw.p);
		return;
	}
	struct tl t;
	t.s = sh_calloc(n + 1, sizeof(char *));
	t.n = sh_calloc(n + 1, sizeof(size_t));
	t.len = 0;
	for (size_t i = 0; i < n; i++) {
		if ((flags & SH_TOK_SKIP_SPECIAL) && (tok->flags[ids[i]] & TOKF_SPECIAL))
			continue;
		t.s[t.len] = sh_strndup(tok->str[ids[i]], tok->str_len[ids[i]]);
		t.n[t.len] = tok->str_len[ids[i]];
		t.len++;
	}
	for (size_t k = 0; k < tok->ndec; k++)
		step(&tok->dec[k], &t);
	for (size_t i = 0; i < t.len; i++) {
		if (i && !tok->ndec)
			sh_buf_add(out, " ", 1);
		lossy_add(out, t.s[i], t.n[i], 0);
		free(t.s[i]);
	}
	free(t.s);
	free(t.n);
}

static int check_ids(const struct sh_tok *tok, const int32_t *ids, size_t n, struct sh_err *err)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || (size_t)ids[i] >= tok->ntok || !tok->str[ids[i]])
			return sh_errf(err, "token id %d out of range", (int)ids[i]);
	return SH_OK;
}

/* transformers' clean_up_tokenization, the same replacements in the same order. */
static void cleanup(struct sh_buf *b)
{
	static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's",
					   " 've", " 're"};
	static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
	for (size_t k = 0; k < SH_ARRAY_LEN(from); k++) {
		size_t fl = strlen(from[k]), tl = strlen(to[k]), r = 0, w = 0;
		if (!b->n)
			return;
		while (r < b->n) {
			if (r + fl <= b->n && !memcmp(b->p + r, from[k], fl)) {
				memmove(b->p + w, to[k], tl);
				w += tl;
				r += fl;
			} else {
				b->p[w++] = b->p[r++];
			}
		}
		b->n = w;
		b->p[w] = '\0';
	}
}

char *sh_tok_decode(const struct sh_tok *tok, const int32_t *ids, size_t n, int flags,
		    size_t *out_len, struct sh_err *err)
{
	struct sh_buf out = {0};

	if (check_ids(tok, ids, n, err))
		return NULL;
	decode_into(tok, ids, n, flags, &out);
	if (!out.p)
		out.p = sh_calloc(1, 1);
	if (flags & SH_TOK_CLEANUP)
		cleanup(&out);
	if (out_len)
		*out_len = out.n;
	return out.p;
}

/* ---- streaming ---------------------------------------------------------------------------- */

struct sh_tok_stream {
	const struct sh_tok *tok;
	int flags;
	struct sh_buf out;       /* what the last call returns */
	struct sh_buf scratch;
	char pend[8];          /* byte-level: an incomplete character held back */
	size_t npend;
	struct sh_tok_ids ids; /* general chains: the ids so far */
	size_t start;          /* general chains: first id of the decode window */
	size_t emitted;        /* general chains: bytes of the window's decode already returned */
};

struct sh_tok_stream *sh_tok_stream_new(const struct sh_tok *tok, int flags)
{
	struct sh_tok_stream *st = sh_calloc(1, sizeof(*st));
	st->tok = tok;
	st->flags = flags & SH_TOK_SKIP_SPECIAL;
	return st;
}

void sh_tok_stream_free(struct sh_tok_stream *st)
{
	if (!st)
		return;
	free(st->out.p);
	free(st->scratch.p);
	sh_tok_ids_release(&st->ids);
	free(st);
}

static int is_byte_tok(const struct sh_tok *tok, int32_t id)
{
	return byte_token(tok->str[id], tok->str_len[id]) >= 0;
}

/* General chains, in a window like vLLM's incremental detokenizer: decode ids[start..j) where j
 * leaves out a trailing run of <0xXX> tokens (whose text can still change; with special tokens
 * skipped, those count in the run: they drop out before the bytes are joined, so the bytes on
 * either side make one character), and return what goes
 * past the `emitted` bytes of that window already returned. The window then moves up to the last
 * token, which stays in it so that first-token rules (Metaspace, Strip) fall on a token already
 * returned: the decode of a window is then a prefix of the decode of a longer one. */
static void stream_general(struct sh_tok_stream *st, int final)
{
	const struct sh_tok *tok = st->tok;
	struct sh_buf full = {0};
	size_t j = st->ids.n;
	int has_fb = 0, strip_ok = 1;
	int32_t last;

	for (size_t k = 0; k < tok->ndec; k++) {
		if (tok->dec[k].kind == DEC_BYTEFALLBACK)
			has_fb = 1;
		if (tok->dec[k].kind == DEC_STRIP && (tok->dec[k].start > 1 || tok->dec[k].stop))
			strip_ok = 0;
	}
	if (has_fb && !final)
		while (j > st->start && (is_byte_tok(tok, st->ids.ids[j - 1]) ||
					 ((st->flags & SH_TOK_SKIP_SPECIAL) && (tok->flags[st->ids.ids[j - 1]] & TOKF_SPECIAL))))
			j--;
	if (j > st->start)
		decode_into(tok, st->ids.ids + st->start, j - st->start, st->flags, &full);
	if (full.n > st->emitted) {
		sh_buf_add(&st->out, full.p + st->emitted, full.n - st->emitted);
		st->emitted = full.n;
	}
	free(full.p);
	/* move the window: its first token must have text, be kept, and not be a byte token */
	if (!strip_ok || j < st->start + 8 || j != st->ids.n)
		return;
	last = st->ids.ids[j - 1];
	if (is_byte_tok(tok, last) || !tok->str_len[last] ||
	    ((st->flags & SH_TOK_SKIP_SPECIAL) && (tok->flags[last] & TOKF_SPECIAL)))
		return;
	full.p = NULL;
	full.n = full.cap = 0;
	decode_into(tok, st->ids.ids + j - 1, 1, st->flags, &full);
	st->start = j - 1;
	st->emitted = full.n;
	free(full.p);
}

const char *sh_tok_stream_push(struct sh_tok_stream *st, int32_t id, size_t *len,
			       struct sh_err *err)
{
	const struct sh_tok *tok = st->tok;

	st->out.n = 0;
	if (check_ids(tok, &id, 1, err)) {
		*len = 0;
		return NULL;
	}
	if (!tok->bytelevel) {
		sh_tok_ids_push(&st->ids, id);
		stream_general(st, 0);
	} else if (!((st->flags & SH_TOK_SKIP_SPECIAL) && (tok->flags[id] & TOKF_SPECIAL))) {
		/* the held bytes (a cut character, under 4 bytes) followed by this token's */
		size_t used;
		st->scratch.n = 0;
		sh_buf_add(&st->scratch, st->pend, st->npend);
		sh_buf_add(&st->scratch, tok->bytes[id], tok->bytes_len[id]);
		used = lossy_add(&st->out, st->scratch.p, st->scratch.n, 1);
		st->npend = st->scratch.n - used;
		SH_BUG_ON(st->npend >= sizeof(st->pend));
		memcpy(st->pend, st->scratch.p + used, st->npend);
	}
	if (!st->out.p)
		sh_buf_add(&st->out, "", 0);
	*len = st->out.n;
	return st->out.p;
}

const char *sh_tok_stream_finish(struct sh_tok_stream *st, size_t *len)
{
	st->out.n = 0;
	if (!st->tok->bytelevel) {
		stream_general(st, 1);
	} else if (st->npend) {
		lossy_add(&st->out, st->pend, st->npend, 0);
		st->npend = 0;
	}
	if (!st->out.p)
		sh_buf_add(&st->out, "", 0);
	*len = st->out.n;
	return st->out.p;
}
