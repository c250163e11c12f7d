/* pxconf.c: kvgate's configuration table. One row per key; the loader (shared/conf.c) checks
 * types and bounds; this file checks what rows cannot say (a listener is needed, TLS needs a
 * certificate, upstream addresses parse). */
#include "pxconf.h"

#include <stddef.h>
#include <string.h>

#define K(f) offsetof(struct px_conf, f)
#define P(f) offsetof(struct px_pool_conf, f)
#define MS_MAX (24LL * 3600 * 1000)

static const struct sh_conf_key pool_keys[] = {
	{ "name", SH_CONF_STR, P(name), 0, 0, 0, "default", 0, NULL, 0,
	  "pool name (for logs and metrics)" },
	{ "upstreams", SH_CONF_STRLIST, P(upstreams), 1, 256, 0, NULL, P(n_upstreams), NULL, 0,
	  "engine instances, \"host:port\"" },
	{ "max_model_len", SH_CONF_INT, P(max_model_len), 0, 16777216, 0, NULL, 0, NULL, 0,
	  "context length the pool serves, tokens (0: ask the engines' /v1/models)" },
	{ "model", SH_CONF_STR, P(model), 0, 0, 0, "", 0, NULL, 0,
	  "model name the pool serves, matched against requests' \"model\" (\"\": learn it from the engines)" },
	{ "tokenizer", SH_CONF_STR, P(tokenizer), 0, 0, 0, "", 0, NULL, 0,
	  "model directory with tokenizer.json and tokenizer_config.json (\"\": no token counting)" },
	{ "chat_template", SH_CONF_STR, P(chat_template), 0, 0, 0, "", 0, NULL, 0,
	  "chat renderer: deepseek_v2, deepseek_v3, llama3, chatml, qwen3 (\"\": recognise the model's)" },
	{ "block_size", SH_CONF_INT, P(block_size), 1, 1024, 16, NULL, 0, NULL, 0,
	  "the engines' KV block size in tokens (prefix hashes must match theirs)" },
	{ 0 }
};

#define L(f) offsetof(struct px_limits, f)
#define U(f) offsetof(struct px_user_conf, f)

/* The same rows serve user_defaults (defaults below) and each user (default -1: inherit). */
#define LIMIT_ROWS(base, inherit) \
	{ "max_concurrent", SH_CONF_INT, base + L(max_concurrent), inherit ? -1 : 0, 100000, inherit ? -1 : 8, \
	  NULL, 0, NULL, 0, "requests in flight at once (0: no limit)" }, \
	{ "max_context", SH_CONF_INT, base + L(max_context), inherit ? -1 : 0, 16777216, inherit ? -1 : 0, \
	  NULL, 0, NULL, 0, "prompt + max_tokens, tokens (0: the pools' limit)" }, \
	{ "requests_per_minute", SH_CONF_INT, base + L(requests_per_minute), inherit ? -1 : 0, 10000000, \
	  inherit ? -1 : 0, NULL, 0, NULL, 0, "request rate (0: no limit); bursts up to one minute's worth" }, \
	{ "tokens_per_minute", SH_CONF_INT, base + L(tokens_per_minute), inherit ? -1 : 0, 1000000000, \
	  inherit ? -1 : 0, NULL, 0, NULL, 0, "prompt + max_tokens per minute (0: no limit)" }, \
	{ "queue", SH_CONF_INT, base + L(queue), inherit ? -1 : 0, 100000, inherit ? -1 : 0, NULL, 0, NULL, 0, \
	  "requests that may wait for a free slot (0: 429 at once)" }, \
	{ "queue_timeout_ms", SH_CONF_INT, base + L(queue_timeout_ms), inherit ? -1 : 1, MS_MAX, \
	  inherit ? -1 : 30000, NULL, 0, NULL, 0, "a waiting request is answered 429 after this" }

static const struct sh_conf_key default_limit_keys[] = {
	LIMIT_ROWS(0, 0),
	{ 0 }
};

static const struct sh_conf_key user_keys[] = {
	{ "name", SH_CONF_STR, U(name), 0, 0, 0, "", 0, NULL, 0, "user name (logs, metrics, x-kvgate-user)" },
	{ "key_sha256", SH_CONF_STR, U(key_sha256), 0, 0, 0, "", 0, NULL, 0,
	  "hex SHA-256 of the user's API key: `kvgate hash-key` prints it" },
	LIMIT_ROWS(U(lim), 1),
	{ 0 }
};

