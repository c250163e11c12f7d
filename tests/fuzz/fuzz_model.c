/* fuzz_model.c: libFuzzer target for the engine's model loading on corrupted files: the input is
 * split at its first NUL byte into a config.json text and a model.safetensors file, written into a
 * private directory, and both loaders run on them (eng_config_parse, eng_st_open + lookups).
 * Refusals must say why; nothing may crash, read out of bounds or leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/config.h"
#include "engine/st.h"

static char dir[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	snprintf(dir, sizeof(dir), "/tmp/kvgate-fuzz-model-XXXXXX");
	if (!mkdtemp(dir))
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	size_t clen = nul ? (size_t)(nul - data) : size;
	char *json = malloc(clen + 1), path[128];
	struct eng_config cfg;
	struct eng_st *st = NULL;
	struct sh_err err;
	FILE *f;

	memcpy(json, data, clen);
	json[clen] = '\0';
	memset(&cfg, 0, sizeof(cfg));
	err.msg[0] = '\0';
	if (eng_config_parse(json, &cfg, &err) != 0 && !err.msg[0])
		abort();
	free(json);

	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	f = fopen(path, "wb");
	if (!f)
		abort();
	if (nul)
		fwrite(nul + 1, 1, size - clen - 1, f);
	fclose(f);
	err.msg[0] = '\0';
	if (eng_st_open(dir, &st, &err) == 0) {
		(void)eng_st_find(st, "model.embed_tokens.weight");
		eng_st_free(st);
	} else if (!err.msg[0]) {
		abort();
	}
	unlink(path);
	return 0;
}
