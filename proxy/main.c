/* main.c: kvgate's command line, start-up, signals and shutdown.
 *
 *   kvgate -c FILE            serve
 *   kvgate --check -c FILE    validate the configuration and exit
 *   kvgate --conf-keys        print every configuration key with its type, bounds and default
 *   kvgate tokenize|detokenize MODEL_DIR ...   (see --help)
 */
#include <event2/event.h>
#include <getopt.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "conn.h"
#include "count.h"
#include "health.h"
#include "listen.h"
#include "px.h"
#include "pxconf.h"
#include "pxlog.h"
#include "pxmetrics.h"
#include "route.h"
#include "tokcmd.h"
#include "upstream.h"

#define KVGATE_VERSION "0.1.0"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: kvgate -c FILE            serve (HTTPS reverse proxy and router for LLM engines)\n"
		"       kvgate --check -c FILE    check the configuration and exit\n"
		"       kvgate --conf-keys        list the configuration keys\n"
		"       kvgate hash-key [KEY]    print the SHA-256 of an API key for users[].key_sha256\n"
		"       kvgate tokenize MODEL_DIR [--add-special-tokens] [--chat]   text (or messages) -> ids\n"
		"       kvgate detokenize MODEL_DIR [--skip-special-tokens]         ids -> text\n"
		"       kvgate --version\n"
		"signals: SIGHUP re-reads the TLS certificate and key and reopens the access log;\n"
		"         SIGTERM/SIGINT stop accepting and let requests finish (shutdown_timeout_ms)\n");
}

static void free_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	px_conn_reap(arg);
}

static void hup_cb(evutil_socket_t fd, short what, void *arg)
{
	struct px_server *srv = arg;
	struct sh_err err;

	(void)fd;
	(void)what;
	if (px_tls_reload(srv, &err))
		px_log("SIGHUP: keeping the old certificate: %s", err.msg);
	else if (*srv->conf.listen)
		px_log("SIGHUP: reloaded %s", srv->conf.tls_cert);
	if (px_log_open(srv, &err))
		px_log("SIGHUP: %s", err.msg);
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct px_server *srv = arg;

	(void)fd;
	(void)what;
	px_log("shutdown: %d connection(s) still open after %lld ms; closing them", srv->n_conns,
	       (long long)srv->conf.shutdown_timeout_ms);
	event_base_loopexit(srv->base, NULL);
}

static void term_cb(evutil_socket_t fd, short what, void *arg)
{
	struct px_server *srv = arg;
	int64_t ms = srv->conf.shutdown_timeout_ms;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	(void)what;
	if (srv->draining) {
		px_log("second signal %d: exiting now", (int)fd);
		event_base_loopexit(srv->base, NULL);
		return;
	}
	px_log("signal %d: draining %d connection(s)", (int)fd, srv->n_conns);
	srv->draining = 1;
	px_listen_stop(srv);
	px_conn_drain_all(srv);
	if (srv->n_conns == 0) {
		event_base_loopexit(srv->base, NULL);
		return;
	}
	srv->drain_timer = evtimer_new(srv->base, drain_timeout_cb, srv);
	evtimer_add(srv->drain_timer, &tv);
}

