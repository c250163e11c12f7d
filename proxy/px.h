/* px.h: kvgate's shared types: the configuration, the server (one event loop), client connections
 * and the request object that flows through the stages (STYLE.md rule 2). Module functions are
 * declared in each module's own header. */
#ifndef PX_H
#define PX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf.h"
#include "http.h"
#include "metrics.h"
#include "workers.h"

struct event_base;
struct event;
struct evbuffer;
struct bufferevent;
struct evconnlistener;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct cJSON cJSON;

/* ---- configuration (proxy/conf.c holds the table) ---- */
struct px_pool_conf {
	char *name;
	char **upstreams;               /* "host:port" */
	size_t n_upstreams;
	int64_t max_model_len;          /* tokens; 0 = read from the engine's /v1/models */
	char *model;                    /* served model name; "" = learn it from the engines */
	char *tokenizer;                /* model directory with tokenizer.json; "" = no token counting */
	char *chat_template;            /* renderer name; "" = recognise the model's template */
	int64_t block_size;             /* the engines' KV block size (prefix hashes), tokens */
};

/* Per-user limits; 0 means "no limit" (the context limit then comes from the pools). In the users
 * list, -1 means "the value in user_defaults". */
struct px_limits {
	int64_t max_concurrent;         /* requests in flight */
	int64_t max_context;            /* prompt + max_tokens, tokens */
	int64_t requests_per_minute;
	int64_t tokens_per_minute;      /* prompt + max_tokens of admitted requests */
	int64_t queue;                  /* requests that may wait for a slot; 0: 429 at once */
	int64_t queue_timeout_ms;       /* a waiting request gets 429 after this */
};

struct px_user_conf {
	char *name;
	char *key_sha256;               /* hex SHA-256 of the API key (`kvgate hash-key`) */
	struct px_limits lim;
};

struct px_conf {
	char *listen;                   /* TLS listener "host:port", "" = none */
	char *listen_plain;             /* plain HTTP listener, "" = none */
	char *tls_cert, *tls_key;       /* PEM files, re-read on SIGHUP */
	char *access_log;               /* "-" stderr, "" off, else a file (reopened on SIGHUP) */
	int64_t max_connections;
	int64_t max_header_bytes;       /* URL + header bytes per request */
	int64_t max_headers;            /* header lines per request */
	int64_t max_body_bytes;
	int64_t header_timeout_ms;      /* first byte of a request to its last byte */
	int64_t idle_timeout_ms;        /* keep-alive connection with no request */
	int64_t upstream_connect_timeout_ms;
	int64_t upstream_first_byte_timeout_ms;
	int64_t upstream_read_timeout_ms;
	int64_t count_threads;          /* workers that count long prompts (0: the event loop does) */
	int64_t upstream_keepalive;     /* idle pooled connections kept per upstream */
	int64_t stream_buffer_bytes;    /* client output above this: stop reading the upstream */
	int64_t shutdown_timeout_ms;    /* SIGTERM: how long in-flight requests may take */
	int64_t health_interval_ms;     /* active checks of each engine's /health; 0 = off */
	int64_t health_timeout_ms;
	int64_t health_fails;           /* consecutive failed checks that eject an instance */
	char *route_policy;             /* cache_aware | least_loaded | round_robin */
	int64_t route_balance_abs;      /* in-flight spread (max - min) above which load wins ... */
	int64_t route_balance_rel_pct;  /* ... if also max > min * this / 100 */
	int64_t route_cache_threshold_pct; /* percent of a prompt's blocks cached to prefer that instance */
	int64_t route_index_blocks;     /* per-instance approximate index size, blocks (LRU) */
	struct px_pool_conf *pools;
	size_t n_pools;
	struct px_user_conf *users;     /* empty: no API keys, everyone is "anonymous" */
	size_t n_users;
	struct px_limits user_defaults;
};

/* ---- upstreams (proxy/upstream.c) ---- */
struct px_upconn;

