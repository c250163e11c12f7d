/* tokcmd.c: `kvgate tokenize` / `kvgate detokenize` (see tokcmd.h). */
#include "tokcmd.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/chat.h"
#include "shared/sh.h"
#include "shared/tok.h"

static void usage(void)
{
	fprintf(stderr,
		"usage: kvgate tokenize MODEL_DIR [--add-special-tokens] [--chat] [--chat-template NAME]\n"
		"       kvgate detokenize MODEL_DIR [--skip-special-tokens]\n"
		"tokenize reads UTF-8 text (with --chat: a JSON array of messages) on standard input and\n"
		"prints the token ids as a JSON array; detokenize reads such an array and prints the text.\n");
}

/* All of standard input, up to cap bytes; NULL when larger or on a read error. */
static char *read_stdin(size_t cap, size_t *len)
{
	size_t n = 0, sz = 65536, r;
	char *p = sh_malloc(sz + 1);

	while ((r = fread(p + n, 1, sz - n, stdin)) > 0) {
		n += r;
		if (n == sz) {
			if (sz >= cap) {
				free(p);
				return NULL;
			}
			sz *= 2;
			p = sh_realloc(p, sz + 1);
		}
	}
	if (ferror(stdin)) {
		free(p);
		return NULL;
	}
	p[n] = '\0';
	*len = n;
	return p;
}

static int print_ids(const struct sh_tok_ids *v)
{
	putchar('[');
	for (size_t i = 0; i < v->n; i++)
		printf(i ? ", %d" : "%d", (int)v->ids[i]);
	puts("]");
	return fflush(stdout) ? 1 : 0;
}

static int tokenize(struct sh_tok *tok, const char *text, size_t len, int special, int chat,
		    const char *tmpl)
{
	struct sh_err err;
	struct sh_tok_ids v;
	int rc;

	sh_tok_ids_init(&v);
	if (chat) {
		cJSON *msgs = cJSON_ParseWithLength(text, len);
		struct sh_chat *c;
		char *prompt;
		size_t plen;
		if (!cJSON_IsArray(msgs)) {
			fprintf(stderr, "kvgate tokenize --chat: standard input is not a JSON array of messages\n");
			cJSON_Delete(msgs);
			return 1;
		}
		if (!(c = sh_chat_new(tok, tmpl, &err))) {
			fprintf(stderr, "kvgate tokenize: %s\n", err.msg);
			cJSON_Delete(msgs);
			return 1;
		}
		prompt = sh_chat_render(c, msgs, SH_CHAT_GEN_PROMPT, &plen, NULL, &err);
		cJSON_Delete(msgs);
		sh_chat_free(c);
		if (!prompt) {
			fprintf(stderr, "kvgate tokenize: %s\n", err.msg);
			return 1;
		}
		rc = sh_tok_encode(tok, prompt, plen, special ? SH_TOK_ADD_SPECIAL : 0, &v, &err);
		free(prompt);
	} else {
		rc = sh_tok_encode(tok, text, len, special ? SH_TOK_ADD_SPECIAL : 0, &v, &err);
	}
	if (rc != SH_OK) {
		fprintf(stderr, "kvgate tokenize: %s\n", err.msg);
		sh_tok_ids_release(&v);
		return 1;
	}
	rc = print_ids(&v);
	sh_tok_ids_release(&v);
	return rc;
}

static int detokenize(struct sh_tok *tok, const char *text, size_t len, int skip)
{
	cJSON *arr = cJSON_ParseWithLength(text, len), *e;
	struct sh_tok_ids v;
	struct sh_err err;
	char *out;
	size_t olen;
	int rc = 1;

	sh_tok_ids_init(&v);
	if (!cJSON_IsArray(arr)) {
		fprintf(stderr, "kvgate detokenize: standard input is not a JSON array of token ids\n");
		goto out;
	}
	cJSON_ArrayForEach(e, arr) {
		if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int32_t)e->valuedouble) {
			fprintf(stderr, "kvgate detokenize: not a token id in the array\n");
			goto out;
		}
		sh_tok_ids_push(&v, (int32_t)e->valuedouble);
	}
	if (!(out = sh_tok_decode(tok, v.ids, v.n, skip ? SH_TOK_SKIP_SPECIAL : 0, &olen, &err))) {
		fprintf(stderr, "kvgate detokenize: %s\n", err.msg);
		goto out;
	}
	rc = fwrite(out, 1, olen, stdout) != olen || fflush(stdout) ? 1 : 0;
	free(out);
out:
	sh_tok_ids_release(&v);
	cJSON_Delete(arr);
	return rc;
}

int px_tokcmd_main(int argc, char **argv)
{
	int detok, special = 0, chat = 0, skip = 0, rc;
	const char *dir = NULL, *tmpl = NULL;
	struct sh_err err;
	struct sh_tok *tok;
	char *text;
	size_t len;

	if (argc < 1)
		return usage(), 2;
	detok = !strcmp(argv[0], "detokenize");
	if (!detok && strcmp(argv[0], "tokenize"))
		return usage(), 2;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--add-special-tokens") && !detok)
			special = 1;
		else if (!strcmp(argv[i], "--chat") && !detok)
			chat = 1;
		else if (!strcmp(argv[i], "--chat-template") && !detok && i + 1 < argc)
			tmpl = argv[++i];
		else if (!strcmp(argv[i], "--skip-special-tokens") && detok)
			skip = 1;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
			return usage(), 0;
		else if (argv[i][0] != '-' && !dir)
			dir = argv[i];
		else
			return usage(), 2;
	}
	if (!dir)
		return usage(), 2;
	if (!(tok = sh_tok_new(dir, &err))) {
		fprintf(stderr, "kvgate %s: %s\n", argv[0], err.msg);
		return 1;
	}
	if (!(text = read_stdin(SH_TOK_MAX_TEXT, &len))) {
		fprintf(stderr, "kvgate %s: standard input unreadable or over %zu bytes\n", argv[0],
			(size_t)SH_TOK_MAX_TEXT);
		sh_tok_free(tok);
		return 1;
	}
	rc = detok ? detokenize(tok, text, len, skip) : tokenize(tok, text, len, special, chat, tmpl);
	free(text);
	sh_tok_free(tok);
	return rc;
}
