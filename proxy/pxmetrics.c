/* pxmetrics.c: kvgate's metrics (see pxmetrics.h). Series are looked up once at start, except
 * requests_total{route,status}, found by a short list walk per request. */
#include "pxmetrics.h"

#include <stdio.h>

#include "req.h"

static const double latency_bounds[] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
};

void px_metrics_init(struct px_metrics *m)
{
	struct sh_metric *t;

	sh_metrics_init(&m->reg);
	m->requests = sh_metric_new(&m->reg, "kvgate_requests_total",
				    "Requests answered, by route and status (499: client went away)",
				    SH_METRIC_COUNTER, NULL, 0);
	t = sh_metric_new(&m->reg, "kvgate_requests_in_flight", "Requests being answered now",
			  SH_METRIC_GAUGE, NULL, 0);
	m->in_flight = sh_series_get(t, "");
	m->ttfb = sh_metric_new(&m->reg, "kvgate_upstream_ttfb_seconds",
				"Request sent to an engine to its first response byte", SH_METRIC_HISTOGRAM,
				latency_bounds, SH_ARRAY_LEN(latency_bounds));
	m->ttfb_all = sh_series_get(m->ttfb, "");
	m->duration = sh_metric_new(&m->reg, "kvgate_request_duration_seconds",
				    "First request byte to the last response byte", SH_METRIC_HISTOGRAM,
				    latency_bounds, SH_ARRAY_LEN(latency_bounds));
	m->duration_all = sh_series_get(m->duration, "");
	m->bytes = sh_metric_new(&m->reg, "kvgate_bytes_relayed_total", "Body bytes relayed, by direction",
				 SH_METRIC_COUNTER, NULL, 0);
	m->bytes_to_client = sh_series_get(m->bytes, "direction=\"to_client\"");
	m->bytes_to_upstream = sh_series_get(m->bytes, "direction=\"to_upstream\"");
	t = sh_metric_new(&m->reg, "kvgate_connections_open", "Open client connections", SH_METRIC_GAUGE,
			  NULL, 0);
	m->conns_open = sh_series_get(t, "");
	t = sh_metric_new(&m->reg, "kvgate_connections_total", "Client connections accepted",
			  SH_METRIC_COUNTER, NULL, 0);
	m->conns_total = sh_series_get(t, "");
	t = sh_metric_new(&m->reg, "kvgate_tls_handshakes_total", "TLS handshakes completed",
			  SH_METRIC_COUNTER, NULL, 0);
	m->tls_ok = sh_series_get(t, "");
	t = sh_metric_new(&m->reg, "kvgate_tls_handshake_failures_total", "TLS handshakes that failed",
			  SH_METRIC_COUNTER, NULL, 0);
	m->tls_fail = sh_series_get(t, "");
	t = sh_metric_new(&m->reg, "kvgate_upstream_retries_total",
			  "Requests retried on another engine after a failure before the first byte",
			  SH_METRIC_COUNTER, NULL, 0);
	m->retries = sh_series_get(t, "");
	t = sh_metric_new(&m->reg, "kvgate_upstream_errors_total",
			  "Engine failures: refused, timed out, closed early or mid-response", SH_METRIC_COUNTER,
			  NULL, 0);
	m->upstream_errors = sh_series_get(t, "");
	m->user_in_flight = sh_metric_new(&m->reg, "kvgate_user_in_flight", "Requests in flight per user",
					  SH_METRIC_GAUGE, NULL, 0);
	m->rejections = sh_metric_new(&m->reg, "kvgate_user_rejections_total",
				      "Requests refused by a user limit or key check, by reason", SH_METRIC_COUNTER,
				      NULL, 0);
	m->queue_time = sh_metric_new(&m->reg, "kvgate_queue_seconds", "Time waiting for a user's slot",
				      SH_METRIC_HISTOGRAM, latency_bounds, SH_ARRAY_LEN(latency_bounds));
	m->queue_time_all = sh_series_get(m->queue_time, "");
	m->route_decisions = sh_metric_new(&m->reg, "kvgate_route_decisions_total",
					   "Choices of instance in a pool, by cause: prefix (a cached prefix won), load "
					   "(imbalance won), miss (nothing cached: least loaded)", SH_METRIC_COUNTER, NULL, 0);
	t = sh_metric_new(&m->reg, "kvgate_prefix_blocks_total",
			  "Prompt prefix blocks routed (requested) and those kvgate expected the chosen instance "
			  "to hold (matched); matched/requested is the estimated prefix hit ratio",
			  SH_METRIC_COUNTER, NULL, 0);
	m->blocks_requested = sh_series_get(t, "kind=\"requested\"");
	m->blocks_matched = sh_series_get(t, "kind=\"matched\"");
	m->up_healthy = sh_metric_new(&m->reg, "kvgate_upstream_healthy",
				      "1 if the engine instance is taking requests", SH_METRIC_GAUGE, NULL, 0);
}

void px_metrics_release(struct px_metrics *m)
{
	sh_metrics_release(&m->reg);
}

void px_metrics_request(struct px_metrics *m, const struct px_req *r)
{
	int cached = r->status >= 0 && r->status < 600;
	struct sh_series *s = cached ? m->by_route_status[r->route][r->status] : NULL;
	char labels[64];

	if (!s) {
		snprintf(labels, sizeof(labels), "route=\"%s\",status=\"%d\"", px_route_name(r->route), r->status);
		s = sh_series_get(m->requests, labels);
		if (cached)
			m->by_route_status[r->route][r->status] = s;
	}
	sh_series_add(s, 1);
	sh_series_observe(m->duration, m->duration_all, (double)(r->t_end_us - r->t_start_us) / 1e6);
	sh_series_add(m->bytes_to_client, (double)r->bytes_out);
}

void px_metrics_reject(struct px_metrics *m, const struct px_user *u, const char *reason)
{
	char labels[200];

	snprintf(labels, sizeof(labels), "user=\"%.120s\",reason=\"%s\"", u ? u->name : "-", reason);
	sh_series_add(sh_series_get(m->rejections, labels), 1);
}

void px_metrics_ttfb(struct px_metrics *m, double seconds)
{
	sh_series_observe(m->ttfb, m->ttfb_all, seconds);
}

void px_metrics_render(struct px_metrics *m, struct px_server *srv, struct evbuffer *out)
{
	(void)srv;
	sh_metrics_render(&m->reg, out);
}
