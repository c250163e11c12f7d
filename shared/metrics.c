/* metrics.c: Prometheus registry and text exposition (see metrics.h). */
#include "metrics.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "sh.h"

void sh_metrics_init(struct sh_metrics *r)
{
	r->head = r->tail = NULL;
}

void sh_metrics_release(struct sh_metrics *r)
{
	struct sh_metric *m, *mn;
	struct sh_series *s, *sn;

	for (m = r->head; m; m = mn) {
		mn = m->next;
		for (s = m->series; s; s = sn) {
			sn = s->next;
			free(s->labels);
			free(s->buckets);
			free(s);
		}
		free(m->name);
		free(m->help);
		free(m->bounds);
		free(m);
	}
	r->head = r->tail = NULL;
}

struct sh_metric *sh_metric_new(struct sh_metrics *r, const char *name, const char *help,
				enum sh_metric_type type, const double *bounds, size_t n_bounds)
{
	struct sh_metric *m = sh_calloc(1, sizeof(*m));

	m->name = sh_strdup(name);
	m->help = sh_strdup(help);
	m->type = type;
	if (type == SH_METRIC_HISTOGRAM) {
		m->bounds = sh_malloc(n_bounds * sizeof(double));
		memcpy(m->bounds, bounds, n_bounds * sizeof(double));
		m->n_bounds = n_bounds;
	}
	if (r->tail)
		r->tail->next = m;
	else
		r->head = m;
	r->tail = m;
	return m;
}

struct sh_series *sh_series_get(struct sh_metric *m, const char *labels)
{
	struct sh_series *s, **tail = &m->series;

	for (s = m->series; s; s = s->next) {
		if (strcmp(s->labels, labels) == 0)
			return s;
		tail = &s->next;
	}
	s = sh_calloc(1, sizeof(*s));
	s->labels = sh_strdup(labels);
	if (m->type == SH_METRIC_HISTOGRAM)
		s->buckets = sh_calloc(m->n_bounds + 1, sizeof(uint64_t));
	*tail = s;
	return s;
}

void sh_series_observe(const struct sh_metric *m, struct sh_series *s, double v)
{
	size_t i = 0;

	while (i < m->n_bounds && v > m->bounds[i])
		i++;
	s->buckets[i]++;
	s->sum += v;
	s->count++;
}

static const char *type_name(enum sh_metric_type t)
{
	return t == SH_METRIC_COUNTER ? "counter" : t == SH_METRIC_GAUGE ? "gauge" : "histogram";
}

void sh_metrics_render(const struct sh_metrics *r, struct evbuffer *out)
{
	const struct sh_metric *m;
	const struct sh_series *s;
	size_t i;

	for (m = r->head; m; m = m->next) {
		evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
				    type_name(m->type));
		for (s = m->series; s; s = s->next) {
			const char *sep = *s->labels ? "," : "";
			uint64_t cum = 0;

			if (m->type != SH_METRIC_HISTOGRAM) {
				evbuffer_add_printf(out, *s->labels ? "%s{%s} %.17g\n" : "%s%s %.17g\n",
						    m->name, s->labels, s->value);
				continue;
			}
			for (i = 0; i <= m->n_bounds; i++) {
				cum += s->buckets[i];
				if (i < m->n_bounds)
					evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", m->name,
							    s->labels, sep, m->bounds[i], (unsigned long long)cum);
				else
					evbuffer_add_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", m->name,
							    s->labels, sep, (unsigned long long)cum);
			}
			evbuffer_add_printf(out, *s->labels ? "%s_sum{%s} %.17g\n%s_count{%s} %llu\n"
							    : "%s_sum%s %.17g\n%s_count%s %llu\n",
					    m->name, s->labels, s->sum, m->name, s->labels,
					    (unsigned long long)s->count);
		}
	}
}
