/* tok.c: loading tokenizer.json / tokenizer_config.json, and the encode pipeline of Hugging Face's
 * tokenizers: added tokens -> normalizer -> pre-tokenizer -> model (tok_bpe.c) -> post-processor.
 * The semantics follow the Rust `tokenizers` crate step by step (split behaviours, empty regex
 * matches, added-token stripping), since that is what produces the reference ids. */
#include "tok_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

/* ---- small helpers ------------------------------------------------------------------------ */

uint64_t tok_hash(const void *p, size_t len)
{
	return XXH3_64bits(p, len);
}

/* GPT-2's bytes_to_unicode, inverted in closed form: printable Latin-1 stands for itself, the
 * other 68 bytes were moved to U+0100.. in byte order. */
int tok_char_byte(uint32_t cp)
{
	if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
		return (int)cp;
	if (cp >= 256 && cp <= 288)
		return (int)(cp - 256);
	if (cp >= 289 && cp <= 322)
		return (int)(cp - 289 + 127);
	if (cp == 323)
		return 173;
	return -1;
}

int tok_utf8_len(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	if (c < 0xC2)
		return 0;
	if (c < 0xE0) {
		if (n < 2 || (s[1] & 0xC0) != 0x80)
			return 0;
		return 2;
	}
	if (c < 0xF0) {
		if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
			return 0;
		if (c == 0xE0 && s[1] < 0xA0)
			return 0;
		if (c == 0xED && s[1] >= 0xA0)
			return 0;
		return 3;
	}
	if (c < 0xF5) {
		if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
			return 0;
		if (c == 0xF0 && s[1] < 0x90)
			return 0;
		if (c == 0xF4 && s[1] >= 0x90)
			return 0;
		return 4;
	}
	return 0;
}

