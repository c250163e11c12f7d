/* fuzz_request.c: libFuzzer target for the JSON request handling of both programs on the bundled
 * model's tokenizer: the proxy's sh_prompt_build (count, FIM, hashes) and the engine's
 * eng_api_parse for each kind of request. Arbitrary bytes as the body; every input is either
 * accepted or refused with a reason, without a crash or a leak. Run from the repository root (or
 * set FUZZ_MODEL_DIR). */
#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/api.h"
#include "shared/chat.h"
#include "shared/tok.h"

static struct sh_tok *tok;
static struct sh_chat *chat;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("FUZZ_MODEL_DIR");
	struct sh_err err;

	(void)argc;
	(void)argv;
	tok = sh_tok_new(dir ? dir : "models/kvgate-tiny-coder", &err);
	if (!tok)
		abort();
	chat = sh_chat_new(tok, NULL, &err);
	if (!chat)
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct eng_api_ctx ctx = { .tok = tok, .chat = chat, .model = "kvgate-tiny-coder", .max_model_len = 2048,
				    .capacity = 2048, .block_size = 16 };
	cJSON *body = cJSON_ParseWithLength((const char *)data, size);
	struct sh_prompt pr;
	struct sh_err err;
	int kind;

	if (body) {
		for (kind = SH_PROMPT_CHAT; kind <= SH_PROMPT_ANY; kind++) {
			sh_prompt_init(&pr);
			(void)sh_prompt_build(tok, chat, body, (enum sh_prompt_kind)kind, "kvgate-tiny-coder", 16, &pr,
					      &err);
			if (pr.nhashes > pr.ids.n / 16)
				abort();
			sh_prompt_release(&pr);
		}
		cJSON_Delete(body);
	}
	for (kind = ENG_API_COMPLETIONS; kind <= ENG_API_TOKENIZE; kind++) {
		struct eng_api_req r;
		struct eng_api_err e;

		memset(&r, 0, sizeof(r));
		(void)eng_api_parse(&ctx, (const char *)data, size, (enum eng_api_kind)kind, &r, &e);
		eng_api_req_release(&r);  /* released either way (api.h) */
	}
	return 0;
}
