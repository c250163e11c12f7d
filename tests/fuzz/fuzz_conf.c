/* fuzz_conf.c: libFuzzer target for kvgate's configuration loader (shared/conf.c through the table
 * of proxy/pxconf.c): arbitrary bytes as the file's text. Every input is either accepted or refused
 * with a message; nothing leaks either way. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/pxconf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct px_conf c;
	struct sh_err err;
	char *text = malloc(size + 1);

	memcpy(text, data, size);
	text[size] = '\0';
	err.msg[0] = '\0';
	if (px_conf_parse(&c, text, "fuzz.conf", &err) == SH_OK)
		px_conf_release(&c);
	else if (!err.msg[0])
		abort();  /* a refusal always says why */
	free(text);
	return 0;
}