static const struct sh_conf_key keys[] = {
	{ "listen", SH_CONF_STR, K(listen), 0, 0, 0, "127.0.0.1:8443", 0, NULL, 0,
	  "TLS listener host:port (\"\" for none)" },
	{ "listen_plain", SH_CONF_STR, K(listen_plain), 0, 0, 0, "", 0, NULL, 0,
	  "plain HTTP listener host:port (\"\" for none)" },
	{ "tls_cert", SH_CONF_STR, K(tls_cert), 0, 0, 0, "", 0, NULL, 0,
	  "PEM certificate chain for the TLS listener; re-read on SIGHUP" },
	{ "tls_key", SH_CONF_STR, K(tls_key), 0, 0, 0, "", 0, NULL, 0,
	  "PEM private key; re-read on SIGHUP" },
	{ "access_log", SH_CONF_STR, K(access_log), 0, 0, 0, "-", 0, NULL, 0,
	  "access log: \"-\" standard error, \"\" off, else a file (reopened on SIGHUP)" },
	{ "max_connections", SH_CONF_INT, K(max_connections), 1, 1000000, 4096, NULL, 0, NULL, 0,
	  "open client connections; more are answered 503 and closed" },
	{ "max_header_bytes", SH_CONF_INT, K(max_header_bytes), 1024, 1048576, 16384, NULL, 0, NULL, 0,
	  "URL and header bytes of a request; more is answered 431" },
	{ "max_headers", SH_CONF_INT, K(max_headers), 8, 10000, 100, NULL, 0, NULL, 0,
	  "header lines of a request; more is answered 431" },
	{ "max_body_bytes", SH_CONF_INT, K(max_body_bytes), 1024, 1073741824, 8388608, NULL, 0, NULL, 0,
	  "request body bytes; more is answered 413" },
	{ "header_timeout_ms", SH_CONF_INT, K(header_timeout_ms), 10, MS_MAX, 10000, NULL, 0, NULL, 0,
	  "time to receive a whole request once it started; then 408 and close" },
	{ "idle_timeout_ms", SH_CONF_INT, K(idle_timeout_ms), 10, MS_MAX, 60000, NULL, 0, NULL, 0,
	  "keep-alive connection with no request is closed after this" },
	{ "upstream_connect_timeout_ms", SH_CONF_INT, K(upstream_connect_timeout_ms), 10, MS_MAX, 2000,
	  NULL, 0, NULL, 0, "connecting to an engine; then the next instance, or 504" },
	{ "upstream_first_byte_timeout_ms", SH_CONF_INT, K(upstream_first_byte_timeout_ms), 10, MS_MAX,
	  120000, NULL, 0, NULL, 0, "request sent to the first response byte (includes prefill); then 504" },
	{ "upstream_read_timeout_ms", SH_CONF_INT, K(upstream_read_timeout_ms), 10, MS_MAX, 120000, NULL, 0,
	  NULL, 0, "after the first byte, the longest silence of an engine; then the response ends with an error" },
	{ "count_threads", SH_CONF_INT, K(count_threads), 0, 64, 2, NULL, 0, NULL, 0,
	  "threads that count the tokens of long prompts off the event loop (0: the loop counts them)" },
	{ "upstream_keepalive", SH_CONF_INT, K(upstream_keepalive), 0, 100000, 64, NULL, 0, NULL, 0,
	  "idle pooled connections kept per engine instance" },
	{ "stream_buffer_bytes", SH_CONF_INT, K(stream_buffer_bytes), 4096, 67108864, 262144, NULL, 0,
	  NULL, 0, "response bytes waiting for a slow client before kvgate stops reading the engine" },
	{ "shutdown_timeout_ms", SH_CONF_INT, K(shutdown_timeout_ms), 0, MS_MAX, 30000, NULL, 0, NULL, 0,
	  "SIGTERM: in-flight requests may finish for this long" },
	{ "health_interval_ms", SH_CONF_INT, K(health_interval_ms), 0, MS_MAX, 2000, NULL, 0, NULL, 0,
	  "active check of each engine's /health every this often (0: off; passive checks remain)" },
	{ "health_timeout_ms", SH_CONF_INT, K(health_timeout_ms), 10, MS_MAX, 1000, NULL, 0, NULL, 0,
	  "a check that takes longer has failed" },
	{ "health_fails", SH_CONF_INT, K(health_fails), 1, 1000, 2, NULL, 0, NULL, 0,
	  "consecutive failed checks that eject an instance; one passing check re-admits it" },
	{ "route_policy", SH_CONF_STR, K(route_policy), 0, 0, 0, "cache_aware", 0, NULL, 0,
	  "choice of instance in a pool: cache_aware, least_loaded or round_robin (for comparison)" },
	{ "route_balance_abs", SH_CONF_INT, K(route_balance_abs), 0, 100000, 4, NULL, 0, NULL, 0,
	  "in a pool, load wins over a cached prefix when max - min requests in flight exceeds this ..." },
	{ "route_balance_rel_pct", SH_CONF_INT, K(route_balance_rel_pct), 100, 100000, 150, NULL, 0, NULL, 0,
	  "... and max exceeds min times this percent" },
	{ "route_cache_threshold_pct", SH_CONF_INT, K(route_cache_threshold_pct), 0, 100, 50, NULL, 0, NULL, 0,
	  "share of a prompt's blocks an instance must likely hold to be chosen for its prefix" },
	{ "route_index_blocks", SH_CONF_INT, K(route_index_blocks), 16, 100000000, 65536, NULL, 0, NULL, 0,
	  "per-instance index of the prefix blocks kvgate routed there (LRU), blocks" },
	{ "pools", SH_CONF_LIST, K(pools), 1, 64, 0, NULL, K(n_pools), pool_keys,
	  sizeof(struct px_pool_conf), "engine pools" },
	{ "users", SH_CONF_LIST, K(users), 0, 100000, 0, NULL, K(n_users), user_keys,
	  sizeof(struct px_user_conf), "API keys and per-user limits (empty: no keys needed)" },
	{ "user_defaults", SH_CONF_OBJECT, K(user_defaults), 0, 0, 0, NULL, 0, default_limit_keys, 0,
	  "limits of users that do not set their own" },
	{ 0 }
};

