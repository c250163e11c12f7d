/* tok_impl.h: the insides of struct sh_tok, shared by tok.c (loading, the encode pipeline),
 * tok_bpe.c (the BPE model) and tok_dec.c (decoding). Not for use outside shared/tok*.c. */
#ifndef SH_TOK_IMPL_H
#define SH_TOK_IMPL_H

#include <oniguruma.h>
#include <pthread.h>

#include "tok.h"

/* Id of a token by its bytes: open addressing over ids, keys live in the owner's token table. */
struct tok_map {
	int32_t *slot;      /* id, or -1 for empty; size mask + 1 */
	uint32_t *hash;     /* low 32 bits of the key's hash, beside each slot */
	uint32_t mask;
};

/* (left id, right id) -> (rank, merged id). */
struct tok_merges {
	uint64_t *key;      /* left << 32 | right; UINT64_MAX for empty */
	uint64_t *val;      /* rank << 32 | new id */
	uint32_t mask;
};

enum tok_norm_kind { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_REPLACE, NORM_PREPEND,
		     NORM_LOWER, NORM_STRIP };
struct tok_norm {
	enum tok_norm_kind kind;
	OnigRegex re;        /* Replace with a Regex pattern */
	char *pat, *with;    /* Replace: literal pattern (when re is NULL) and content; Prepend: with */
	size_t pat_len, with_len;
	int left, right;     /* Strip */
};

enum tok_split_beh { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT,
		     SPLIT_CONTIGUOUS };
enum tok_pre_kind { PRE_SPLIT, PRE_METASPACE, PRE_PREFIX_SPACE };
struct tok_pre {
	enum tok_pre_kind kind;
	OnigRegex re;        /* Split with a regex, or NULL for a literal */
	char *lit;           /* Split with a literal (also Metaspace's split on its replacement) */
	size_t lit_len;
	enum tok_split_beh beh;
	int invert;
	char rep[8];         /* Metaspace replacement, UTF-8 */
	int rep_len;
	int prepend;         /* Metaspace: 0 never, 1 first, 2 always */
	int msplit;          /* Metaspace: split on the replacement */
};

enum tok_dec_kind { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP,
		    DEC_METASPACE };
struct tok_dec {
	enum tok_dec_kind kind;
	char *pat, *with;    /* Replace (String patterns only) */
	size_t pat_len, with_len;
	uint32_t ch;         /* Strip: the character; Metaspace: replacement */
	int start, stop;     /* Strip counts */
	int prepend;         /* Metaspace: prepend scheme != never */
};

/* An added token, as listed in tokenizer.json's added_tokens. */
struct tok_added {
	int32_t id;
	char *content;
	uint32_t len;
	char *ncontent;      /* content through the normalizer (what normalized=true tokens match) */
	uint32_t nlen;
	uint8_t special, lstrip, rstrip, single_word, normalized;
};

/* Finds added tokens in text, leftmost-longest, by the first two bytes. */
/* A byte trie of the added tokens' texts: matching at a position walks it once, whatever the
 * number of tokens sharing a prefix (DeepSeek-V3 has ~800 beginning "<｜"; comparing each was
 * quadratic-looking on text full of "<｜"). Node 0 is the root; root[b] the node of byte b. */
struct tok_amatch {
	int32_t root[256];   /* -1: no token starts with b */
	int32_t *kid;        /* first child, -1: none */
	int32_t *sib;        /* next sibling, -1: none */
	uint8_t *label;      /* the byte into the node */
	int32_t *term;       /* index into tok->added of the token ending here, -1: none */
	size_t nodes, cap;
	uint8_t first[256];  /* bytes an added token may start with */
	size_t n;
};

struct tok_cache_slot {
	uint64_t h;
	uint16_t wlen, nid;
	int32_t ids[14];
	char w[40];
};
#define TOK_CACHE_SLOTS (1u << 15)

struct tok_tmpl_item {
	int special;         /* 1: ids of a special token; 0: the sequence */
	int32_t *ids;
	size_t n;
};

struct sh_tok {
	/* Token table, by id (sparse ids allowed): the text as written in tokenizer.json, and the
	 * bytes BPE works in (raw bytes for a byte-level vocabulary). */
	size_t ntok;                 /* largest id + 1 */
	size_t nvocab;               /* entries of the model's vocab */
	char **str;                  /* NUL-terminated, or NULL for an unused id */
	char **bytes;                /* model-domain bytes; may alias str */
	uint32_t *str_len, *bytes_len;
	uint8_t *flags;              /* TOKF_* */
	struct tok_map vocab;        /* model vocabulary: bytes -> id */
	struct tok_map strmap;       /* every token: str -> id (sh_tok_token_id) */
	struct tok_merges merges;

	int bytelevel;               /* ByteLevel pre-tokenizer: BPE over raw bytes */
	int32_t byte_id[256];        /* the one-byte token of each byte (byte-level), or -1 */
	int32_t fallback_id[256];    /* <0xXX> tokens (byte_fallback), or -1 */
	int byte_fallback, ignore_merges, fuse_unk;
	int32_t unk_id;

	struct tok_added *added;
	size_t nadded;
	struct tok_amatch am_raw, am_norm;   /* normalized=false / normalized=true tokens */

	struct tok_norm *norm;
	size_t nnorm;
	struct tok_pre *pre;
	size_t npre;
	size_t pre_grow;             /* bytes a piece may grow by per byte through the pre-tokenizer */
	struct tok_dec *dec;
	size_t ndec;
	struct tok_tmpl_item *tmpl;  /* post-processor for one sequence, with special tokens */
	size_t ntmpl;

	/* tokenizer_config.json */
	char *chat_template, *bos, *eos;
	int32_t bos_id, eos_id;
	int cleanup;

	pthread_mutex_t cache_lock;
	struct tok_cache_slot *cache;
};

enum { TOKF_USED = 1, TOKF_ADDED = 2, TOKF_SPECIAL = 4, TOKF_VOCAB = 8, TOKF_BYTE = 16 };

/* Per-call scratch of the encoder (tok.c) and the BPE model (tok_bpe.c). */
struct tok_sym {
	int32_t id, prev, next;
	uint32_t len;                /* bytes; 0 once merged away */
};
struct tok_work {
	struct tok_sym *sym;
	uint32_t *rank;              /* rank of the pair starting at a symbol, UINT32_MAX if none */
	size_t sym_cap;
	uint64_t *heap;
	size_t heap_cap;
};
void tok_work_release(struct tok_work *w);

/* BPE over one pre-tokenized word; appends ids to out. */
void tok_bpe_word(struct sh_tok *tok, struct tok_work *w, const char *s, size_t len,
		  struct sh_tok_ids *out);

/* Hash maps. */
uint64_t tok_hash(const void *p, size_t len);
int32_t tok_map_get(const struct tok_map *m, char *const *keys, const uint32_t *lens,
		    const char *k, size_t len);
int tok_merges_get(const struct tok_merges *m, int32_t a, int32_t b, uint32_t *rank, int32_t *id);

/* GPT-2 byte <-> character mapping of ByteLevel. */
int tok_char_byte(uint32_t cp);      /* the byte a character stands for, or -1 */

/* UTF-8: length of the valid sequence at s (1..4), or 0 when invalid/incomplete there. */
int tok_utf8_len(const unsigned char *s, size_t n);
size_t tok_utf8_bad_len(const unsigned char *s, size_t n, int *trunc);
/* Decodes one valid character (as checked by tok_utf8_len). */
uint32_t tok_utf8_cp(const unsigned char *s, int len);
int tok_utf8_put(char *out, uint32_t cp);

#endif