uint32_t tok_utf8_cp(const unsigned char *s, int len)
{
	switch (len) {
	case 1: return s[0];
	case 2: return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
	case 3: return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
	default: return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
			((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
	}
}

int tok_utf8_put(char *out, uint32_t cp)
{
	unsigned char *o = (unsigned char *)out;
	if (cp < 0x80) {
		o[0] = (unsigned char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (unsigned char)(0xC0 | (cp >> 6));
		o[1] = (unsigned char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (unsigned char)(0xE0 | (cp >> 12));
		o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (unsigned char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (unsigned char)(0xF0 | (cp >> 18));
	o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (unsigned char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Offset of the first invalid byte, or n when s is valid UTF-8. */
static size_t utf8_check(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (i + 8 <= n) {
			uint64_t v;
			memcpy(&v, s + i, 8);
			if (!(v & 0x8080808080808080ull)) {
				i += 8;
				continue;
			}
		}
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		int l = tok_utf8_len(s + i, n - i);
		if (!l)
			return i;
		i += (size_t)l;
	}
	return n;
}

/* Length of the maximal invalid subpart at s (for U+FFFD substitution as WHATWG and Rust's
 * from_utf8_lossy do): the lead byte and the continuation bytes that could still have been valid.
 * *trunc is set when they are the valid start of a character cut short by the end of the input. */
size_t tok_utf8_bad_len(const unsigned char *s, size_t n, int *trunc)
{
	unsigned c = s[0];
	size_t need, i;
	unsigned lo = 0x80, hi = 0xBF;

	*trunc = 0;
	if (c >= 0xC2 && c < 0xE0)
		need = 2;
	else if (c >= 0xE0 && c < 0xF0)
		need = 3;
	else if (c >= 0xF0 && c < 0xF5)
		need = 4;
	else
		return 1;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	for (i = 1; i < need && i < n; i++) {
		if (s[i] < lo || s[i] > hi)
			return i;
		lo = 0x80;
		hi = 0xBF;
	}
	*trunc = i < need;
	return i;
}

/* Replaces invalid UTF-8 with U+FFFD. */
static char *utf8_lossy(const char *s, size_t n, size_t *out_len)
{
	struct sh_buf b = {0};
	size_t i = 0;
	sh_buf_reserve(&b, n);
	while (i < n) {
		size_t ok = utf8_check((const unsigned char *)s + i, n - i);
		sh_buf_add(&b, s + i, ok);
		i += ok;
		if (i < n) {
			sh_buf_add(&b, "\xEF\xBF\xBD", 3);
			int trunc;
			i += tok_utf8_bad_len((const unsigned char *)s + i, n - i, &trunc);
		}
	}
	*out_len = b.n;
	return b.p;
}

void sh_tok_ids_init(struct sh_tok_ids *v)
{
	memset(v, 0, sizeof(*v));
}

void sh_tok_ids_release(struct sh_tok_ids *v)
{
	free(v->ids);
	memset(v, 0, sizeof(*v));
}

void sh_tok_ids_push(struct sh_tok_ids *v, int32_t id)
{
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 64;
		v->ids = sh_realloc(v->ids, v->cap * sizeof(*v->ids));
	}
	v->ids[v->n++] = id;
}

/* ---- hash maps ---------------------------------------------------------------------------- */

static void map_init(struct tok_map *m, size_t n)
{
	size_t sz = 16;
	while (sz < n * 2)
		sz *= 2;
	m->slot = sh_malloc(sz * sizeof(*m->slot));
	m->hash = sh_calloc(sz, sizeof(*m->hash));
	memset(m->slot, 0xff, sz * sizeof(*m->slot));
	m->mask = (uint32_t)(sz - 1);
}

static void map_release(struct tok_map *m)
{
	free(m->slot);
	free(m->hash);
	memset(m, 0, sizeof(*m));
}

int32_t tok_map_get(const struct tok_map *m, char *const *keys, const uint32_t *lens,
		    const char *k, size_t len)
{
	uint64_t h = tok_hash(k, len);
	uint32_t i = (uint32_t)(h >> 32) & m->mask, h32 = (uint32_t)h;
	int32_t id;

	if (!m->slot)
		return -1;
	while ((id = m->slot[i]) >= 0) {
		if (m->hash[i] == h32 && lens[id] == len && !memcmp(keys[id], k, len))
			return id;
		i = (i + 1) & m->mask;
	}
	return -1;
}

/* Inserts id under its key unless the key is already there (the first id wins). */
static void map_put(struct tok_map *m, char *const *keys, const uint32_t *lens, int32_t id)
{
	uint64_t h = tok_hash(keys[id], lens[id]);
	uint32_t i = (uint32_t)(h >> 32) & m->mask, h32 = (uint32_t)h;
	int32_t o;

	while ((o = m->slot[i]) >= 0) {
		if (m->hash[i] == h32 && lens[o] == lens[id] && !memcmp(keys[o], keys[id], lens[id]))
			return;
		i = (i + 1) & m->mask;
	}
	m->slot[i] = id;
	m->hash[i] = h32;
}

static inline uint32_t mix64(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return (uint32_t)k;
}

int tok_merges_get(const struct tok_merges *m, int32_t a, int32_t b, uint32_t *rank, int32_t *id)
{
	uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	uint32_t i = mix64(k) & m->mask;

	if (!m->key)
		return 0;
	for (;;) {
		uint64_t s = m->key[i];
		if (s == k) {
			*rank = (uint32_t)(m->val[i] >> 32);
			*id = (int32_t)(uint32_t)m->val[i];
			return 1;
		}
		if (s == UINT64_MAX)
			return 0;
		i = (i + 1) & m->mask;
	}
}

/* Later duplicates overwrite earlier ones, as the Rust crate's HashMap insert does. */
static void merges_put(struct tok_merges *m, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
	uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	uint32_t i = mix64(k) & m->mask;

	while (m->key[i] != UINT64_MAX && m->key[i] != k)
		i = (i + 1) & m->mask;
	m->key[i] = k;
	m->val[i] = (uint64_t)rank << 32 | (uint32_t)id;
}

/* ---- loading ------------------------------------------------------------------------------ */

static const char GPT2_PATTERN[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static OnigRegex compile_re(const char *pat, struct sh_err *err)
{
	OnigRegex re = NULL;
	OnigErrorInfo ei;
	int r = onig_new(&re, (const OnigUChar *)pat, (const OnigUChar *)pat + strlen(pat),
			 ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &ei);
	if (r != ONIG_NORMAL) {
		OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
		onig_error_code_to_str(msg, r, &ei);
		sh_errf(err, "regex /%.80s/: %s", pat, (char *)msg);
		return NULL;
	}
	return re;
}

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *k, int def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	if (cJSON_IsBool(v))
		return cJSON_IsTrue(v);
	return def;
}

/* Token text of a tokenizer_config entry: a string, or an AddedToken object with "content". */
static const char *jtoken(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	if (cJSON_IsString(v))
		return v->valuestring;
	if (cJSON_IsObject(v))
		return jstr(v, "content");
	return NULL;
}

static int parse_behavior(const char *s, enum tok_split_beh *b)
{
	static const struct { const char *name; enum tok_split_beh b; } t[] = {
		{"Removed", SPLIT_REMOVED}, {"Isolated", SPLIT_ISOLATED},
		{"MergedWithPrevious", SPLIT_MERGED_PREV}, {"MergedWithNext", SPLIT_MERGED_NEXT},
		{"Contiguous", SPLIT_CONTIGUOUS},
	};
	for (size_t i = 0; s && i < SH_ARRAY_LEN(t); i++)
		if (!strcmp(s, t[i].name)) {
			*b = t[i].b;
			return 0;
		}
	return -1;
}

static struct tok_pre *pre_push(struct sh_tok *tok)
{
	tok->pre = sh_realloc(tok->pre, (tok->npre + 1) * sizeof(*tok->pre));
	memset(&tok->pre[tok->npre], 0, sizeof(*tok->pre));
	return &tok->pre[tok->npre++];
}

/* A pattern object {"Regex": ...} or {"String": ...}: compiles the regex or copies the literal. */
static int load_pattern(const cJSON *pat, OnigRegex *re, char **lit, size_t *lit_len,
			const char *what, struct sh_err *err)
{
	const char *s;
	if ((s = jstr(pat, "Regex"))) {
		*re = compile_re(s, err);
		return *re ? 0 : -1;
	}
	if ((s = jstr(pat, "String"))) {
		if (!*s)
			return sh_errf(err, "%s: empty String pattern is not supported", what);
		*lit = sh_strdup(s);
		*lit_len = strlen(s);
		return 0;
	}
	return sh_errf(err, "%s: pattern must be {\"Regex\"} or {\"String\"}", what);
}

static int load_metaspace(const cJSON *o, char *rep, int *rep_len, int *prepend, const char *what,
			  struct sh_err *err)
{
	const char *r = jstr(o, "replacement");
	const char *scheme = jstr(o, "prepend_scheme");
	if (!r)
		r = "\xE2\x96\x81";
	if (strlen(r) >= 8 || !*r)
		return sh_errf(err, "%s: bad replacement", what);
	strcpy(rep, r);
	*rep_len = (int)strlen(r);
	if (scheme) {
		if (!strcmp(scheme, "always"))
			*prepend = 2;
		else if (!strcmp(scheme, "first"))
			*prepend = 1;
		else if (!strcmp(scheme, "never"))
			*prepend = 0;
		else
			return sh_errf(err, "%s: unknown prepend_scheme \"%s\"", what, scheme);
	} else {
		*prepend = jbool(o, "add_prefix_space", 1) ? 2 : 0;
	}
	return 0;
}

static int load_pre(struct sh_tok *tok, const cJSON *o, struct sh_err *err)
{
	const char *type;
	struct tok_pre *p;

	if (!o || cJSON_IsNull(o))
		return 0;
	type = jstr(o, "type");
	if (!type)
		return sh_errf(err, "pre_tokenizer without a type");
	if (tok->bytelevel)
		return sh_errf(err, "pre_tokenizer %s after ByteLevel is not supported", type);
	if (!strcmp(type, "Sequence")) {
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers"), *e;
		cJSON_ArrayForEach(e, a)
			if (load_pre(tok, e, err))
				return -1;
		return 0;
	}
	if (!strcmp(type, "ByteLevel")) {
		if (jbool(o, "add_prefix_space", 1)) {
			p = pre_push(tok);
			p->kind = PRE_PREFIX_SPACE;
		}
		if (jbool(o, "use_regex", 1)) {
			p = pre_push(tok);
			p->kind = PRE_SPLIT;
			p->beh = SPLIT_ISOLATED;
			if (!(p->re = compile_re(GPT2_PATTERN, err)))
				return -1;
		}
		tok->bytelevel = 1;
		return 0;
	}
	if (!strcmp(type, "Split")) {
		p = pre_push(tok);
		p->kind = PRE_SPLIT;
		if (parse_behavior(jstr(o, "behavior"), &p->beh))
			return sh_errf(err, "pre_tokenizer Split: unknown behavior \"%s\"",
				       jstr(o, "behavior") ? jstr(o, "behavior") : "(none)");
		p->invert = jbool(o, "invert", 0);
		return load_pattern(cJSON_GetObjectItemCaseSensitive(o, "pattern"), &p->re, &p->lit,
				    &p->lit_len, "pre_tokenizer Split", err);
	}
	if (!strcmp(type, "Digits")) {
		p = pre_push(tok);
		p->kind = PRE_SPLIT;
		p->beh = SPLIT_ISOLATED;
		p->re = compile_re(jbool(o, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", err);
		return p->re ? 0 : -1;
	}
	if (!strcmp(type, "Whitespace")) {
		p = pre_push(tok);
		p->kind = PRE_SPLIT;
		p->beh = SPLIT_REMOVED;
		p->invert = 1;
		p->re = compile_re("\\w+|[^\\w\\s]+", err);
		return p->re ? 0 : -1;
	}
	if (!strcmp(type, "WhitespaceSplit")) {
		p = pre_push(tok);
		p->kind = PRE_SPLIT;
		p->beh = SPLIT_REMOVED;
		p->re = compile_re("\\s+", err);
		return p->re ? 0 : -1;
	}
	if (!strcmp(type, "CharDelimiterSplit")) {
		const char *d = jstr(o, "delimiter");
		if (!d || !*d)
			return sh_errf(err, "pre_tokenizer CharDelimiterSplit without a delimiter");
		p = pre_push(tok);
		p->kind = PRE_SPLIT;
		p->beh = SPLIT_REMOVED;
		p->lit = sh_strdup(d);
		p->lit_len = strlen(d);
		return 0;
	}
	if (!strcmp(type, "Metaspace")) {
		p = pre_push(tok);
		p->kind = PRE_METASPACE;
		if (load_metaspace(o, p->rep, &p->rep_len, &p->prepend, "pre_tokenizer Metaspace", err))
			return -1;
		p->msplit = jbool(o, "split", 1);
		return 0;
	}
	return sh_errf(err, "unsupported pre_tokenizer type \"%s\"", type);
}

static int load_norm(struct sh_tok *tok, const cJSON *o, struct sh_err *err)
{
	static const struct { const char *name; enum tok_norm_kind k; } simple[] = {
		{"NFC", NORM_NFC}, {"NFD", NORM_NFD}, {"NFKC", NORM_NFKC}, {"NFKD", NORM_NFKD},
		{"Lowercase", NORM_LOWER},
	};
	const char *type;
	struct tok_norm *n;

	if (!o || cJSON_IsNull(o))
		return 0;
	type = jstr(o, "type");
	if (!type)
		return sh_errf(err, "normalizer without a type");
	if (!strcmp(type, "Sequence")) {
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "normalizers"), *e;
		cJSON_ArrayForEach(e, a)
			if (load_norm(tok, e, err))
				return -1;
		return 0;
	}
	tok->norm = sh_realloc(tok->norm, (tok->nnorm + 1) * sizeof(*tok->norm));
	n = &tok->norm[tok->nnorm];
	memset(n, 0, sizeof(*n));
	for (size_t i = 0; i < SH_ARRAY_LEN(simple); i++)
		if (!strcmp(type, simple[i].name)) {
			n->kind = simple[i].k;
			tok->nnorm++;
			return 0;
		}
	if (!strcmp(type, "Strip")) {
		n->kind = NORM_STRIP;
		n->left = jbool(o, "strip_left", 1);
		n->right = jbool(o, "strip_right", 1);
		tok->nnorm++;
		return 0;
	}
	if (!strcmp(type, "Prepend")) {
		const char *s = jstr(o, "prepend");
		if (!s)
			return sh_errf(err, "normalizer Prepend without \"prepend\"");
		n->kind = NORM_PREPEND;
		n->with = sh_strdup(s);
		n->with_len = strlen(s);
		tok->nnorm++;
		return 0;
	}
	if (!strcmp(type, "Replace")) {
		const char *s = jstr(o, "content");
		if (!s)
			return sh_errf(err, "normalizer Replace without \"content\"");
		n->kind = NORM_REPLACE;
		n->with = sh_strdup(s);
		n->with_len = strlen(s);
		tok->nnorm++;
		return load_pattern(cJSON_GetObjectItemCaseSensitive(o, "pattern"), &n->re, &n->pat,
				    &n->pat_len, "normalizer Replace", err);
	}
	return sh_errf(err, "unsupported normalizer type \"%s\"", type);
}

static int load_dec(struct sh_tok *tok, const cJSON *o, struct sh_err *err)
{
	const char *type;
	struct tok_dec *d;

	if (!o || cJSON_IsNull(o))
		return 0;
	type = jstr(o, "type");
	if (!type)
		return sh_errf(err, "decoder without a type");
	if (!strcmp(type, "Sequence")) {
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "decoders"), *e;
		cJSON_ArrayForEach(e, a)
			if (load_dec(tok, e, err))
				return -1;
		return 0;
	}
	tok->dec = sh_realloc(tok->dec, (tok->ndec + 1) * sizeof(*tok->dec));
	d = &tok->dec[tok->ndec];
	memset(d, 0, sizeof(*d));
	if (!strcmp(type, "ByteLevel")) {
		d->kind = DEC_BYTELEVEL;
	} else if (!strcmp(type, "ByteFallback")) {
		d->kind = DEC_BYTEFALLBACK;
	} else if (!strcmp(type, "Fuse")) {
		d->kind = DEC_FUSE;
	} else if (!strcmp(type, "Replace")) {
		const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
		const char *s = jstr(pat, "String"), *c = jstr(o, "content");
		if (!s || !*s || !c)
			return sh_errf(err, "decoder Replace: only a non-empty String pattern is supported");
		d->kind = DEC_REPLACE;
		d->pat = sh_strdup(s);
		d->pat_len = strlen(s);
		d->with = sh_strdup(c);
		d->with_len = strlen(c);
	} else if (!strcmp(type, "Strip")) {
		const char *c = jstr(o, "content");
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "start");
		const cJSON *sp = cJSON_GetObjectItemCaseSensitive(o, "stop");
		int l;
		if (!c || !(l = tok_utf8_len((const unsigned char *)c, strlen(c))) || c[l])
			return sh_errf(err, "decoder Strip: content must be one character");
		d->kind = DEC_STRIP;
		d->ch = tok_utf8_cp((const unsigned char *)c, l);
		d->start = cJSON_IsNumber(st) ? st->valueint : 0;
		d->stop = cJSON_IsNumber(sp) ? sp->valueint : 0;
		if (d->start < 0 || d->stop < 0 || d->start > 1024 || d->stop > 1024)
			return sh_errf(err, "decoder Strip: start/stop out of range");
	} else if (!strcmp(type, "Metaspace")) {
		char rep[8];
		int rl;
		d->kind = DEC_METASPACE;
		if (load_metaspace(o, rep, &rl, &d->prepend, "decoder Metaspace", err))
			return -1;
		if (tok_utf8_len((const unsigned char *)rep, (size_t)rl) != rl)
			return sh_errf(err, "decoder Metaspace: replacement must be one character");
		d->ch = tok_utf8_cp((const unsigned char *)rep, rl);
	} else {
		return sh_errf(err, "unsupported decoder type \"%s\"", type);
	}
	tok->ndec++;
	return 0;
}

static int tmpl_push_special(struct sh_tok *tok, const cJSON *specials, const char *name,
			     struct sh_err *err)
{
	const cJSON *sp = cJSON_GetObjectItemCaseSensitive(specials, name), *ids, *e;
	struct tok_tmpl_item *it;

	if (!sp)
		return sh_errf(err, "post_processor: special token \"%s\" not declared", name);
	ids = cJSON_GetObjectItemCaseSensitive(sp, "ids");
	tok->tmpl = sh_realloc(tok->tmpl, (tok->ntmpl + 1) * sizeof(*tok->tmpl));
	it = &tok->tmpl[tok->ntmpl++];
	it->special = 1;
	it->n = 0;
	it->ids = sh_malloc((size_t)cJSON_GetArraySize(ids) * sizeof(int32_t) + 1);
	cJSON_ArrayForEach(e, ids) {
		if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (double)tok->ntok ||
		    !tok->str[(int32_t)e->valuedouble]) /* encode would give ids that decode refuses */
			return sh_errf(err, "post_processor: id %.0f of \"%s\" is no token of the vocabulary", e->valuedouble,
				       name);
		it->ids[it->n++] = (int32_t)e->valuedouble;
	}
	return 0;
}

static void tmpl_push_seq(struct sh_tok *tok)
{
	tok->tmpl = sh_realloc(tok->tmpl, (tok->ntmpl + 1) * sizeof(*tok->tmpl));
	memset(&tok->tmpl[tok->ntmpl++], 0, sizeof(*tok->tmpl));
}

static int tmpl_push_id(struct sh_tok *tok, const cJSON *pair, struct sh_err *err)
{
	const cJSON *id = cJSON_GetArrayItem(pair, 1);
	struct tok_tmpl_item *it;
	if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (double)tok->ntok ||
	    !tok->str[(int32_t)id->valuedouble])
		return sh_errf(err, "post_processor: bad cls/sep id");
	tok->tmpl = sh_realloc(tok->tmpl, (tok->ntmpl + 1) * sizeof(*tok->tmpl));
	it = &tok->tmpl[tok->ntmpl++];
	it->special = 1;
	it->ids = sh_malloc(sizeof(int32_t));
	it->ids[0] = (int32_t)id->valuedouble;
	it->n = 1;
	return 0;
}

static int load_post(struct sh_tok *tok, const cJSON *o, struct sh_err *err)
{
	const char *type;

	if (!o || cJSON_IsNull(o))
		return 0;
	type = jstr(o, "type");
	if (!type)
		return sh_errf(err, "post_processor without a type");
	if (!strcmp(type, "ByteLevel"))
		return 0;   /* offsets only */
	if (!strcmp(type, "Sequence")) {
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "processors"), *e;
		cJSON_ArrayForEach(e, a)
			if (load_post(tok, e, err))
				return -1;
		return 0;
	}
	if (tok->ntmpl)
		return sh_errf(err, "post_processor: more than one template");
	if (!strcmp(type, "TemplateProcessing")) {
		const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single"), *e;
		const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
		int seq = 0;
		cJSON_ArrayForEach(e, single) {
			const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
			if (sp) {
				if (tmpl_push_special(tok, specials, jstr(sp, "id") ? jstr(sp, "id") : "", err))
					return -1;
			} else if (cJSON_GetObjectItemCaseSensitive(e, "Sequence")) {
				tmpl_push_seq(tok);
				seq++;
			} else {
				return sh_errf(err, "post_processor TemplateProcessing: bad item");
			}
		}
		if (seq != 1)
			return sh_errf(err, "post_processor TemplateProcessing: \"single\" must hold one Sequence");
		return 0;
	}
	if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
		if (tmpl_push_id(tok, cJSON_GetObjectItemCaseSensitive(o, "cls"), err))
			return -1;
		tmpl_push_seq(tok);
		return tmpl_push_id(tok, cJSON_GetObjectItemCaseSensitive(o, "sep"), err);
	}
	return sh_errf(err, "unsupported post_processor type \"%s\"", type);
}

/* Converts a byte-level string ("Ġthe") to the bytes it stands for; -1 if some character is not
 * one of the 256 (the token is then used as written, as the ByteLevel decoder does). */
static int bytelevel_bytes(const char *s, size_t n, char *out, size_t *out_len)
{
	size_t i = 0, o = 0;
	while (i < n) {
		int l = tok_utf8_len((const unsigned char *)s + i, n - i), b;
		if (!l || (b = tok_char_byte(tok_utf8_cp((const unsigned char *)s + i, l))) < 0)
			return -1;
		out[o++] = (char)b;
		i += (size_t)l;
	}
	*out_len = o;
	return 0;
}

static void set_token(struct sh_tok *tok, int32_t id, const char *s)
{
	if (tok->str[id] && !strcmp(tok->str[id], s))
		return;
	if (tok->bytes[id] && tok->bytes[id] != tok->str[id])
		free(tok->bytes[id]);
	free(tok->str[id]);
	tok->str[id] = sh_strdup(s);
	tok->str_len[id] = (uint32_t)strlen(s);
	tok->bytes[id] = tok->str[id];
	tok->bytes_len[id] = tok->str_len[id];
	if (tok->bytelevel) {
		char *b = sh_malloc(tok->str_len[id] + 1);
		size_t bl;
		if (!bytelevel_bytes(s, tok->str_len[id], b, &bl)) {
			b[bl] = '\0';
			tok->bytes[id] = b;
			tok->bytes_len[id] = (uint32_t)bl;
			tok->flags[id] |= TOKF_BYTE;
		} else {
			free(b);
			tok->flags[id] &= (uint8_t)~TOKF_BYTE;
		}
	}
	tok->flags[id] |= TOKF_USED;
}

/* The id of a merge part given in the file's own alphabet. */
static int32_t vocab_id_of(struct sh_tok *tok, const char *s, size_t n, char *scratch)
{
	size_t bl;
	if (!tok->bytelevel)
		return tok_map_get(&tok->vocab, tok->bytes, tok->bytes_len, s, n);
	if (bytelevel_bytes(s, n, scratch, &bl))
		return -1;
	return tok_map_get(&tok->vocab, tok->bytes, tok->bytes_len, scratch, bl);
}

static int load_model(struct sh_tok *tok, const cJSON *m, const cJSON *added, struct sh_err *err)
{
	const cJSON *vocab, *merges, *e, *v;
	const char *type = jstr(m, "type"), *s;
	double maxid = -1;
	size_t nmerges, rank = 0;
	char *scratch = NULL;
	int rc = -1;

	if (!cJSON_IsObject(m))
		return sh_errf(err, "tokenizer.json has no model");
	merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
	if (type ? strcmp(type, "BPE") : !merges)
		return sh_errf(err, "unsupported model type \"%s\" (only BPE)", type ? type : "(none)");
	v = cJSON_GetObjectItemCaseSensitive(m, "dropout");
	if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
		return sh_errf(err, "unsupported model option dropout");
	if ((s = jstr(m, "continuing_subword_prefix")) && *s)
		return sh_errf(err, "unsupported model option continuing_subword_prefix");
	if ((s = jstr(m, "end_of_word_suffix")) && *s)
		return sh_errf(err, "unsupported model option end_of_word_suffix");
	tok->byte_fallback = jbool(m, "byte_fallback", 0);
	tok->ignore_merges = jbool(m, "ignore_merges", 0);
	tok->fuse_unk = jbool(m, "fuse_unk", 0);

	vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
	if (!cJSON_IsObject(vocab))
		return sh_errf(err, "model has no vocab object");
	cJSON_ArrayForEach(e, vocab) {
		if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 1e8 ||
		    e->valuedouble != (double)(int32_t)e->valuedouble)
			return sh_errf(err, "vocab entry \"%.60s\": bad id", e->string);
		if (e->valuedouble > maxid)
			maxid = e->valuedouble;
	}
	cJSON_ArrayForEach(e, added) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
		if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 1e8 ||
		    !jstr(e, "content"))
			return sh_errf(err, "added_tokens: entry without id or content");
		if (id->valuedouble > maxid)
			maxid = id->valuedouble;
	}
	/* added tokens may get ids past the file's (see load_added): each new one takes the next id
	 * after the largest so far, which may be a sparse vocabulary's largest: room for them all */
	tok->nvocab = (size_t)cJSON_GetArraySize(vocab);
	tok->ntok = SH_MAX((size_t)(maxid + 1), tok->nvocab) + (size_t)cJSON_GetArraySize(added) + 1;
	tok->str = sh_calloc(tok->ntok + 1, sizeof(*tok->str));
	tok->bytes = sh_calloc(tok->ntok + 1, sizeof(*tok->bytes));
	tok->str_len = sh_calloc(tok->ntok + 1, sizeof(*tok->str_len));
	tok->bytes_len = sh_calloc(tok->ntok + 1, sizeof(*tok->bytes_len));
	tok->flags = sh_calloc(tok->ntok + 1, 1);

	cJSON_ArrayForEach(e, vocab) {
		int32_t id = (int32_t)e->valuedouble;
		if (tok->flags[id] & TOKF_VOCAB)
			return sh_errf(err, "vocab: id %d used twice", id);
		set_token(tok, id, e->string);
		tok->flags[id] |= TOKF_VOCAB;
	}
	map_init(&tok->vocab, (size_t)cJSON_GetArraySize(vocab));
	for (size_t i = 0; i < tok->ntok; i++)
		if ((tok->flags[i] & TOKF_VOCAB) && (!tok->bytelevel || (tok->flags[i] & TOKF_BYTE)))
			map_put(&tok->vocab, tok->bytes, tok->bytes_len, (int32_t)i);

	for (int b = 0; b < 256; b++) {
		char one = (char)b, hex[8];
		tok->byte_id[b] = tok->bytelevel ? tok_map_get(&tok->vocab, tok->bytes, tok->bytes_len, &one, 1) : -1;
		snprintf(hex, sizeof(hex), "<0x%02X>", b);
		tok->fallback_id[b] = tok_map_get(&tok->vocab, tok->bytes, tok->bytes_len, hex, 6);
	}
	tok->unk_id = -1;
	if ((s = jstr(m, "unk_token"))) {
		tok->unk_id = tok_map_get(&tok->vocab, tok->str, tok->str_len, s, strlen(s));
		if (tok->unk_id < 0 && tok->bytelevel) {
			size_t bl;
			char *b = sh_malloc(strlen(s) + 1);
			if (!bytelevel_bytes(s, strlen(s), b, &bl))
				tok->unk_id = tok_map_get(&tok->vocab, tok->bytes, tok->bytes_len, b, bl);
			free(b);
		}
		if (tok->unk_id < 0)
			return sh_errf(err, "unk_token \"%.60s\" is not in the vocab", s);
	}

	/* merges: "a b" or ["a", "b"]; rank = position */
	if (!cJSON_IsArray(merges))
		return sh_errf(err, "model has no merges array");
	nmerges = (size_t)cJSON_GetArraySize(merges);
	{
		size_t sz = 16;
		while (sz < nmerges * 2)
			sz *= 2;
		tok->merges.key = sh_malloc(sz * sizeof(uint64_t));
		tok->merges.val = sh_malloc(sz * sizeof(uint64_t));
		memset(tok->merges.key, 0xff, sz * sizeof(uint64_t));
		tok->merges.mask = (uint32_t)(sz - 1);
	}
	cJSON_ArrayForEach(e, merges) {
		const char *a, *b;
		size_t al, bl;
		int32_t ia, ib, inew;
		char *cat;
		if (cJSON_IsString(e)) {
			const char *sp = strchr(e->valuestring, ' ');
			a = e->valuestring;
			if (!sp || strchr(sp + 1, ' '))
				{ sh_errf(err, "merge %zu \"%.60s\" is not two tokens", rank, a); goto out; }
			al = (size_t)(sp - a);
			b = sp + 1;
			bl = strlen(b);
		} else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
			   cJSON_IsString(cJSON_GetArrayItem(e, 0)) && cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
			a = cJSON_GetArrayItem(e, 0)->valuestring;
			b = cJSON_GetArrayItem(e, 1)->valuestring;
			al = strlen(a);
			bl = strlen(b);
		} else {
			sh_errf(err, "merge %zu: not a string or a pair", rank);
			goto out;
		}
		cat = sh_malloc(al + bl + 1);
		scratch = sh_realloc(scratch, al + bl + 1);
		memcpy(cat, a, al);
		memcpy(cat + al, b, bl);
		cat[al + bl] = '\0';
		ia = vocab_id_of(tok, a, al, scratch);
		ib = vocab_id_of(tok, b, bl, scratch);
		inew = vocab_id_of(tok, cat, al + bl, scratch);
		if (ia < 0 || ib < 0 || inew < 0) {
			sh_errf(err, "merge %zu: token \"%.60s\" not in the vocab",
				rank, ia < 0 ? a : ib < 0 ? b : cat);
			free(cat);
			goto out;
		}
		free(cat);
		merges_put(&tok->merges, ia, ib, (uint32_t)rank, inew);
		rank++;
	}
	rc = 0;