static int serve(const char *conf_path, int check_only)
{
	struct px_server srv;
	struct sh_err err;
	struct px_conn *c;
	uint64_t seed;
	int rc = 1;

	memset(&srv, 0, sizeof(srv));
	srv.conf_path = conf_path;
	if (px_conf_load(&srv.conf, conf_path, &err)) {
		fprintf(stderr, "kvgate: %s\n", err.msg);
		return 1;
	}
	px_metrics_init(&srv.met);
	srv.base = event_base_new();
	if (!srv.base) {
		fprintf(stderr, "kvgate: cannot create the event loop\n");
		goto out_conf;
	}
	if (px_upstreams_init(&srv, &err)) {
		fprintf(stderr, "kvgate: %s: %s\n", conf_path, err.msg);
		goto out_models;
	}
	px_users_init(&srv);
	if (px_models_init(&srv, &err)) {
		fprintf(stderr, "kvgate: %s: %s\n", conf_path, err.msg);
		goto out_models;
	}
	px_route_init(&srv);
	if (check_only) {
		SSL_CTX *ctx = *srv.conf.listen ? px_tls_ctx_new(&srv.conf, &err) : NULL;
		if (*srv.conf.listen && !ctx) {
			fprintf(stderr, "kvgate: %s: %s\n", conf_path, err.msg);
			goto out_route;
		}
		SSL_CTX_free(ctx);
		printf("kvgate: %s is valid\n", conf_path);
		rc = 0;
		goto out_route;
	}
	if (px_log_open(&srv, &err) || px_listen_start(&srv, &err)) {
		fprintf(stderr, "kvgate: %s\n", err.msg);
		goto out_listen;
	}
	if (RAND_bytes((unsigned char *)&seed, sizeof(seed)) != 1)
		seed = (uint64_t)sh_now_us();
	srv.next_rid = seed;
	srv.t_start_s = sh_wall_s();
	srv.free_ev = event_new(srv.base, -1, 0, free_cb, &srv);
	srv.sig_hup = evsignal_new(srv.base, SIGHUP, hup_cb, &srv);
	srv.sig_term = evsignal_new(srv.base, SIGTERM, term_cb, &srv);
	srv.sig_int = evsignal_new(srv.base, SIGINT, term_cb, &srv);
	event_add(srv.sig_hup, NULL);
	event_add(srv.sig_term, NULL);
	event_add(srv.sig_int, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (sh_workers_start(&srv.workers, srv.base, (int)srv.conf.count_threads, &err)) {
		fprintf(stderr, "kvgate: %s\n", err.msg);
		goto out_workers;  /* nothing else started yet but the signals and the listeners */
	}
	px_health_start(&srv);

	px_log("kvgate %s listening on%s%s%s%s (%zu pool(s), %s)", KVGATE_VERSION,
	       *srv.conf.listen ? " https://" : "", srv.conf.listen, *srv.conf.listen_plain ? " http://" : "",
	       srv.conf.listen_plain, srv.n_pools,
	       srv.auth ? "API keys required" : "no API keys configured: anyone may use it");
	event_base_dispatch(srv.base);
	px_log("stopped");
	rc = 0;

	px_health_stop(&srv);
	while ((c = srv.conns))
		px_conn_close(c);
	px_conn_reap(&srv);
	sh_workers_stop(&srv.workers);  /* after the requests: their jobs see them gone */
out_workers:
	event_free(srv.free_ev);
	srv.free_ev = NULL;  /* from here on, closed upstream connections are freed at once */
	event_free(srv.sig_hup);
	event_free(srv.sig_term);
	event_free(srv.sig_int);
	if (srv.drain_timer)
		event_free(srv.drain_timer);
out_listen:
	px_listen_stop(&srv);
	SSL_CTX_free(srv.ssl_ctx);
	px_log_close(&srv);
out_route:
	px_route_release(&srv);
out_models:
	px_models_release(&srv);
	px_users_release(&srv);
	px_upstreams_release(&srv);
	event_base_free(srv.base);
out_conf:
	px_metrics_release(&srv.met);
	px_conf_release(&srv.conf);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "conf", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 'C' },
		{ "conf-keys", no_argument, NULL, 'K' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 }
	};
	const char *conf = NULL;
	int check = 0, ch;

	if (argc > 1 && strcmp(argv[1], "hash-key") == 0)
		return px_hashkey_main(argc - 1, argv + 1);
	if (argc > 1 && (strcmp(argv[1], "tokenize") == 0 || strcmp(argv[1], "detokenize") == 0))
		return px_tokcmd_main(argc - 1, argv + 1);
	while ((ch = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': conf = optarg; break;
		case 'C': check = 1; break;
		case 'K': px_conf_doc(stdout); return 0;
		case 'h': usage(stdout); return 0;
		case 'V': printf("kvgate %s\n", KVGATE_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kvgate: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (!conf) {
		fprintf(stderr, "kvgate: no configuration: give -c FILE (conf/kvgate.conf is the example)\n");
		return 2;
	}
	return serve(conf, check);
}
