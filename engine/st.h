/* st.h: safetensors files, memory-mapped, single (model.safetensors) or sharded
 * (model.safetensors.index.json + the shards it names). Read-only: tensors point into the maps,
 * which live until eng_st_free. */
#ifndef ENG_ST_H
#define ENG_ST_H

#include <stddef.h>
#include <stdint.h>
#include "sh.h"

enum eng_dtype { ENG_DT_F32 = 0, ENG_DT_BF16, ENG_DT_F16 };

struct eng_st_tensor {
	char *name;
	enum eng_dtype dtype;
	int ndim;
	int64_t shape[4];
	const void *data; /* inside a map; nbytes long */
	size_t nbytes;
	int file;         /* index of the shard */
	int used;         /* set by the model loader: a tensor nobody claimed is an error */
};

struct eng_st {
	struct eng_st_tensor *t;
	int n, cap;
	struct { void *map; size_t len; char *path; } *files;
	int n_files;
	size_t total_bytes;
};

const char *eng_dtype_name(enum eng_dtype dt);
size_t eng_dtype_size(enum eng_dtype dt);

/* Opens every safetensors file of the model directory dir. Refuses (SH_ERR, err names it): no
 * weights, a shard the index names that is missing, a truncated file, a bad header, a dtype other
 * than F32/BF16/F16, a tensor listed twice. On success *out is the caller's, freed by eng_st_free. */
int eng_st_open(const char *dir, struct eng_st **out, struct sh_err *err);
void eng_st_free(struct eng_st *st);
/* The tensor of that name, or NULL. */
struct eng_st_tensor *eng_st_find(struct eng_st *st, const char *name);

#endif