out:
	free(scratch);
	return rc;
}

/* What a matcher compares: the content, or for normalized tokens the normalized content. */
static const char *am_text(const struct tok_added *a, uint32_t *len)
{
	*len = a->normalized ? a->nlen : a->len;
	return a->normalized ? a->ncontent : a->content;
}

static int32_t am_node(struct tok_amatch *am, uint8_t label)
{
	if (am->nodes == am->cap) {
		am->cap = am->cap ? am->cap * 2 : 256;
		am->kid = sh_realloc(am->kid, am->cap * sizeof(*am->kid));
		am->sib = sh_realloc(am->sib, am->cap * sizeof(*am->sib));
		am->label = sh_realloc(am->label, am->cap * sizeof(*am->label));
		am->term = sh_realloc(am->term, am->cap * sizeof(*am->term));
	}
	am->kid[am->nodes] = am->sib[am->nodes] = am->term[am->nodes] = -1;
	am->label[am->nodes] = label;
	return (int32_t)am->nodes++;
}

/* The child of node x by byte b, or -1. */
static int32_t am_child(const struct tok_amatch *am, int32_t x, uint8_t b)
{
	int32_t c;
	for (c = am->kid[x]; c >= 0 && am->label[c] != b; c = am->sib[c])
		;
	return c;
}

