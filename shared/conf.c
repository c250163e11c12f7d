/* conf.c: the table-driven configuration loader (see conf.h). */
#include "conf.h"

#include <cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>

#define CONF_MAX_FILE (1 << 20)

#define FIELD(dst, key, type) ((type *)((char *)(dst) + (key)->off))
#define COUNT(dst, key) ((size_t *)((char *)(dst) + (key)->count_off))

void sh_conf_defaults(const struct sh_conf_key *table, void *dst)
{
	const struct sh_conf_key *k;

	for (k = table; k->name; k++) {
		switch (k->type) {
		case SH_CONF_STR:
			*FIELD(dst, k, char *) = sh_strdup(k->def_str ? k->def_str : "");
			break;
		case SH_CONF_INT:
			*FIELD(dst, k, int64_t) = k->def_int;
			break;
		case SH_CONF_BOOL:
			*FIELD(dst, k, int) = (int)k->def_int;
			break;
		case SH_CONF_STRLIST:
			*FIELD(dst, k, char **) = NULL;
			*COUNT(dst, k) = 0;
			break;
		case SH_CONF_LIST:
			*FIELD(dst, k, void *) = NULL;
			*COUNT(dst, k) = 0;
			break;
		case SH_CONF_OBJECT:
			sh_conf_defaults(k->sub, FIELD(dst, k, char));
			break;
		}
	}
}

void sh_conf_release(const struct sh_conf_key *table, void *dst)
{
	const struct sh_conf_key *k;
	size_t i, n;

	for (k = table; k->name; k++) {
		switch (k->type) {
		case SH_CONF_STR:
			free(*FIELD(dst, k, char *));
			*FIELD(dst, k, char *) = NULL;
			break;
		case SH_CONF_STRLIST: {
			char **v = *FIELD(dst, k, char **);
			n = *COUNT(dst, k);
			for (i = 0; i < n; i++)
				free(v[i]);
			free(v);
			*FIELD(dst, k, char **) = NULL;
			*COUNT(dst, k) = 0;
			break;
		}
		case SH_CONF_LIST: {
			char *v = *FIELD(dst, k, char *);
			n = *COUNT(dst, k);
			for (i = 0; i < n; i++)
				sh_conf_release(k->sub, v + i * k->elem_size);
			free(v);
			*FIELD(dst, k, void *) = NULL;
			*COUNT(dst, k) = 0;
			break;
		}
		case SH_CONF_OBJECT:
			sh_conf_release(k->sub, FIELD(dst, k, char));
			break;
		default:
			break;
		}
	}
}

static const char *type_name(enum sh_conf_type t)
{
	switch (t) {
	case SH_CONF_STR: return "string";
	case SH_CONF_INT: return "integer";
	case SH_CONF_BOOL: return "boolean";
	case SH_CONF_STRLIST: return "list of strings";
	case SH_CONF_LIST: return "list of objects";
	case SH_CONF_OBJECT: return "object";
	}
	return "?";
}

static int parse_object(const struct sh_conf_key *table, void *dst, const cJSON *obj,
			const char *path, struct sh_err *err);

static int parse_value(const struct sh_conf_key *k, void *dst, const cJSON *v, const char *path,
		       struct sh_err *err)
{
	size_t i, n;
	const cJSON *e;

	switch (k->type) {
	case SH_CONF_STR:
		if (!cJSON_IsString(v))
			return sh_errf(err, "%s: expected a string", path);
		free(*FIELD(dst, k, char *));
		*FIELD(dst, k, char *) = sh_strdup(v->valuestring);
		return SH_OK;
	case SH_CONF_INT: {
		double d;
		if (!cJSON_IsNumber(v))
			return sh_errf(err, "%s: expected an integer", path);
		d = v->valuedouble;
		if (d != floor(d) || d < -9.0e15 || d > 9.0e15)
			return sh_errf(err, "%s: expected an integer, got %g", path, d);
		if ((int64_t)d < k->min || (int64_t)d > k->max)
			return sh_errf(err, "%s: %" PRId64 " is out of range [%" PRId64 ", %" PRId64 "]",
				       path, (int64_t)d, k->min, k->max);
		*FIELD(dst, k, int64_t) = (int64_t)d;
		return SH_OK;
	}
	case SH_CONF_BOOL:
		if (!cJSON_IsBool(v))
			return sh_errf(err, "%s: expected true or false", path);
		*FIELD(dst, k, int) = cJSON_IsTrue(v);
		return SH_OK;
	case SH_CONF_OBJECT:
		if (!cJSON_IsObject(v))
			return sh_errf(err, "%s: expected an object", path);
		return parse_object(k->sub, FIELD(dst, k, char), v, path, err);
	case SH_CONF_STRLIST:
	case SH_CONF_LIST:
		if (!cJSON_IsArray(v))
			return sh_errf(err, "%s: expected a %s", path, type_name(k->type));
		n = (size_t)cJSON_GetArraySize(v);
		if ((int64_t)n < k->min || (int64_t)n > k->max)
			return sh_errf(err, "%s: %zu entries, allowed %" PRId64 " to %" PRId64, path, n,
				       k->min, k->max);
		/* Replace, never append: release what the field held. */
		if (k->type == SH_CONF_STRLIST) {
			char **list;
			const struct sh_conf_key one[] = {*k, {0}};
			sh_conf_release(one, dst);
			list = sh_calloc(n, sizeof(*list));
			*FIELD(dst, k, char **) = list;
			i = 0;
			cJSON_ArrayForEach(e, v) {
				if (!cJSON_IsString(e))
					return sh_errf(err, "%s[%zu]: expected a string", path, i);
				list[i++] = sh_strdup(e->valuestring);
				*COUNT(dst, k) = i;
			}
		} else {
			char *elems;
			const struct sh_conf_key one[] = {*k, {0}};
			sh_conf_release(one, dst);
			elems = sh_calloc(n, k->elem_size);
			*FIELD(dst, k, char *) = elems;
			i = 0;
			cJSON_ArrayForEach(e, v) {
				char sub[192];
				snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
				sh_conf_defaults(k->sub, elems + i * k->elem_size);
				*COUNT(dst, k) = ++i;
				if (!cJSON_IsObject(e))
					return sh_errf(err, "%s: expected an object", sub);
				if (parse_object(k->sub, elems + (i - 1) * k->elem_size, e, sub, err))
					return SH_ERR;
			}
		}
		return SH_OK;
	}
	return sh_errf(err, "%s: unsupported type", path);
}

