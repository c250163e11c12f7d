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
	{ "upstream_keepalive", SH_CONF_INT, K(upstream_keepalive), 0, 100000, 64, NULL, 0, NULL, 0,
	  "idle pooled connections kept per engine instance" },
	{ "stream_buffer_bytes", SH_CONF_INT, K(stream_buffer_bytes), 4096, 67108864, 262144, NULL, 0,
	  NULL, 0, "response bytes waiting for a slow client before kvgate stops reading the engine" },
	{ "shutdown_timeout_ms", SH_CONF_INT, K(shutdown_timeout_ms), 0, MS_MAX, 30000, NULL, 0, NULL, 0,
	  "SIGTERM: in-flight requests may finish for this long" },
	{ "pools", SH_CONF_LIST, K(pools), 1, 64, 0, NULL, K(n_pools), pool_keys,
	  sizeof(struct px_pool_conf), "engine pools" },
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

int px_conf_load(struct px_conf *c, const char *path, struct sh_err *err)
{
	memset(c, 0, sizeof(*c));
	sh_conf_defaults(keys, c);
	if (sh_conf_load(keys, c, path, err))
		goto out_release;
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
	return SH_OK;
out_release:
	px_conf_release(c);
	return SH_ERR;
}