struct px_upstream {
	char *addr;                     /* "host:port" as configured */
	struct sockaddr_storage sa;
	int salen;
	struct px_pool *pool;
	int in_flight;                  /* requests on it now */
	int healthy;                    /* 0 after a failed connect, until retry_at passes or a success */
	int64_t retry_at_us;
	int draining;                   /* its /health says it is draining: no new requests */
	int check_fails;                /* consecutive failed active checks */
	struct px_check *check;         /* proxy/health.c */
	char model[128];                /* first model id of its /v1/models, "" until known */
	int64_t max_model_len;          /* from its /v1/models, 0 until known */
	int64_t outstanding;            /* prompt + max_tokens of the requests on it, tokens */
	struct px_pindex *index;        /* block hashes it likely holds (proxy/pindex.c) */
	int state_report;               /* -1 not asked yet, 0 it has no /kvgate/state, 1 it reports */
	uint64_t state_seq;             /* the report's sequence number we are up to */
	struct px_upconn *idle;         /* pooled keep-alive connections, most recent first */
	int n_idle;
	struct sh_series *m_healthy;
};

struct sh_tok;
struct sh_chat;
struct px_pindex;

struct px_pool {
	char *name;
	const char *model;              /* configured name, or "" */
	struct sh_tok *tok;             /* shared by pools with the same tokenizer directory; NULL: none */
	struct sh_chat *chat;
	int own_tok;                    /* this pool frees tok and chat */
	size_t block;                   /* prefix block size, tokens */
	struct sh_series *m_prefix, *m_load, *m_miss, *m_rr;  /* kvgate_route_decisions_total by cause */
	struct px_upstream *ups;
	size_t n_ups;
	size_t rr;                      /* round-robin cursor for ties */
	int64_t max_model_len;
	struct px_server *srv;
};

/* ---- routes (proxy/req.c) ---- */
enum px_route {
	PX_ROUTE_OTHER,                 /* some other path under /v1/: forwarded as is */
	PX_ROUTE_CHAT,                  /* POST /v1/chat/completions */
	PX_ROUTE_COMPLETIONS,           /* POST /v1/completions, /v1/beta/completions */
	PX_ROUTE_RESPONSES,             /* POST /v1/responses */
	PX_ROUTE_EMBEDDINGS,            /* POST /v1/embeddings */
	PX_ROUTE_MODELS,                /* GET /v1/models[/id] */
	PX_ROUTE_HEALTH,                /* GET /health */
	PX_ROUTE_METRICS,               /* GET /metrics */
	PX_ROUTE_NOT_FOUND,
	PX_ROUTE__COUNT
};

/* ---- metrics (proxy/pxmetrics.c) ---- */
struct px_metrics {
	struct sh_metrics reg;
	struct sh_metric *requests, *ttfb, *duration, *bytes, *up_healthy;
	struct sh_series *by_route_status[PX_ROUTE__COUNT][600];  /* requests_total series, found once */
	struct sh_series *in_flight, *conns_open, *conns_total, *tls_ok, *tls_fail;
	struct sh_series *bytes_to_client, *bytes_to_upstream, *ttfb_all, *duration_all;
	struct sh_series *retries, *upstream_errors;
	struct sh_metric *user_in_flight, *rejections, *queue_time, *route_decisions;
	struct sh_series *blocks_requested, *blocks_matched;
	struct sh_series *queue_time_all;
};

/* ---- users (proxy/auth.c, proxy/limit.c) ---- */
struct px_wait;

struct px_user {
	const char *name;               /* from the configuration */
	unsigned char digest[32];       /* SHA-256 of the key */
	struct px_limits lim;           /* defaults resolved */
	int in_flight;
	struct px_wait *wait_head, *wait_tail;  /* requests waiting for a slot, oldest first */
	int n_waiting;
	double rpm_bucket;              /* requests available now (token bucket, refills rpm/60 per s) */
	double tpm_bucket;              /* tokens available now */
	int64_t bucket_at_us;           /* when the buckets were last refilled */
	struct sh_series *m_in_flight;
};

/* ---- the server: one event loop ---- */
struct px_conn;

