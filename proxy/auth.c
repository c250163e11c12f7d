/* auth.c: users, API keys, the auth stage (see auth.h). */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pxconf.h"
#include "pxmetrics.h"

static void sha256(const void *data, size_t len, unsigned char out[32])
{
	unsigned int n = 32;

	if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1)
		sh_bug("EVP_Digest(SHA-256) failed", __FILE__, __LINE__);
}

void px_users_init(struct px_server *srv)
{
	struct px_conf *c = &srv->conf;
	char labels[160];
	size_t i;

	srv->auth = c->n_users > 0;
	srv->n_users = c->n_users ? c->n_users : 1;
	srv->users = sh_calloc(srv->n_users, sizeof(*srv->users));
	for (i = 0; i < srv->n_users; i++) {
		struct px_user *u = &srv->users[i];
		if (c->n_users) {
			u->name = c->users[i].name;
			u->lim = c->users[i].lim;
			px_hex_digest(c->users[i].key_sha256, u->digest);  /* checked at load */
		} else {
			u->name = "anonymous";
			u->lim = c->user_defaults;
		}
		u->rpm_bucket = (double)u->lim.requests_per_minute;
		u->tpm_bucket = (double)u->lim.tokens_per_minute;
		u->bucket_at_us = sh_now_us();
		snprintf(labels, sizeof(labels), "user=\"%.120s\"", u->name);
		u->m_in_flight = sh_series_get(srv->met.user_in_flight, labels);
	}
}

void px_users_release(struct px_server *srv)
{
	free(srv->users);
	srv->users = NULL;
	srv->n_users = 0;
}

int px_auth_stage(struct px_req *r)
{
	struct px_server *srv = r->conn->srv;
	const char *h;
	unsigned char d[32];
	struct px_user *found = NULL;
	size_t i, n;

	if (!srv->auth) {
		r->user = &srv->users[0];
		return PX_NEXT;
	}
	if (r->route == PX_ROUTE_HEALTH || r->route == PX_ROUTE_METRICS)
		return PX_NEXT;
	snprintf(r->err_hdrs, sizeof(r->err_hdrs), "WWW-Authenticate: Bearer\r\n");
	r->err_code = "invalid_api_key";
	h = sh_http_header(r->msg, "authorization", &n);
	if (!h || n < 8 || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
		r->err_msg = "You didn't provide an API key. Provide it in the Authorization header "
			     "(Authorization: Bearer YOUR_KEY).";
		px_metrics_reject(&srv->met, NULL, "auth");
		return 401;
	}
	sha256(h + 7, n - 7, d);
	/* Every digest is compared, whatever matches, so the time taken says nothing of which. */
	for (i = 0; i < srv->n_users; i++) {
		int same = CRYPTO_memcmp(d, srv->users[i].digest, 32) == 0;
		if (same)
			found = &srv->users[i];
	}
	if (!found) {
		r->err_msg = "Incorrect API key provided.";
		px_metrics_reject(&srv->met, NULL, "auth");
		return 401;
	}
	r->user = found;
	r->err_hdrs[0] = '\0';
	r->err_code = NULL;
	return PX_NEXT;
}

int px_hashkey_main(int argc, char **argv)
{
	char line[4096];
	const char *key;
	unsigned char d[32];
	size_t n, i;

	if (argc > 2 || (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
		fprintf(stderr, "usage: kvgate hash-key [KEY]   (without KEY: reads one line from standard input)\n"
				"prints the hex SHA-256 to put in users[].key_sha256\n");
		return argc > 2 ? 2 : 0;
	}
	if (argc == 2) {
		key = argv[1];
	} else {
		if (!fgets(line, sizeof(line), stdin)) {
			fprintf(stderr, "kvgate hash-key: no key on standard input\n");
			return 1;
		}
		line[strcspn(line, "\r\n")] = '\0';
		key = line;
	}
	n = strlen(key);
	if (n == 0) {
		fprintf(stderr, "kvgate hash-key: the key is empty\n");
		return 1;
	}
	sha256(key, n, d);
	for (i = 0; i < 32; i++)
		printf("%02x", d[i]);
	printf("\n");
	return 0;
}