static void amatch_build(struct tok_amatch *am, struct sh_tok *tok, int normalized)
{
	size_t n = 0;
	for (int i = 0; i < 256; i++)
		am->root[i] = -1;
	am_node(am, 0); /* the root (unused: root[] holds its children) */
	for (size_t i = 0; i < tok->nadded; i++) {
		struct tok_added *a = &tok->added[i];
		uint32_t l;
		const char *c;
		int32_t x;
		if (a->normalized != normalized)
			continue;
		c = am_text(a, &l);
		if (!l)
			continue;
		am->first[(unsigned char)c[0]] = 1;
		if (am->root[(unsigned char)c[0]] < 0)
			am->root[(unsigned char)c[0]] = am_node(am, (uint8_t)c[0]);
		x = am->root[(unsigned char)c[0]];
		for (uint32_t k = 1; k < l; k++) {
			int32_t y = am_child(am, x, (uint8_t)c[k]);
			if (y < 0) {
				y = am_node(am, (uint8_t)c[k]);
				am->sib[y] = am->kid[x];
				am->kid[x] = y;
			}
			x = y;
		}
		if (am->term[x] < 0) /* the same text twice: the first token */
			am->term[x] = (int32_t)i;
		n++;
	}
	am->n = n;
}

static void amatch_release(struct tok_amatch *am)
{
	free(am->kid);
	free(am->sib);
	free(am->label);
	free(am->term);
	memset(am, 0, sizeof(*am));
}