static int parse_object(const struct sh_conf_key *table, void *dst, const cJSON *obj,
			const char *path, struct sh_err *err)
{
	const cJSON *v;
	const struct sh_conf_key *k;
	char full[256];

	cJSON_ArrayForEach(v, obj) {
		for (k = table; k->name; k++)
			if (strcmp(k->name, v->string) == 0)
				break;
		snprintf(full, sizeof(full), "%s%s%s", path, *path ? "." : "", v->string);
		if (!k->name)
			return sh_errf(err, "%s: unknown key", full);
		if (parse_value(k, dst, v, full, err))
			return SH_ERR;
	}
	return SH_OK;
}

int sh_conf_parse(const struct sh_conf_key *table, void *dst, char *text, struct sh_err *err)
{
	cJSON *root;
	const char *end = NULL;
	int rc;

	cJSON_Minify(text);
	root = cJSON_ParseWithOpts(text, &end, 1);
	if (!root) {
		size_t at = end ? (size_t)(end - text) : 0;
		return sh_errf(err, "not valid JSON near \"%.24s\" (after comments were removed, offset %zu)",
			       end ? end : "", at);
	}
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return sh_errf(err, "the configuration must be a JSON object");
	}
	rc = parse_object(table, dst, root, "", err);
	cJSON_Delete(root);
	return rc;
}

int sh_conf_load(const struct sh_conf_key *table, void *dst, const char *path, struct sh_err *err)
{
	FILE *f;
	char *text;
	size_t n;
	int rc;

	f = fopen(path, "rb");
	if (!f)
		return sh_errf(err, "%s: %s", path, strerror(errno));
	text = sh_malloc(CONF_MAX_FILE + 1);
	n = fread(text, 1, CONF_MAX_FILE + 1, f);
	if (ferror(f) || n > CONF_MAX_FILE) {
		rc = sh_errf(err, "%s: %s", path, ferror(f) ? "read error" : "larger than 1 MiB");
		goto out_free_text;
	}
	text[n] = '\0';
	if (strlen(text) != n) {
		rc = sh_errf(err, "%s: contains a NUL byte", path);
		goto out_free_text;
	}
	rc = sh_conf_parse(table, dst, text, err);
	if (rc) {
		char msg[2 * sizeof(err->msg)];
		size_t len;
		if (err) {
			snprintf(msg, sizeof(msg), "%s: %s", path, err->msg);
			len = strnlen(msg, sizeof(err->msg) - 1);
			memcpy(err->msg, msg, len);
			err->msg[len] = '\0';
		}
	}
out_free_text:
	free(text);
	fclose(f);
	return rc;
}

void sh_conf_doc(const struct sh_conf_key *table, FILE *out, int indent)
{
	const struct sh_conf_key *k;

	for (k = table; k->name; k++) {
		fprintf(out, "%*s%-32s %-16s ", indent, "", k->name, type_name(k->type));
		switch (k->type) {
		case SH_CONF_STR:
			fprintf(out, "default \"%s\"", k->def_str ? k->def_str : "");
			break;
		case SH_CONF_INT:
			fprintf(out, "default %" PRId64 " [%" PRId64 "..%" PRId64 "]", k->def_int, k->min, k->max);
			break;
		case SH_CONF_BOOL:
			fprintf(out, "default %s", k->def_int ? "true" : "false");
			break;
		case SH_CONF_OBJECT:
			break;
		default:
			fprintf(out, "%" PRId64 "..%" PRId64 " entries", k->min, k->max);
			break;
		}
		fprintf(out, "  %s\n", k->doc ? k->doc : "");
		if (k->type == SH_CONF_LIST || k->type == SH_CONF_OBJECT)
			sh_conf_doc(k->sub, out, indent + 2);
	}
}
