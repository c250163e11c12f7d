/* metrics.h: a small Prometheus registry. A program registers its metrics once at start and keeps
 * pointers to the series it updates on hot paths (no lookup per request). Series are identified by
 * a label string as it appears in the exposition (`route="chat",status="200"`, "" for none).
 * Single-threaded: each event loop owns its registry or updates under the caller's lock. */
#ifndef SH_METRICS_H
#define SH_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

enum sh_metric_type { SH_METRIC_COUNTER, SH_METRIC_GAUGE, SH_METRIC_HISTOGRAM };

struct sh_series {
	char *labels;
	double value;               /* counter or gauge */
	uint64_t *buckets;          /* histogram: count per bound, not cumulative; [n_bounds] is +Inf */
	double sum;
	uint64_t count;
	struct sh_series *next;
};

struct sh_metric {
	char *name, *help;
	enum sh_metric_type type;
	double *bounds;             /* histogram upper bounds, ascending */
	size_t n_bounds;
	struct sh_series *series;
	struct sh_metric *next;
};

struct sh_metrics {
	struct sh_metric *head, *tail;
};

void sh_metrics_init(struct sh_metrics *r);
void sh_metrics_release(struct sh_metrics *r);

/* Register a metric. bounds/n_bounds only for histograms (copied). The returned pointer lives as
 * long as the registry. */
struct sh_metric *sh_metric_new(struct sh_metrics *r, const char *name, const char *help,
				enum sh_metric_type type, const double *bounds, size_t n_bounds);

/* Find or create the series with these labels; lives as long as the registry. */
struct sh_series *sh_series_get(struct sh_metric *m, const char *labels);

static inline void sh_series_add(struct sh_series *s, double v) { s->value += v; }
static inline void sh_series_set(struct sh_series *s, double v) { s->value = v; }
void sh_series_observe(const struct sh_metric *m, struct sh_series *s, double v);

/* Append the text exposition format (version 0.0.4) to out. */
void sh_metrics_render(const struct sh_metrics *r, struct evbuffer *out);

#endif