/* Added tokens get their ids as the Rust crate gives them when it reads a file (the "id" written
 * there is only checked): a content already in the vocabulary keeps its vocabulary id, a content
 * seen before among the added tokens keeps that id (the later flags win), any other takes the next
 * id after the vocabulary and the added tokens so far. In the files models ship the two agree. */
static int load_added(struct sh_tok *tok, const cJSON *added, struct sh_err *err)
{
	const cJSON *e;
	size_t n = (size_t)cJSON_GetArraySize(added), maxused = 0;
	struct tok_map vstr;
	int64_t max_added = -1;

	map_init(&vstr, tok->nvocab + 1);
	for (size_t i = 0; i < tok->ntok; i++) {
		if (tok->flags[i] & TOKF_VOCAB) {
			map_put(&vstr, tok->str, tok->str_len, (int32_t)i);
			maxused = i;
		}
	}
	tok->added = sh_calloc(n + 1, sizeof(*tok->added));
	cJSON_ArrayForEach(e, added) {
		const char *content = jstr(e, "content");
		struct tok_added *a = NULL;
		int32_t id = -1;
		if (!*content)
			continue;
		for (size_t k = 0; k < tok->nadded; k++)
			if (!strcmp(tok->added[k].content, content)) {
				a = &tok->added[k];
				id = a->id;
			}
		if (!a) {
			id = tok_map_get(&vstr, tok->str, tok->str_len, content, strlen(content));
			if (id < 0)
				id = (int32_t)(max_added >= (int64_t)tok->nvocab || !tok->nvocab ?
					       max_added + 1 : (int64_t)tok->nvocab);
			a = &tok->added[tok->nadded++];
			a->id = id;
			a->content = sh_strdup(content);
			a->len = (uint32_t)strlen(content);
		}
		if ((size_t)id >= tok->ntok) /* load_model sized the tables for every case: a bug */
			return sh_errf(err, "added_tokens: id %d past the token tables (%zu)", id, tok->ntok);
		if (id > max_added)
			max_added = id;
		a->special = (uint8_t)jbool(e, "special", 0);
		a->lstrip = (uint8_t)jbool(e, "lstrip", 0);
		a->rstrip = (uint8_t)jbool(e, "rstrip", 0);
		a->single_word = (uint8_t)jbool(e, "single_word", 0);
		a->normalized = (uint8_t)jbool(e, "normalized", !a->special);
		if (!(tok->flags[id] & TOKF_VOCAB))
			set_token(tok, id, a->content);
		tok->flags[id] |= TOKF_USED | TOKF_ADDED;
		tok->flags[id] = (uint8_t)((tok->flags[id] & ~TOKF_SPECIAL) | (a->special ? TOKF_SPECIAL : 0));
		if ((size_t)id > maxused)
			maxused = (size_t)id;
	}
	map_release(&vstr);
	tok->ntok = maxused + 1;
	return 0;
}

static int load_config(struct sh_tok *tok, const cJSON *c, struct sh_err *err)
{
	const cJSON *ct = cJSON_GetObjectItemCaseSensitive(c, "chat_template"), *e;
	const char *s;
	(void)err;
	if (cJSON_IsString(ct)) {
		tok->chat_template = sh_strdup(ct->valuestring);
	} else if (cJSON_IsArray(ct)) {
		cJSON_ArrayForEach(e, ct) {
			const char *name = jstr(e, "name"), *t = jstr(e, "template");
			if (name && t && !strcmp(name, "default"))
				tok->chat_template = sh_strdup(t);
		}
	}
	if ((s = jtoken(c, "bos_token"))) {
		tok->bos = sh_strdup(s);
		tok->bos_id = sh_tok_token_id(tok, s);
	}
	if ((s = jtoken(c, "eos_token"))) {
		tok->eos = sh_strdup(s);
		tok->eos_id = sh_tok_token_id(tok, s);
	}
	tok->cleanup = jbool(c, "clean_up_tokenization_spaces", 0);
	return 0;
}

static void added_normalize(struct sh_tok *tok);

struct sh_tok *sh_tok_new_json(const char *json, size_t len, const char *cfg, size_t cfg_len,
			       struct sh_err *err)
{
	cJSON *root = NULL, *conf = NULL;
	struct sh_tok *tok;
	const cJSON *added;
	int has_bl_dec = 0;

	if (len > SH_TOK_MAX_FILE) {
		sh_errf(err, "tokenizer.json larger than %zu bytes", SH_TOK_MAX_FILE);
		return NULL;
	}
	root = cJSON_ParseWithLength(json, len);
	if (!cJSON_IsObject(root)) {
		sh_errf(err, "tokenizer.json is not a JSON object");
		cJSON_Delete(root);
		return NULL;
	}
	if (cfg) {
		conf = cJSON_ParseWithLength(cfg, cfg_len);
		if (!cJSON_IsObject(conf)) {
			sh_errf(err, "tokenizer_config.json is not a JSON object");
			cJSON_Delete(root);
			cJSON_Delete(conf);
			return NULL;
		}
	}
	tok = sh_calloc(1, sizeof(*tok));
	pthread_mutex_init(&tok->cache_lock, NULL);
	tok->bos_id = tok->eos_id = -1;
	tok->unk_id = -1;
	added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added)) {
		sh_errf(err, "added_tokens is not an array");
		goto fail;
	}
	/* the pre-tokenizer first: it decides whether BPE runs over bytes */
	if (load_pre(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err) ||
	    load_model(tok, cJSON_GetObjectItemCaseSensitive(root, "model"), added, err) ||
	    load_added(tok, added, err) ||
	    load_norm(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err) ||
	    load_post(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), err) ||
	    load_dec(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder"), err))
		goto fail;
	added_normalize(tok);
	amatch_build(&tok->am_raw, tok, 0);
	amatch_build(&tok->am_norm, tok, 1);
	for (size_t i = 0; i < tok->ndec; i++)
		if (tok->dec[i].kind == DEC_BYTELEVEL)
			has_bl_dec = 1;
	if (has_bl_dec != tok->bytelevel) {
		sh_errf(err, "a ByteLevel %s without a ByteLevel %s is not supported",
			tok->bytelevel ? "pre_tokenizer" : "decoder",
			tok->bytelevel ? "decoder" : "pre_tokenizer");
		goto fail;
	}
	if (tok->bytelevel && tok->ndec != 1) {
		sh_errf(err, "ByteLevel decoder combined with other decoders is not supported");
		goto fail;
	}
	/* how far a piece may grow through the pre-tokenizer (bytes per input byte, plus a constant) */
	tok->pre_grow = 1;
	for (size_t i = 0; i < tok->npre; i++)
		if (tok->pre[i].kind == PRE_METASPACE)
			tok->pre_grow *= (size_t)tok->pre[i].rep_len;
		else if (tok->pre[i].kind == PRE_PREFIX_SPACE)
			tok->pre_grow *= 2;
	if (tok->pre_grow > 64) {
		sh_errf(err, "pre_tokenizer: too many rewriting steps");
		goto fail;
	}
	{
		struct tok_map *m = &tok->strmap;
		map_init(m, tok->ntok);
		for (size_t i = 0; i < tok->ntok; i++)
			if (tok->str[i])
				map_put(m, tok->str, tok->str_len, (int32_t)i);
	}
	if (conf)
		load_config(tok, conf, err);
	tok->cache = sh_calloc(TOK_CACHE_SLOTS, sizeof(*tok->cache));
	cJSON_Delete(root);
	cJSON_Delete(conf);
	return tok;
fail:
	cJSON_Delete(root);
	cJSON_Delete(conf);
	sh_tok_free(tok);
	return NULL;
}

