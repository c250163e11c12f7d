/* conf.h: configuration as a table (STYLE.md rule 17). A program describes its configuration
 * struct with one row per key (name, type, offset, bounds, default, one line of documentation);
 * sh_conf_load reads JSON with comments into it, checking every key against the table. An unknown
 * key, a wrong type or a value out of bounds is refused with a message that names the key (with its
 * path, e.g. "pools[1].upstreams"). The same rows print the documentation (sh_conf_doc). */
#ifndef SH_CONF_H
#define SH_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sh.h"

enum sh_conf_type {
	SH_CONF_STR,     /* char *, owned by the struct; "" allowed */
	SH_CONF_INT,     /* int64_t, bounded by [min, max] */
	SH_CONF_BOOL,    /* int, 0 or 1 */
	SH_CONF_STRLIST, /* char **, with a size_t count at count_off */
	SH_CONF_LIST,    /* array of structs described by sub (elem_size each), count at count_off */
	SH_CONF_OBJECT,  /* a struct embedded at off, described by sub */
};

struct sh_conf_key {
	const char *name;
	enum sh_conf_type type;
	size_t off;                      /* offset of the field in the struct */
	int64_t min, max;                /* SH_CONF_INT bounds; LIST/STRLIST: element count bounds */
	int64_t def_int;                 /* default for INT and BOOL */
	const char *def_str;             /* default for STR (NULL means "") */
	size_t count_off;                /* LIST/STRLIST: offset of the size_t count */
	const struct sh_conf_key *sub;   /* LIST/OBJECT: the element's table, ended by a row with name NULL */
	size_t elem_size;                /* LIST: sizeof the element struct */
	const char *doc;                 /* one line for conf/ documentation and --help */
};

/* Fill dst with the table's defaults (lists empty). */
void sh_conf_defaults(const struct sh_conf_key *table, void *dst);

/* Parse JSON text (comments allowed; text is modified in place) into dst, which must hold the
 * defaults already. Returns SH_OK, or SH_ERR with the reason in err; on error dst stays valid
 * (possibly partly filled) and must still be released. */
int sh_conf_parse(const struct sh_conf_key *table, void *dst, char *text, struct sh_err *err);

/* Read a file and sh_conf_parse it. Refuses files over 1 MiB. */
int sh_conf_load(const struct sh_conf_key *table, void *dst, const char *path, struct sh_err *err);

/* Free what the loader allocated (strings, lists) and zero those fields. */
void sh_conf_release(const struct sh_conf_key *table, void *dst);

/* Print one line per key: name, type, bounds, default, doc (nested lists indented). */
void sh_conf_doc(const struct sh_conf_key *table, FILE *out, int indent);

#endif
