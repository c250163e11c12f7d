/* count.h: the count stage. For the routes with a prompt (chat, completions), renders the chat
 * template and counts the prompt's tokens exactly with the model's own tokenizer (shared/tok,
 * shared/chat: the same code and files as the engine, DESIGN.md contract 3), computes its
 * prefix-block hashes (contract 1), and chooses the pool: among the pools serving the requested
 * model, the smallest whose context fits prompt + max_tokens. max_tokens missing or larger than
 * the room left is clamped to the room left (the body is rewritten); only a prompt that by itself
 * does not fit the user's max_context or any pool is refused: 400 context_length_exceeded. */
#ifndef PX_COUNT_H
#define PX_COUNT_H

#include "px.h"

int px_count_stage(struct px_req *r);

/* Load the tokenizers and chat renderers of the pools (shared between pools naming the same
 * directory). */
int px_models_init(struct px_server *srv, struct sh_err *err);
void px_models_release(struct px_server *srv);

/* The pool's context length: configured, else the smallest its engines reported, else 0. */
int64_t px_pool_max_len(const struct px_pool *p);

/* The pool's model name: configured, else the first its engines reported, else "". */
const char *px_pool_model(const struct px_pool *p);

#endif
