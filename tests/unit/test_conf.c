/* test_conf.c: the configuration table loader (shared/conf.c) through kvgate's own table
 * (proxy/pxconf.c): defaults, comments, every refusal names its key, and conf/README.md lists
 * every key the table has. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/pxconf.h"

static char path[64];

static void write_conf(const char *text)
{
	FILE *f;

	snprintf(path, sizeof(path), "/tmp/kvgate-test-conf-%d.conf", (int)getpid());
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

static int load(const char *text, struct px_conf *c, struct sh_err *err)
{
	int rc;

	write_conf(text);
	rc = px_conf_load(c, path, err);
	unlink(path);
	return rc;
}

START_TEST(defaults_and_comments)
{
	struct px_conf c;
	struct sh_err err;

	ck_assert_int_eq(load("// a comment\n{ /* inline */ \"listen\": \"\", \"listen_plain\": \"127.0.0.1:1\",\n"
			      "  \"pools\": [{\"upstreams\": [\"127.0.0.1:2\", \"127.0.0.1:3\"]}] }\n", &c, &err), SH_OK);
	ck_assert_int_eq(c.max_connections, 4096);
	ck_assert_int_eq(c.max_body_bytes, 8388608);
	ck_assert_str_eq(c.access_log, "-");
	ck_assert_uint_eq(c.n_pools, 1);
	ck_assert_str_eq(c.pools[0].name, "default");
	ck_assert_uint_eq(c.pools[0].n_upstreams, 2);
	ck_assert_str_eq(c.pools[0].upstreams[1], "127.0.0.1:3");
	px_conf_release(&c);
}
END_TEST

static const struct {
	const char *text;
	const char *want;  /* substring of the error */
} bad[] = {
	{ "{\"listen_plain\":\"127.0.0.1:1\",\"pools\":[{\"upstreams\":[\"a:1\"]}],\"lisen\":\"x\"}", "lisen: unknown key" },
	{ "{\"listen_plain\":\"127.0.0.1:1\",\"pools\":[{\"upstreams\":[\"a:1\"]}],\"max_connections\":0}",
	  "max_connections: 0 is out of range [1, 1000000]" },
	{ "{\"listen_plain\":\"127.0.0.1:1\",\"pools\":[{\"upstreams\":[\"a:1\"]}],\"max_connections\":1.5}",
	  "max_connections: expected an integer" },
	{ "{\"listen_plain\":\"127.0.0.1:1\",\"pools\":[{\"upstreams\":[\"a:1\"]}],\"max_connections\":\"10\"}",
	  "max_connections: expected an integer" },
	{ "{\"listen_plain\":\"127.0.0.1:1\",\"pools\":[{\"upstreams\":[\"a:1\"]},{\"upstreams\":[7]}]}",
	  "pools[1].upstreams[0]: expected a string" },
	{ "{\"listen_plain\":\"127.0.0.1:1\",\"pools\":[{\"upstreams\":[\"a:1\"],\"weight\":2}]}",
	  "pools[0].weight: unknown key" },
	{ "{\"listen_plain\":\"127.0.0.1:1\",\"pools\":[{\"upstreams\":[]}]}", "pools[0].upstreams: 0 entries" },
	{ "{\"listen\":\"\",\"listen_plain\":\"127.0.0.1:1\"}", "at least one pool" },
	{ "{\"listen\":\"127.0.0.1:1\",\"pools\":[{\"upstreams\":[\"a:1\"]}]}", "needs tls_cert and tls_key" },
	{ "{\"listen\":\"\",\"pools\":[{\"upstreams\":[\"a:1\"]}]}", "nothing to serve" },
	{ "{\"listen_plain\": \"x\", }", "not valid JSON" },
	{ "[1,2]", "must be a JSON object" },
};

START_TEST(refusals_name_the_key)
{
	struct px_conf c;
	struct sh_err err;

	err.msg[0] = '\0';
	ck_assert_int_eq(load(bad[_i].text, &c, &err), SH_ERR);
	if (!strstr(err.msg, bad[_i].want))
		ck_abort_msg("error \"%s\" does not contain \"%s\"", err.msg, bad[_i].want);
	/* the message names the file */
	ck_assert_ptr_nonnull(strstr(err.msg, "/tmp/kvgate-test-conf-"));
}
END_TEST

START_TEST(missing_file)
{
	struct px_conf c;
	struct sh_err err;

	ck_assert_int_eq(px_conf_load(&c, "/nonexistent/kvgate.conf", &err), SH_ERR);
	ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/kvgate.conf: No such file"));
}
END_TEST

/* conf/README.md documents the same rows the table has (STYLE.md rule 17). */
START_TEST(docs_list_every_key)
{
	char *doc, *keys, line[512];
	size_t n;
	FILE *f = fopen("conf/README.md", "r"), *t;

	ck_assert_msg(f != NULL, "conf/README.md is missing (run from the repository root)");
	doc = calloc(1, 1 << 20);
	n = fread(doc, 1, (1 << 20) - 1, f);
	fclose(f);
	doc[n] = '\0';
	keys = NULL;
	n = 0;
	t = open_memstream(&keys, &n);
	px_conf_doc(t);
	fclose(t);
	t = fmemopen(keys, n, "r");
	while (fgets(line, sizeof(line), t)) {
		static char parent[64];
		char name[64], want[160];
		if (sscanf(line, " %63s", name) != 1)
			continue;
		if (line[0] != ' ') {
			snprintf(parent, sizeof(parent), "%s", name);
			snprintf(want, sizeof(want), "`%s`", name);
		} else {
			/* a list's rows are documented as `pools[].name`, an object's as `user_defaults.queue` */
			snprintf(want, sizeof(want), "`%s[].%s`", parent, name);
			if (!strstr(doc, want))
				snprintf(want, sizeof(want), "`%s.%s`", parent, name);
		}
		ck_assert_msg(strstr(doc, want) != NULL, "conf/README.md does not document %s", want);
	}
	fclose(t);
	free(keys);
	free(doc);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("conf");
	TCase *t = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(t, defaults_and_comments);
	tcase_add_loop_test(t, refusals_name_the_key, 0, (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(t, missing_file);
	tcase_add_test(t, docs_list_every_key);
	suite_add_tcase(s, t);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