struct sh_tok *sh_tok_new(const char *dir, struct sh_err *err)
{
	char path[4096];
	char *tj, *cj = NULL;
	size_t tl, cl = 0;
	struct sh_tok *tok;
	FILE *f;

	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	if (!(tj = sh_read_file(path, SH_TOK_MAX_FILE, &tl, err)))
		return NULL;
	snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
	if ((f = fopen(path, "rb"))) {
		fclose(f);
		if (!(cj = sh_read_file(path, SH_TOK_MAX_FILE, &cl, err))) {
			free(tj);
			return NULL;
		}
	}
	tok = sh_tok_new_json(tj, tl, cj, cl, err);
	if (!tok && err) {
		char m[sizeof(err->msg)];
		snprintf(m, sizeof(m), "%s", err->msg);
		sh_errf(err, "%s/tokenizer.json: %s", dir, m);
	}
	free(tj);
	free(cj);
	return tok;
}

void sh_tok_free(struct sh_tok *tok)
{
	if (!tok)
		return;
	for (size_t i = 0; i < tok->ntok; i++) {
		if (tok->bytes && tok->bytes[i] != tok->str[i])
			free(tok->bytes[i]);
		if (tok->str)
			free(tok->str[i]);
	}
	free(tok->str);
	free(tok->bytes);
	free(tok->str_len);
	free(tok->bytes_len);
	free(tok->flags);
	map_release(&tok->vocab);
	map_release(&tok->strmap);
	free(tok->merges.key);
	free(tok->merges.val);
	for (size_t i = 0; i < tok->nadded; i++) {
		free(tok->added[i].content);
		free(tok->added[i].ncontent);
	}
	free(tok->added);
	amatch_release(&tok->am_raw);
	amatch_release(&tok->am_norm);
	for (size_t i = 0; i < tok->nnorm; i++) {
		if (tok->norm[i].re)
			onig_free(tok->norm[i].re);
		free(tok->norm[i].pat);
		free(tok->norm[i].with);
	}
	free(tok->norm);
	for (size_t i = 0; i < tok->npre; i++) {
		if (tok->pre[i].re)
			onig_free(tok->pre[i].re);
		free(tok->pre[i].lit);
	}
	free(tok->pre);
	for (size_t i = 0; i < tok->ndec; i++) {
		free(tok->dec[i].pat);
		free(tok->dec[i].with);
	}
	free(tok->dec);
	for (size_t i = 0; i < tok->ntmpl; i++)
		free(tok->tmpl[i].ids);
	free(tok->tmpl);
	free(tok->chat_template);
	free(tok->bos);
	free(tok->eos);
	free(tok->cache);
	pthread_mutex_destroy(&tok->cache_lock);
	free(tok);
}

/* ---- accessors ---------------------------------------------------------------------------- */

size_t sh_tok_vocab_size(const struct sh_tok *tok) { return tok->ntok; }
const char *sh_tok_chat_template(const struct sh_tok *tok) { return tok->chat_template; }
const char *sh_tok_bos(const struct sh_tok *tok) { return tok->bos; }
const char *sh_tok_eos(const struct sh_tok *tok) { return tok->eos; }
int32_t sh_tok_bos_id(const struct sh_tok *tok) { return tok->bos_id; }
int32_t sh_tok_eos_id(const struct sh_tok *tok) { return tok->eos_id; }
int sh_tok_cleanup_default(const struct sh_tok *tok) { return tok->cleanup; }

int32_t sh_tok_token_id(const struct sh_tok *tok, const char *token)
{
	return tok_map_get(&tok->strmap, tok->str, tok->str_len, token, strlen(token));
}

const char *sh_tok_token_str(const struct sh_tok *tok, int32_t id)
{
	if (id < 0 || (size_t)id >= tok->ntok)
		return NULL;
	return tok->str[id];
}

int sh_tok_is_special(const struct sh_tok *tok, int32_t id)
{
	return id >= 0 && (size_t)id < tok->ntok && (tok->flags[id] & TOKF_SPECIAL);
}

/* ---- encoding ----------------------------------------------------------------------------- */

struct piece {
	uint32_t off, len;
	uint8_t first;   /* starts at offset 0 of the input (Metaspace prepend_scheme "first") */
};
struct pieces {
	struct piece *p;
	size_t n, cap;
};
struct span {
	uint32_t s, e;
	uint8_t m;
};

struct enc {
	struct sh_tok *tok;
	int flags;
	struct sh_tok_ids *out;
	struct tok_work w;
	OnigRegion *region;
	struct sh_buf b;            /* rewritten text (normalizer, Metaspace, prefix space) */
	struct pieces pa, pb;
	struct span *sp;
	size_t nsp, capsp;
};

static void pieces_add(struct pieces *v, uint32_t off, uint32_t len, uint8_t first)
{
	if (!len)
		return;
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 256;
		v->p = sh_realloc(v->p, v->cap * sizeof(*v->p));
	}
	v->p[v->n].off = off;
	v->p[v->n].len = len;
	v->p[v->n].first = first;
	v->n++;
}

static void span_add(struct enc *e, size_t s, size_t en, int m)
{
	if (e->nsp == e->capsp) {
		e->capsp = e->capsp ? e->capsp * 2 : 256;
		e->sp = sh_realloc(e->sp, e->capsp * sizeof(*e->sp));
	}
	e->sp[e->nsp].s = (uint32_t)s;
	e->sp[e->nsp].e = (uint32_t)en;
	e->sp[e->nsp].m = (uint8_t)m;
	e->nsp++;
}

