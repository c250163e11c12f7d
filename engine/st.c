/* st.c: safetensors reader (see st.h). Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {...}},
 * then the data; offsets are relative to the end of the header. */
#include "st.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20) /* 100 MiB of JSON is far past any real checkpoint */

const char *eng_dtype_name(enum eng_dtype dt)
{
	return dt == ENG_DT_F32 ? "F32" : dt == ENG_DT_BF16 ? "BF16" : "F16";
}

size_t eng_dtype_size(enum eng_dtype dt)
{
	return dt == ENG_DT_F32 ? 4 : 2;
}

static int map_file(struct eng_st *st, const char *path, struct sh_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return sh_errf(err, "%s: %s", path, strerror(errno));
	struct stat sb;
	if (fstat(fd, &sb) < 0 || sb.st_size < 8) {
		close(fd);
		return sh_errf(err, "%s: truncated (%lld bytes)", path, (long long)sb.st_size);
	}
	void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return sh_errf(err, "%s: mmap: %s", path, strerror(errno));
	st->files = sh_realloc(st->files, sizeof(*st->files) * (size_t)(st->n_files + 1));
	st->files[st->n_files].map = map;
	st->files[st->n_files].len = (size_t)sb.st_size;
	st->files[st->n_files].path = sh_strdup(path);
	st->n_files++;
	return SH_OK;
}

static int parse_header(struct eng_st *st, int fi, struct sh_err *err)
{
	const char *path = st->files[fi].path;
	const uint8_t *base = st->files[fi].map;
	size_t len = st->files[fi].len;
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | base[i];
	if (hlen > ST_MAX_HEADER || hlen > len - 8)
		return sh_errf(err, "%s: truncated or not safetensors (header of %llu bytes, file %zu)", path,
			       (unsigned long long)hlen, len);
	cJSON *root = cJSON_ParseWithLength((const char *)base + 8, (size_t)hlen);
	if (!root || !cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return sh_errf(err, "%s: bad safetensors header JSON", path);
	}
	const uint8_t *data = base + 8 + hlen;
	size_t data_len = len - 8 - hlen;
	int rc = SH_OK;
	for (cJSON *it = root->child; it; it = it->next) {
		if (!strcmp(it->string, "__metadata__"))
			continue;
		cJSON *dt = cJSON_GetObjectItem(it, "dtype"), *shape = cJSON_GetObjectItem(it, "shape"),
		      *offs = cJSON_GetObjectItem(it, "data_offsets");
		if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || cJSON_GetArraySize(offs) != 2) {
			rc = sh_errf(err, "%s: tensor %s: bad header entry", path, it->string);
			break;
		}
		struct eng_st_tensor t = {0};
		if (!strcmp(dt->valuestring, "F32"))
			t.dtype = ENG_DT_F32;
		else if (!strcmp(dt->valuestring, "BF16"))
			t.dtype = ENG_DT_BF16;
		else if (!strcmp(dt->valuestring, "F16"))
			t.dtype = ENG_DT_F16;
		else {
			rc = sh_errf(err, "%s: tensor %s: dtype %s not supported (F32, BF16, F16)", path,
				     it->string, dt->valuestring);
			break;
		}
		t.ndim = cJSON_GetArraySize(shape);
		if (t.ndim > 4) {
			rc = sh_errf(err, "%s: tensor %s: %d dimensions", path, it->string, t.ndim);
			break;
		}
		size_t n = 1;
		for (int d = 0; d < t.ndim; d++) {
			double v = cJSON_GetArrayItem(shape, d)->valuedouble;
			if (v < 0 || v > 1e12) {
				rc = sh_errf(err, "%s: tensor %s: bad shape", path, it->string);
				goto out;
			}
			t.shape[d] = (int64_t)v;
			n *= (size_t)v;
		}
		double b = cJSON_GetArrayItem(offs, 0)->valuedouble, e = cJSON_GetArrayItem(offs, 1)->valuedouble;
		if (b < 0 || e < b || e > (double)data_len) {
			rc = sh_errf(err, "%s: truncated: tensor %s ends at %.0f of %zu data bytes", path, it->string,
				     e, data_len);
			break;
		}
		t.nbytes = (size_t)(e - b);
		if (t.nbytes != n * eng_dtype_size(t.dtype)) {
			rc = sh_errf(err, "%s: tensor %s: %zu bytes for its shape, %zu in the file", path, it->string,
				     n * eng_dtype_size(t.dtype), t.nbytes);
			break;
		}
		if (eng_st_find(st, it->string)) {
			rc = sh_errf(err, "%s: tensor %s appears twice", path, it->string);
			break;
		}
		t.data = data + (size_t)b;
		t.file = fi;
		t.name = sh_strdup(it->string);
		if (st->n == st->cap) {
			st->cap = st->cap ? st->cap * 2 : 256;
			st->t = sh_realloc(st->t, sizeof(*st->t) * (size_t)st->cap);
		}
		st->t[st->n++] = t;
		st->total_bytes += t.nbytes;
	}
