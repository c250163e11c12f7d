/* tokenizer_bench.c: single-threaded encode/decode speed of shared/tok on one text file.
 *   tokenizer_bench MODEL_DIR CORPUS [REPEATS]
 * Prints one line: MB/s of encode, decode and streaming decode (best of REPEATS, default 3), the
 * ids count, and the load time. MB = 10^6 bytes of the input text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/tok.h"

int main(int argc, char **argv)
{
	struct sh_err err;
	struct sh_tok *tok;
	struct sh_tok_ids v;
	FILE *f;
	char *text;
	long n;
	int reps = argc > 3 ? atoi(argv[3]) : 3;
	double best_enc = 0, best_dec = 0, best_st = 0;
	int64_t t0, t1;

	if (argc < 3) {
		fprintf(stderr, "usage: %s MODEL_DIR CORPUS [REPEATS]\n", argv[0]);
		return 2;
	}
	t0 = sh_now_us();
	if (!(tok = sh_tok_new(argv[1], &err))) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	t1 = sh_now_us();
	if (!(f = fopen(argv[2], "rb"))) {
		perror(argv[2]);
		return 1;
	}
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	text = malloc((size_t)n + 1);
	if (fread(text, 1, (size_t)n, f) != (size_t)n) {
		perror(argv[2]);
		return 1;
	}
	fclose(f);
	sh_tok_ids_init(&v);
	for (int r = 0; r < reps; r++) {
		int64_t a, b, c, d;
		size_t dl, sl = 0, l;
		char *dec;
		struct sh_tok_stream *st;
		v.n = 0;
		a = sh_now_us();
		if (sh_tok_encode(tok, text, (size_t)n, SH_TOK_LOSSY, &v, &err) != SH_OK) {
			fprintf(stderr, "encode: %s\n", err.msg);
			return 1;
		}
		b = sh_now_us();
		dec = sh_tok_decode(tok, v.ids, v.n, 0, &dl, &err);
		c = sh_now_us();
		st = sh_tok_stream_new(tok, 0);
		for (size_t i = 0; i < v.n; i++) {
			sh_tok_stream_push(st, v.ids[i], &l, NULL);
			sl += l;
		}
		sh_tok_stream_finish(st, &l);
		sl += l;
		d = sh_now_us();
		sh_tok_stream_free(st);
		if (sl != dl) {
			fprintf(stderr, "stream decode length %zu != decode length %zu\n", sl, dl);
			return 1;
		}
		free(dec);
		best_enc = SH_MAX(best_enc, (double)n / (double)(b - a));
		best_dec = SH_MAX(best_dec, (double)n / (double)(c - b));
		best_st = SH_MAX(best_st, (double)n / (double)(d - c));
	}
	printf("encode %8.2f MB/s  decode %8.2f MB/s  stream-decode %8.2f MB/s  (%zu ids, load %.2f s)\n",
	       best_enc, best_dec, best_st, v.n, (double)(t1 - t0) / 1e6);
	sh_tok_ids_release(&v);
	sh_tok_free(tok);
	free(text);
	return 0;
}
