/* server.h: kvgate-engine's HTTP server (libevent + shared/http.h). It runs on the libevent
 * thread; generation runs on the scheduler thread (engine/sched.h). The scheduler signals new
 * output through an eventfd; the server turns it into JSON or SSE.
 *
 * Endpoints:
 *   POST /v1/chat/completions, /v1/completions (and /v1/beta/completions, an alias), /v1/responses
 *   GET  /v1/models, /health, /metrics
 *   POST /tokenize, /detokenize
 *   GET  /kvgate/state?since=N   routing state, DESIGN.md contract 2:
 *        {"seq": S, "reset": bool, "model", "block_size", "running", "waiting",
 *         "free_blocks" (free + evictable), "total_blocks", "kv_cache_usage",
 *         "added": ["%016x", ...], "evicted": ["%016x", ...]}
 *        S is the number of the last prefix-cache event; pass it as since next time. The lists are
 *        the net change since N (a hash added then evicted is only in evicted, and the reverse).
 *        reset: N is older than the log keeps (or from another run): forget this instance's
 *        hashes and take `added` as the whole set. Hashes are contract-1 block hashes.
 * A request may carry x-request-id (echoed back) and x-kvgate-user (the fairness key). A closed
 * connection cancels its sequences. */
#ifndef ENG_SERVER_H
#define ENG_SERVER_H

#include <pthread.h>
#include <stddef.h>

#include "api.h"
#include "metrics.h"
#include "sched.h"

struct event_base;

struct eng_server_conf {
	const char *host;
	int port;
	const char *model_name;          /* served model name */
	const char *model_path;
	const char *kv_dtype;            /* for cache_config_info */
	double gpu_mem_util;
	size_t max_body;                 /* request body bytes */
	size_t weight_bytes;
	size_t kv_block_bytes;           /* one block, all layers */
	double kv_bytes_per_token;       /* all layers */
	int block_size;
	int prefix_caching;
	uint64_t seed;                   /* --seed: draws the seeds of requests that carry none */
};

struct eng_server;

/* ctx (tokenizer, renderer, limits) and sched must outlive the server. The server creates the
 * metrics registry and hands the scheduler its histograms. */
struct eng_server *eng_server_new(struct event_base *base, const struct eng_server_conf *conf,
				  struct eng_sched *sched, const struct eng_api_ctx *ctx, struct sh_err *err);
/* The scheduler's notify callback (ud: the server). */
void eng_server_notify(void *ud);
/* Graceful stop (SIGTERM): stops listening (new connections are refused), closes the idle
 * connections, lets the requests being answered finish (each connection closes after its answer)
 * and then calls done(ud) once, from the event loop. Returns how many requests are in flight. */
int eng_server_drain(struct eng_server *srv, void (*done)(void *ud), void *ud);
/* Ends every request in flight with msg: a 503, or in a stream that started an error event and
 * the stream's end; their sequences are cancelled (the drain's --shutdown-timeout). Returns how
 * many. */
int eng_server_abort(struct eng_server *srv, const char *msg);
/* Stops listening and closes every connection (their sequences are cancelled). */
void eng_server_free(struct eng_server *srv);

#endif