struct px_server {
	struct event_base *base;
	struct px_conf conf;
	const char *conf_path;
	SSL_CTX *ssl_ctx;               /* swapped on SIGHUP; open connections keep the old one */
	struct evconnlistener *lis_tls, *lis_plain;
	struct px_pool *pools;
	size_t n_pools;
	struct px_user *users;          /* n_users; one "anonymous" user when no keys are configured */
	size_t n_users;
	int auth;                       /* API keys required */
	int reads_bodies;               /* some pool routes by model or counts tokens: parse JSON bodies */
	struct px_metrics met;
	void *access_log;               /* FILE *, NULL when off */
	struct px_conn *conns;          /* every open connection (for drain) */
	int n_conns;
	struct px_conn *dead;           /* closed, freed by free_ev outside their callbacks */
	struct px_upconn *dead_up;
	struct event *free_ev;
	struct event *sig_hup, *sig_term, *sig_int, *drain_timer;
	int draining;
	uint64_t next_rid;
	int64_t t_start_s;              /* wall clock at start: `created` of the models list */
	struct sh_workers workers;      /* count_threads: long prompts counted off the loop */
};

/* ---- request and connection (proxy/conn.c, proxy/req.c) ---- */

/* What a stage returns: NEXT (go on), DONE (it answered), AGAIN (waiting on I/O; it will call
 * px_req_resume), or an HTTP status >= 400 with req->err_* set. */
enum { PX_NEXT = 0, PX_DONE = 1, PX_AGAIN = 2 };

struct px_cleanup {
	void (*fn)(void *arg);
	void *arg;
	struct px_cleanup *next;
};

enum px_req_state { PX_REQ_READING, PX_REQ_RUNNING, PX_REQ_DONE };

struct px_req {
	struct px_conn *conn;
	struct sh_http_msg *msg;        /* the connection's parser: headers valid until finish */
	enum px_req_state state;
	enum px_route route;
	int method;                     /* llhttp_method_t */
	struct evbuffer *body;          /* request body, bounded by max_body_bytes */
	cJSON *json;                    /* parsed body for the routes kvgate reads, else NULL */
	int stream;                     /* the body's "stream" is true */
	char rid[65];                   /* x-request-id */
	size_t stage;                   /* index of the stage to run next */
	int status;                     /* status sent to the client (0 until sent) */
	const char *err_msg, *err_code, *err_param;
	char err_buf[256];              /* err_msg may point here */
	char err_hdrs[256];             /* extra header lines for the error answer (Retry-After, ...) */
	struct px_user *user;           /* known after the auth stage */
	int64_t prompt_tokens;          /* counted by the count stage; -1 when not counted */
	int64_t max_tokens;             /* effective (clamped) max_tokens; -1 when not given */
	int64_t tokens_est;             /* prompt + max_tokens (or the room left): outstanding on r->up */
	uint64_t *hashes;               /* prefix-block hashes of the prompt (malloc'd), nhashes */
	size_t nhashes;
	struct px_upstream *route_up;   /* the route stage's choice for the first attempt */
	struct px_upstream *outstanding_on;  /* the instance tokens_est is counted on */
	struct px_wait *wait;           /* the limit stage's state: slot, queue place */
	int rpm_charged;                /* took a requests_per_minute token (given back on a later 429) */
	void *count_job;                /* the count stage's job on a worker (it holds json meanwhile) */
	int64_t t_start_us, t_ttfb_us, t_end_us;
	uint64_t bytes_out;             /* response body bytes to the client */
	struct px_pool *pool;
	struct px_upstream *up;         /* the upstream of the current attempt */
	struct px_upconn *uc;
	int attempts;                   /* upstream instances tried */
	int deliveries;                 /* failed attempts on a connected engine (it may have read it) */
	unsigned head_sent:1, chunked:1, sse:1, client_gone:1, stale_retried:1;
	char tail[2];                   /* last two body bytes sent: SSE event boundary check */
	struct px_cleanup *cleanups;
};

struct px_conn {
	struct px_server *srv;
	struct bufferevent *bev;
	int tls;
	char peer[64];                  /* client address for logs and X-Forwarded-For */
	struct sh_http_msg msg;
	struct px_req *req;             /* the request being read or answered (one at a time) */
	struct event *timer;            /* header or idle timeout */
	int64_t t_accept_us;
	unsigned dead:1, close_after:1, in_parse:1, over_cap:1, handshaken:1, up_paused:1;
	struct px_conn *prev, *next;    /* srv->conns */
	struct px_conn *next_dead;
};

#endif
