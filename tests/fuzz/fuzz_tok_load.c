/* fuzz_tok_load.c: libFuzzer target for loading arbitrary tokenizer.json files. Whatever the bytes,
 * sh_tok_new_json either refuses them with a message or gives a tokenizer that encodes and decodes
 * a fixed text without crashing or leaking. Seeds: tests/data/tok/tiny_spm/tokenizer.json,
 * tests/data/tok/tiny_meta/tokenizer.json (and any small tokenizer.json). The input may hold
 * tokenizer_config.json after a NUL byte. */
#include <stdlib.h>
#include <string.h>

#include "shared/tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char text[] = "Hello, world! 123 \xE4\xBD\xA0\xE5\xA5\xBD <s></s> \xF0\x9F\x91\x8B\n\t  x";
	const char *nul = memchr(data, 0, size);
	size_t tl = nul ? (size_t)(nul - (const char *)data) : size;
	struct sh_err err;
	struct sh_tok *tok;
	struct sh_tok_ids v;
	size_t dl;
	char *d;

	err.msg[0] = '\0';
	tok = sh_tok_new_json((const char *)data, tl, nul ? nul + 1 : NULL,
			      nul ? size - tl - 1 : 0, &err);
	if (!tok) {
		if (!err.msg[0])
			abort();   /* a refusal always says why */
		return 0;
	}
	sh_tok_ids_init(&v);
	if (sh_tok_encode(tok, text, sizeof(text) - 1, SH_TOK_ADD_SPECIAL, &v, &err) != SH_OK)
		abort();
	d = sh_tok_decode(tok, v.ids, v.n, 0, &dl, &err);
	if (!d)
		abort();
	free(d);
	sh_tok_ids_release(&v);
	sh_tok_free(tok);
	return 0;
}
