/* tok.h: the tokenizer both programs use, read from a Hugging Face model's own tokenizer.json and
 * tokenizer_config.json. Encoding gives the ids Hugging Face's tokenizers give on the same files
 * (checked against @huggingface/transformers by tests/unit/test_tok.c on committed fixtures).
 *
 * Supported, and nothing else (anything else a file uses is refused at load, named in the error):
 *   model          BPE: vocab, merges ("a b" or ["a","b"]), ignore_merges, byte_fallback,
 *                  unk_token, fuse_unk (dropout must be null/0, no subword prefix/suffix)
 *   added_tokens   special or not, lstrip, rstrip, single_word, normalized
 *   normalizer     NFC, NFD, NFKC, NFKD (utf8proc), Sequence, Replace, Prepend, Lowercase, Strip
 *   pre_tokenizer  ByteLevel (as the last step), Split (String or Regex; Isolated, Removed,
 *                  MergedWithPrevious, MergedWithNext, Contiguous; invert), Digits, Sequence,
 *                  Metaspace, Whitespace, WhitespaceSplit; regexes run on Oniguruma like Hugging Face's
 *   post_processor TemplateProcessing, ByteLevel, Sequence
 *   decoder        ByteLevel, Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace
 *
 * Thread safety: a loaded struct sh_tok is read-only except for its word cache, which is guarded;
 * encode and decode may run from several threads at once. */
#ifndef SH_TOK_H
#define SH_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "sh.h"

struct sh_tok;

/* Caps on what one call accepts (STYLE.md rule 10): larger inputs get SH_TOOBIG. */
#define SH_TOK_MAX_TEXT   ((size_t)64 << 20)    /* bytes of text per encode call */
#define SH_TOK_MAX_FILE   ((size_t)512 << 20)   /* bytes of tokenizer.json */

/* Flags for sh_tok_encode. */
enum {
	SH_TOK_ADD_SPECIAL = 1 << 0,  /* run the post-processor (TemplateProcessing adds BOS etc.) */
	SH_TOK_LOSSY = 1 << 1,        /* replace invalid UTF-8 with U+FFFD (as a JS string would)
	                               * instead of refusing it with SH_PARSE */
	SH_TOK_NO_ADDED = 1 << 2,     /* do not recognise added/special tokens written in the text */
};

/* Flags for sh_tok_decode and the stream decoder. */
enum {
	SH_TOK_SKIP_SPECIAL = 1 << 0, /* leave out special added tokens */
	SH_TOK_CLEANUP = 1 << 1,      /* transformers' clean_up_tokenization (" ." -> ".", " n't", ...);
	                               * full decode only */
};

/* A growable array of token ids, caller-owned; _init/_release (it is embedded by value). */
struct sh_tok_ids {
	int32_t *ids;
	size_t n, cap;
};
void sh_tok_ids_init(struct sh_tok_ids *v);
void sh_tok_ids_release(struct sh_tok_ids *v);
void sh_tok_ids_push(struct sh_tok_ids *v, int32_t id);

/* Loads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json (chat template, BOS/EOS
 * names). Returns NULL with the reason in err when a file is missing, malformed or uses a component
 * this tokenizer does not support. The caller frees with sh_tok_free. */
struct sh_tok *sh_tok_new(const char *dir, struct sh_err *err);

/* The same from the files' contents (config may be NULL). The buffers are not kept. */
struct sh_tok *sh_tok_new_json(const char *tokenizer_json, size_t len, const char *config_json,
			       size_t config_len, struct sh_err *err);
void sh_tok_free(struct sh_tok *tok);

/* Encodes len bytes of UTF-8 text, appending the ids to out. Added tokens written in the text are
 * recognised as Hugging Face does (unless SH_TOK_NO_ADDED). Returns SH_OK, SH_PARSE for invalid
 * UTF-8 (without SH_TOK_LOSSY), or SH_TOOBIG over SH_TOK_MAX_TEXT; on failure out is unchanged. */
int sh_tok_encode(struct sh_tok *tok, const char *text, size_t len, int flags,
		  struct sh_tok_ids *out, struct sh_err *err);

/* Only the number of ids sh_tok_encode would append, or a negative sh_status. */
int64_t sh_tok_count(struct sh_tok *tok, const char *text, size_t len, int flags,
		     struct sh_err *err);

/* Decodes n ids to UTF-8 (invalid byte sequences become U+FFFD as Hugging Face's decoders do).
 * Returns a NUL-terminated string the caller frees with free(), its length in *out_len when not
 * NULL; NULL (with err) when an id is out of range. */
char *sh_tok_decode(const struct sh_tok *tok, const int32_t *ids, size_t n, int flags,
		    size_t *out_len, struct sh_err *err);

/* Incremental decoder for streaming: feed ids one by one; each call returns only complete UTF-8
 * characters, and the concatenation of every piece (the final flush included) equals sh_tok_decode
 * of all the ids with the same flags (SH_TOK_CLEANUP is not applied). */
struct sh_tok_stream;
struct sh_tok_stream *sh_tok_stream_new(const struct sh_tok *tok, int flags);
void sh_tok_stream_free(struct sh_tok_stream *st);
/* Returns the text that id completes (possibly empty) and its length in *len; the pointer is owned
 * by st and valid until its next call. NULL (with err) for an id out of range. */
const char *sh_tok_stream_push(struct sh_tok_stream *st, int32_t id, size_t *len,
			       struct sh_err *err);
/* Returns what is still held (an incomplete character becomes U+FFFD), as above. */
const char *sh_tok_stream_finish(struct sh_tok_stream *st, size_t *len);

/* Vocabulary. */
size_t sh_tok_vocab_size(const struct sh_tok *tok);             /* largest id + 1 */
/* The id of a token given by its text as written in tokenizer.json (an added token's content, or a
 * vocabulary entry such as "Ġthe"), or -1. */
int32_t sh_tok_token_id(const struct sh_tok *tok, const char *token);
/* The token's text as written in tokenizer.json (NUL-terminated, lives as long as tok), or NULL. */
const char *sh_tok_token_str(const struct sh_tok *tok, int32_t id);
int sh_tok_is_special(const struct sh_tok *tok, int32_t id);

/* From tokenizer_config.json (NULL when absent): the chat template (the string, or the "default"
 * entry of a list of named templates), and the BOS/EOS token texts and ids (-1 when absent). */
const char *sh_tok_chat_template(const struct sh_tok *tok);
const char *sh_tok_bos(const struct sh_tok *tok);
const char *sh_tok_eos(const struct sh_tok *tok);
int32_t sh_tok_bos_id(const struct sh_tok *tok);
int32_t sh_tok_eos_id(const struct sh_tok *tok);
/* tokenizer_config.json's clean_up_tokenization_spaces (0 when absent). */
int sh_tok_cleanup_default(const struct sh_tok *tok);

#endif