out:
	cJSON_Delete(root);
	return rc;
}

static char *read_small(const char *path, size_t cap, struct sh_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		sh_errf(err, "%s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = sh_malloc(cap + 1);
	size_t n = fread(buf, 1, cap, f);
	fclose(f);
	if (n == cap) {
		free(buf);
		sh_errf(err, "%s: larger than %zu bytes", path, cap);
		return NULL;
	}
	buf[n] = 0;
	return buf;
}

int eng_st_open(const char *dir, struct eng_st **out, struct sh_err *err)
{
	struct eng_st *st = sh_calloc(1, sizeof(*st));
	char path[4096];
	int rc = SH_ERR;
	cJSON *idx = NULL;
	char *text = NULL;

	snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
	if (access(path, F_OK) == 0) {
		text = read_small(path, 64u << 20, err);
		if (!text)
			goto out_free;
		idx = cJSON_Parse(text);
		cJSON *map = cJSON_GetObjectItem(idx, "weight_map");
		if (!cJSON_IsObject(map)) {
			sh_errf(err, "%s: no weight_map", path);
			goto out_free;
		}
		/* Distinct shard names, in order of first appearance. */
		const char **names = sh_calloc((size_t)cJSON_GetArraySize(map) + 1, sizeof(char *));
		int nn = 0;
		for (cJSON *it = map->child; it; it = it->next) {
			if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
				free(names);
				sh_errf(err, "%s: bad shard name for %s", path, it->string);
				goto out_free;
			}
			int seen = 0;
			for (int i = 0; i < nn; i++)
				seen |= !strcmp(names[i], it->valuestring);
			if (!seen)
				names[nn++] = it->valuestring;
		}
		for (int i = 0; i < nn; i++) {
			snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
			if (access(path, F_OK) != 0) {
				sh_errf(err, "missing shard %s (named by model.safetensors.index.json)", names[i]);
				free(names);
				goto out_free;
			}
			if (map_file(st, path, err) || parse_header(st, st->n_files - 1, err)) {
				free(names);
				goto out_free;
			}
		}
		free(names);
		/* Every tensor the index names must be in the shard it names. */
		for (cJSON *it = map->child; it; it = it->next) {
			struct eng_st_tensor *t = eng_st_find(st, it->string);
			if (!t || strcmp(strrchr(st->files[t->file].path, '/') + 1, it->valuestring)) {
				sh_errf(err, "tensor %s: not in shard %s", it->string, it->valuestring);
				goto out_free;
			}
		}
	} else {
		snprintf(path, sizeof(path), "%s/model.safetensors", dir);
		if (access(path, F_OK) != 0) {
			sh_errf(err, "%s: no model.safetensors or model.safetensors.index.json", dir);
			goto out_free;
		}
		if (map_file(st, path, err) || parse_header(st, 0, err))
			goto out_free;
	}
	*out = st;
	st = NULL;
	rc = SH_OK;
out_free:
	cJSON_Delete(idx);
	free(text);
	eng_st_free(st);
	return rc;
}

void eng_st_free(struct eng_st *st)
{
	if (!st)
		return;
	for (int i = 0; i < st->n; i++)
		free(st->t[i].name);
	for (int i = 0; i < st->n_files; i++) {
		munmap(st->files[i].map, st->files[i].len);
		free(st->files[i].path);
	}
	free(st->files);
	free(st->t);
	free(st);
}

struct eng_st_tensor *eng_st_find(struct eng_st *st, const char *name)
{
	/* Linear: a few thousand tensors, looked up once each at load. */
	for (int i = 0; i < st->n; i++)
		if (!strcmp(st->t[i].name, name))
			return &st->t[i];
	return NULL;
}
