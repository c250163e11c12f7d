/* pxconf.h: kvgate's configuration table (rows documented in conf/kvgate.conf.md). */
#ifndef PX_PXCONF_H
#define PX_PXCONF_H

#include <stdio.h>

#include "px.h"

/* Load path into c (defaults first). On failure the reason is in err and c is released. */
int px_conf_load(struct px_conf *c, const char *path, struct sh_err *err);
void px_conf_release(struct px_conf *c);
/* The same from text (modified in place); name stands for the file in messages. */
int px_conf_parse(struct px_conf *c, char *text, const char *name, struct sh_err *err);
void px_conf_doc(FILE *out);

/* 64 hex digits -> 32 bytes. SH_ERR if malformed. */
int px_hex_digest(const char *hex, unsigned char out[32]);

#endif