void px_conf_release(struct px_conf *c)
{
	sh_conf_release(keys, c);
}

void px_conf_doc(FILE *out)
{
	sh_conf_doc(keys, out, 0);
}

int px_hex_digest(const char *hex, unsigned char out[32])
{
	size_t i;

	if (strlen(hex) != 64)
		return SH_ERR;
	for (i = 0; i < 32; i++) {
		int hi = sh_hexval(hex[2 * i]), lo = sh_hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return SH_ERR;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return SH_OK;
}

static void inherit(int64_t *v, int64_t def)
{
	if (*v < 0)
		*v = def;
}

/* Users need a name and a well-formed digest, both unique; limits inherit user_defaults.
 * Limits that need token counts are refused until the count stage exists. */
static int check_users(struct px_conf *c, const char *path, struct sh_err *err)
{
	size_t i, j;
	unsigned char d[32], e[32];
	int counting;

	for (i = 0; i < c->n_pools && !*c->pools[i].tokenizer; i++)
		;
	counting = i < c->n_pools;
	if (!counting && (c->user_defaults.max_context || c->user_defaults.tokens_per_minute))
		return sh_errf(err, "%s: user_defaults: max_context and tokens_per_minute need token counts: "
			       "set pools[].tokenizer", path);

	for (i = 0; i < c->n_users; i++) {
		struct px_user_conf *u = &c->users[i];
		if (!*u->name)
			return sh_errf(err, "%s: users[%zu].name: missing", path, i);
		if (px_hex_digest(u->key_sha256, d))
			return sh_errf(err, "%s: users[%zu].key_sha256: expected 64 hex digits (the output of "
				       "`kvgate hash-key`), never the key itself", path, i);
		for (j = 0; j < i; j++) {
			if (strcmp(c->users[j].name, u->name) == 0)
				return sh_errf(err, "%s: users[%zu].name: \"%s\" is used twice", path, i, u->name);
			px_hex_digest(c->users[j].key_sha256, e);
			if (memcmp(d, e, 32) == 0)
				return sh_errf(err, "%s: users[%zu].key_sha256: same key as users[%zu]", path, i, j);
		}
		inherit(&u->lim.max_concurrent, c->user_defaults.max_concurrent);
		inherit(&u->lim.max_context, c->user_defaults.max_context);
		inherit(&u->lim.requests_per_minute, c->user_defaults.requests_per_minute);
		inherit(&u->lim.tokens_per_minute, c->user_defaults.tokens_per_minute);
		inherit(&u->lim.queue, c->user_defaults.queue);
		inherit(&u->lim.queue_timeout_ms, c->user_defaults.queue_timeout_ms);
		if (!counting && (u->lim.max_context || u->lim.tokens_per_minute))
			return sh_errf(err, "%s: users[%zu]: max_context and tokens_per_minute need token counts: "
				       "set pools[].tokenizer", path, i);
	}
	return SH_OK;
}

/* What the table cannot say: checked after loading from a file or from text. */
static int check(struct px_conf *c, const char *path, struct sh_err *err)
{
	if (!*c->listen && !*c->listen_plain) {
		sh_errf(err, "%s: listen and listen_plain are both empty: nothing to serve", path);
		goto out_release;
	}
	if (*c->listen && (!*c->tls_cert || !*c->tls_key)) {
		sh_errf(err, "%s: listen (TLS) needs tls_cert and tls_key", path);
		goto out_release;
	}
	if (c->n_pools == 0) {
		sh_errf(err, "%s: pools: at least one pool with upstreams is needed", path);
		goto out_release;
	}
	if (strcmp(c->route_policy, "cache_aware") && strcmp(c->route_policy, "least_loaded") &&
	    strcmp(c->route_policy, "round_robin")) {
		sh_errf(err, "%s: route_policy: \"%s\" is not one of cache_aware, least_loaded, round_robin", path,
			c->route_policy);
		goto out_release;
	}
	if (check_users(c, path, err))
		goto out_release;
	return SH_OK;
out_release:
	px_conf_release(c);
	return SH_ERR;
}

int px_conf_load(struct px_conf *c, const char *path, struct sh_err *err)
{
	memset(c, 0, sizeof(*c));
	sh_conf_defaults(keys, c);
	if (sh_conf_load(keys, c, path, err)) {
		px_conf_release(c);
		return SH_ERR;
	}
	return check(c, path, err);
}

int px_conf_parse(struct px_conf *c, char *text, const char *name, struct sh_err *err)
{
	memset(c, 0, sizeof(*c));
	sh_conf_defaults(keys, c);
	if (sh_conf_parse(keys, c, text, err)) {
		px_conf_release(c);
		return SH_ERR;
	}
	return check(c, name, err);
}