static int is_ws(uint32_t cp)
{
	if ((cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
	    (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
	    cp == 0x205F || cp == 0x3000)
		return 1;
	return 0;
}

static int is_word_cp(uint32_t cp)
{
	utf8proc_category_t c;
	if (cp == '_')
		return 1;
	c = utf8proc_category((utf8proc_int32_t)cp);
	return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
	       (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

/* The code point that ends at s[end) (s valid UTF-8, end > 0). */
static uint32_t cp_before(const char *s, size_t end, size_t *start)
{
	size_t i = end - 1;
	while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
		i--;
	*start = i;
	return tok_utf8_cp((const unsigned char *)s + i, (int)(end - i));
}

/* Regex matches over [s, s+n) as (start, end, is_match) spans covering everything, as the Rust
 * crate's find_matches does over onig's find_iter (an empty match right after the previous match
 * is skipped by advancing one character). */
static void find_spans(struct enc *e, const struct tok_pre *p, const char *s, size_t n)
{
	size_t prev = 0, last_end = 0;
	long last_match_end = -1;

	e->nsp = 0;
	if (!p->re) {
		const char *q = s, *end = s + n;
		while (q < end) {
			const char *hit = memmem(q, (size_t)(end - q), p->lit, p->lit_len);
			if (!hit)
				break;
			if ((size_t)(hit - s) != prev)
				span_add(e, prev, (size_t)(hit - s), 0);
			span_add(e, (size_t)(hit - s), (size_t)(hit - s) + p->lit_len, 1);
			prev = (size_t)(hit - s) + p->lit_len;
			q = hit + p->lit_len;
		}
	} else {
		const OnigUChar *us = (const OnigUChar *)s;
		while (last_end <= n) {
			int r;
			size_t ms, me;
			onig_region_clear(e->region);
			r = onig_search(p->re, us, us + n, us + last_end, us + n, e->region, ONIG_OPTION_NONE);
			if (r < 0)
				break;
			ms = (size_t)e->region->beg[0];
			me = (size_t)e->region->end[0];
			if (me == ms && last_match_end == (long)me) {
				if (last_end >= n)
					break;
				int l = tok_utf8_len(us + last_end, n - last_end);
				last_end += l ? (size_t)l : 1;
				continue;
			}
			last_end = me;
			last_match_end = (long)me;
			if (ms != prev)
				span_add(e, prev, ms, 0);
			span_add(e, ms, me, 1);
			prev = me;
		}
	}
	if (prev != n || n == 0)
		span_add(e, prev, n, 0);
}

/* Applies a split behaviour to the spans of one piece, adding the pieces kept to out. */
static void split_piece(struct enc *e, const struct tok_pre *p, const struct piece *pc,
			struct pieces *out)
{
	size_t i;
	struct span *sp = e->sp;
	size_t nsp = e->nsp;
	uint32_t base = pc->off;

	if (p->invert)
		for (i = 0; i < nsp; i++)
			sp[i].m = !sp[i].m;
	switch (p->beh) {
	case SPLIT_ISOLATED:
		for (i = 0; i < nsp; i++)
			pieces_add(out, base + sp[i].s, sp[i].e - sp[i].s, pc->first && sp[i].s == 0);
		break;
	case SPLIT_REMOVED:
		for (i = 0; i < nsp; i++)
			if (!sp[i].m)
				pieces_add(out, base + sp[i].s, sp[i].e - sp[i].s, pc->first && sp[i].s == 0);
		break;
	case SPLIT_CONTIGUOUS:
	case SPLIT_MERGED_PREV: {
		/* fold left; a piece is [s, e) and grows to the right */
		size_t n0 = 0;
		int prev = 0;
		struct span *acc = sh_malloc((nsp + 1) * sizeof(*acc));
		for (i = 0; i < nsp; i++) {
			int merge = p->beh == SPLIT_CONTIGUOUS ? sp[i].m == prev : (sp[i].m && !prev);
			if (merge && n0)
				acc[n0 - 1].e = sp[i].e;
			else
				acc[n0++] = sp[i];
			prev = sp[i].m;
		}
		for (i = 0; i < n0; i++)
			pieces_add(out, base + acc[i].s, acc[i].e - acc[i].s, pc->first && acc[i].s == 0);
		free(acc);
		break;
	}
	case SPLIT_MERGED_NEXT: {
		/* fold right: a match joins the piece after it */
		size_t n0 = 0;
		int prev = 0;
		struct span *acc = sh_malloc((nsp + 1) * sizeof(*acc));
		for (i = nsp; i-- > 0;) {
			if (sp[i].m && !prev && n0)
				acc[n0 - 1].s = sp[i].s;
			else
				acc[n0++] = sp[i];
			prev = sp[i].m;
		}
		for (i = n0; i-- > 0;)
			pieces_add(out, base + acc[i].s, acc[i].e - acc[i].s, pc->first && acc[i].s == 0);
		free(acc);
		break;
	}
	}
}

/* Metaspace on one piece: spaces become the replacement, the replacement is prepended per the
 * scheme, then (split) the piece is cut before each replacement. Writes into e->b (reserved). */
static void metaspace_piece(struct enc *e, const struct tok_pre *p, const char *base,
			    const struct piece *pc, struct pieces *out)
{
	size_t start = e->b.n;
	const char *s = base + pc->off;
	char *o;
	size_t i;

	o = e->b.p + e->b.n;
	if ((p->prepend == 2 || (p->prepend == 1 && pc->first)) &&
	    !(pc->len >= (size_t)p->rep_len && !memcmp(s, p->rep, (size_t)p->rep_len)) &&
	    !(pc->len && s[0] == ' ')) {
		memcpy(o, p->rep, (size_t)p->rep_len);
		o += p->rep_len;
	}
	for (i = 0; i < pc->len; i++) {
		if (s[i] == ' ') {
			memcpy(o, p->rep, (size_t)p->rep_len);
			o += p->rep_len;
		} else {
			*o++ = s[i];
		}
	}
	e->b.n = (size_t)(o - e->b.p);
	if (!p->msplit) {
		pieces_add(out, (uint32_t)start, (uint32_t)(e->b.n - start), pc->first);
		return;
	}
	/* cut before each replacement (MergedWithNext) */
	{
		size_t a = start, j = start;
		while (j < e->b.n) {
			if (j > a && e->b.n - j >= (size_t)p->rep_len &&
			    !memcmp(e->b.p + j, p->rep, (size_t)p->rep_len)) {
				pieces_add(out, (uint32_t)a, (uint32_t)(j - a), pc->first && a == start);
				a = j;
			}
			j++;
		}
		pieces_add(out, (uint32_t)a, (uint32_t)(e->b.n - a), pc->first && a == start);
	}
}

/* Pre-tokenizes text [s, s+n) (already normalized) and runs BPE over each piece. */
static void encode_pretok(struct enc *e, const char *s, size_t n, int first)
{
	struct sh_tok *tok = e->tok;
	const char *base = s;
	size_t i, k;

	if (!n)
		return;
	if (!tok->npre) {
		tok_bpe_word(tok, &e->w, s, n, e->out);
		return;
	}
	e->pa.n = 0;
	if (tok->pre_grow > 1) {
		/* some step rewrites the text: pieces live in e->b, addressed by offset */
		e->b.n = 0;
		sh_buf_add(&e->b, s, n);
		base = e->b.p;
	}
	pieces_add(&e->pa, 0, (uint32_t)n, (uint8_t)first);
	for (k = 0; k < tok->npre; k++) {
		const struct tok_pre *p = &tok->pre[k];
		if (p->kind != PRE_SPLIT) {
			/* reserve what this step can write, so that e->b does not move during it */
			size_t live = 0;
			for (i = 0; i < e->pa.n; i++)
				live += e->pa.p[i].len;
			sh_buf_reserve(&e->b, live * 2 * (size_t)(p->rep_len > 1 ? p->rep_len : 1) + 64);
			base = e->b.p;
		}
		e->pb.n = 0;
		for (i = 0; i < e->pa.n; i++) {
			struct piece pc = e->pa.p[i];
			if (p->kind == PRE_SPLIT) {
				find_spans(e, p, base + pc.off, pc.len);
				split_piece(e, p, &pc, &e->pb);
			} else if (p->kind == PRE_METASPACE) {
				metaspace_piece(e, p, base, &pc, &e->pb);
			} else {   /* PRE_PREFIX_SPACE */
				if (base[pc.off] == ' ') {
					pieces_add(&e->pb, pc.off, pc.len, pc.first);
				} else {
					size_t st = e->b.n;
					e->b.p[e->b.n++] = ' ';
					memcpy(e->b.p + e->b.n, base + pc.off, pc.len);
					e->b.n += pc.len;
					pieces_add(&e->pb, (uint32_t)st, pc.len + 1, pc.first);
				}
			}
		}
		struct pieces t = e->pa;
		e->pa = e->pb;
		e->pb = t;
	}
	for (i = 0; i < e->pa.n; i++)
		tok_bpe_word(tok, &e->w, base + e->pa.p[i].off, e->pa.p[i].len, e->out);
}

/* Finds the next added token in [s+from, s+n): sets *ms, *me (the span it covers, stripping
 * included) and returns the token's index in tok->added, or -1. *resume is where to search next. */
static int next_added(const struct sh_tok *tok, const struct tok_amatch *am, const char *s,
		      size_t n, size_t from, size_t floor, size_t *ms, size_t *me)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t pos = from;

	while (pos < n) {
		int found = -1;
		size_t flen = 0;
		if (!am->first[u[pos]]) {
			pos++;
			continue;
		}
		/* the longest token at pos: the deepest node on the walk where one ends */
		int32_t x = am->root[u[pos]];
		for (size_t k = 1; x >= 0; k++) {
			if (am->term[x] >= 0)
				found = am->term[x], flen = k;
			x = pos + k < n ? am_child(am, x, u[pos + k]) : -1;
		}
		if (found < 0) {
			pos++;
			continue;
		}
		{
			const struct tok_added *a = &tok->added[found];
			size_t st = pos, en = pos + flen, q;
			if (a->single_word) {
				int ok = 1;
				if (st > 0 && is_word_cp(cp_before(s, st, &q)))
					ok = 0;
				if (en < n) {
					int l = tok_utf8_len(u + en, n - en);
					if (l && is_word_cp(tok_utf8_cp(u + en, l)))
						ok = 0;
				}
				if (!ok) {
					pos = en;
					continue;
				}
			}
			if (a->lstrip) {
				while (st > floor) {
					uint32_t cp = cp_before(s, st, &q);
					if (!is_ws(cp))
						break;
					st = q;
				}
			}
			if (a->rstrip) {
				while (en < n) {
					int l = tok_utf8_len(u + en, n - en);
					if (!l || !is_ws(tok_utf8_cp(u + en, l)))
						break;
					en += (size_t)l;
				}
			}
			*ms = st;
			*me = en;
			return found;
		}
	}
	return -1;
}

/* Normalizers over [s, s+n); returns a malloc'd string, or NULL when nothing changes it. */
static char *normalize(struct enc *e, const char *s, size_t n, size_t *out_len)
{
	struct sh_tok *tok = e->tok;
	char *cur = NULL;
	size_t cl = n;

	for (size_t k = 0; k < tok->nnorm; k++) {
		const struct tok_norm *nm = &tok->norm[k];
		const char *in = cur ? cur : s;
		char *nx = NULL;
		size_t nl = 0;
		switch (nm->kind) {
		case NORM_NFC: case NORM_NFD: case NORM_NFKC: case NORM_NFKD: {
			utf8proc_uint8_t *dst = NULL;
			int opt = UTF8PROC_STABLE;
			size_t i;
			for (i = 0; i < cl && !((unsigned char)in[i] & 0x80); i++)
				;
			if (i == cl)
				continue;
			opt |= (nm->kind == NORM_NFC || nm->kind == NORM_NFKC) ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
			if (nm->kind == NORM_NFKC || nm->kind == NORM_NFKD)
				opt |= UTF8PROC_COMPAT;
			utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)cl,
							  &dst, (utf8proc_option_t)opt);
			if (r < 0)
				continue;
			nx = (char *)dst;
			nl = (size_t)r;
			break;
		}
		case NORM_LOWER: {
			struct sh_buf b = {0};
			size_t i = 0;
			sh_buf_reserve(&b, cl + 16);
			while (i < cl) {
				int l = tok_utf8_len((const unsigned char *)in + i, cl - i);
				char tmp[8];
				uint32_t cp;
				if (!l) {
					sh_buf_add(&b, in + i, 1);
					i++;
					continue;
				}
				cp = tok_utf8_cp((const unsigned char *)in + i, l);
				if (cp == 0x130) {   /* İ lowercases to i + combining dot above */
					sh_buf_add(&b, "i\xCC\x87", 3);
				} else {
					int o = tok_utf8_put(tmp, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
					sh_buf_add(&b, tmp, (size_t)o);
				}
				i += (size_t)l;
			}
			nx = b.p;
			nl = b.n;
			break;
		}
		case NORM_STRIP: {
			size_t a = 0, z = cl, q;
			if (nm->left)
				while (a < z) {
					int l = tok_utf8_len((const unsigned char *)in + a, z - a);
					if (!l || !is_ws(tok_utf8_cp((const unsigned char *)in + a, l)))
						break;
					a += (size_t)l;
				}
			if (nm->right)
				while (z > a && is_ws(cp_before(in, z, &q)))
					z = q;
			nx = sh_strndup(in + a, z - a);
			nl = z - a;
			break;
		}
		case NORM_PREPEND:
			if (!cl)
				continue;
			nx = sh_malloc(cl + nm->with_len + 1);
			memcpy(nx, nm->with, nm->with_len);
			memcpy(nx + nm->with_len, in, cl);
			nl = cl + nm->with_len;
			nx[nl] = '\0';
			break;
		case NORM_REPLACE: {
			struct sh_buf b = {0};
			size_t pos = 0;
			sh_buf_reserve(&b, cl);
			while (pos < cl) {
				size_t ms, me;
				if (nm->re) {
					const OnigUChar *us = (const OnigUChar *)in;
					onig_region_clear(e->region);
					if (onig_search(nm->re, us, us + cl, us + pos, us + cl, e->region,
							ONIG_OPTION_NONE) < 0)
						break;
					ms = (size_t)e->region->beg[0];
					me = (size_t)e->region->end[0];
					if (me == ms) {   /* an empty match replaces nothing */
						int l = tok_utf8_len(us + ms, cl - ms);
						sh_buf_add(&b, in + pos, ms - pos + (size_t)(l ? l : 1));
						pos = ms + (size_t)(l ? l : 1);
						continue;
					}
				} else {
					const char *h = memmem(in + pos, cl - pos, nm->pat, nm->pat_len);
					if (!h)
						break;
					ms = (size_t)(h - in);
					me = ms + nm->pat_len;
				}
				sh_buf_add(&b, in + pos, ms - pos);
				sh_buf_add(&b, nm->with, nm->with_len);
				pos = me;
			}
			if (pos < cl)
				sh_buf_add(&b, in + pos, cl - pos);
			if (!b.p)
				b.p = sh_calloc(1, 1);
			nx = b.p;
			nl = b.n;
			break;
		}
		}
		free(cur);
		cur = nx;
		cl = nl;
	}
	*out_len = cl;
	return cur;
}

static void encode_segment(struct enc *e, const char *s, size_t n, int first)
{
	struct sh_tok *tok = e->tok;
	size_t nl = n, pos = 0, ms, me;
	char *norm = tok->nnorm ? normalize(e, s, n, &nl) : NULL;
	const char *t = norm ? norm : s;
	int idx;

	if (!tok->am_norm.n || (e->flags & SH_TOK_NO_ADDED)) {
		encode_pretok(e, t, nl, first);
		free(norm);
		return;
	}
	while ((idx = next_added(tok, &tok->am_norm, t, nl, pos, pos, &ms, &me)) >= 0) {
		encode_pretok(e, t + pos, ms - pos, first && pos == 0);
		sh_tok_ids_push(e->out, tok->added[idx].id);
		pos = me;
	}
	encode_pretok(e, t + pos, nl - pos, first && pos == 0);
	free(norm);
}

static void encode_text(struct enc *e, const char *s, size_t n)
{
	struct sh_tok *tok = e->tok;
	size_t pos = 0, ms, me;
	int idx;

	if (tok->am_raw.n && !(e->flags & SH_TOK_NO_ADDED)) {
		while ((idx = next_added(tok, &tok->am_raw, s, n, pos, pos, &ms, &me)) >= 0) {
			encode_segment(e, s + pos, ms - pos, pos == 0);
			sh_tok_ids_push(e->out, tok->added[idx].id);
			pos = me;
		}
	}
	encode_segment(e, s + pos, n - pos, pos == 0);
}

int sh_tok_encode(struct sh_tok *tok, const char *text, size_t len, int flags,
		  struct sh_tok_ids *out, struct sh_err *err)
{
	struct enc e;
	char *fixed = NULL;
	size_t bad;

	if (len > SH_TOK_MAX_TEXT) {
		sh_errf(err, "text of %zu bytes is over the tokenizer's cap of %zu", len, SH_TOK_MAX_TEXT);
		return SH_TOOBIG;
	}
	if (!text)
		text = "";
	/* pieces are addressed with 32-bit offsets, rewriting steps included */
	if (len > UINT32_MAX / (8 * tok->pre_grow)) {
		sh_errf(err, "text of %zu bytes is too large for this tokenizer's pre-tokenizer", len);
		return SH_TOOBIG;
	}
	bad = utf8_check((const unsigned char *)text, len);
	if (bad != len) {
		if (!(flags & SH_TOK_LOSSY)) {
			sh_errf(err, "invalid UTF-8 at byte %zu", bad);
			return SH_PARSE;
		}
		fixed = utf8_lossy(text, len, &len);
		text = fixed;
	}
	memset(&e, 0, sizeof(e));
	e.tok = tok;
	e.flags = flags;
	e.out = out;
	e.region = onig_region_new();
	if ((flags & SH_TOK_ADD_SPECIAL) && tok->ntmpl) {
		for (size_t i = 0; i < tok->ntmpl; i++) {
			if (!tok->tmpl[i].special)
				encode_text(&e, text, len);
			else
				for (size_t j = 0; j < tok->tmpl[i].n; j++)
					sh_tok_ids_push(out, tok->tmpl[i].ids[j]);
		}
	} else {
		encode_text(&e, text, len);
	}
	onig_region_free(e.region, 1);
	tok_work_release(&e.w);
	free(e.b.p);
	free(e.pa.p);
	free(e.pb.p);
	free(e.sp);
	free(fixed);
	return SH_OK;
}

int64_t sh_tok_count(struct sh_tok *tok, const char *text, size_t len, int flags,
		     struct sh_err *err)
{
	struct sh_tok_ids v;
	int rc;
	int64_t n;
	sh_tok_ids_init(&v);
	rc = sh_tok_encode(tok, text, len, flags, &v, err);
	n = rc == SH_OK ? (int64_t)v.n : rc;
	sh_tok_ids_release(&v);
	return n;
}

/* Normalized added tokens are matched in normalized text by their normalized content, as the
 * Rust crate builds its normalized trie. */
static void added_normalize(struct sh_tok *tok)
{
	struct enc e;
	memset(&e, 0, sizeof(e));
	e.tok = tok;
	e.region = onig_region_new();
	for (size_t i = 0; i < tok->nadded; i++) {
		struct tok_added *a = &tok->added[i];
		size_t nl = a->len;
		char *n = NULL;
		if (a->normalized && tok->nnorm)
			n = normalize(&e, a->content, a->len, &nl);
		a->ncontent = n ? n : sh_strndup(a->content, a->len);
		a->nlen = (uint32_t)nl;
		/* the Rust crate decodes such a token to its normalized form too */
		if (n && !(tok->flags[a->id] & TOKF_VOCAB)) {
			uint8_t f = tok->flags[a->id];
			set_token(tok, a->id, a->ncontent);
			tok->flags[a->id] |= f;
		}
	}
	onig_region_free(e.region, 1);
}
