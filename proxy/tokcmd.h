/* tokcmd.h: `kvgate tokenize` and `kvgate detokenize`, for users and tests.
 *   kvgate tokenize MODEL_DIR [--add-special-tokens] [--chat] [--chat-template NAME]
 *       reads UTF-8 text on standard input and prints its token ids as one JSON array; with
 *       --chat the input is a JSON array of chat messages and the ids are those of the rendered
 *       prompt with the generation prompt appended (the template's special tokens included).
 *   kvgate detokenize MODEL_DIR [--skip-special-tokens]
 *       reads a JSON array of token ids on standard input and prints the text.
 * argv[0] is "tokenize" or "detokenize". Returns the process exit status: 0, 1 on an error
 * (printed on standard error), 2 on a usage error. */
#ifndef PX_TOKCMD_H
#define PX_TOKCMD_H

int px_tokcmd_main(int argc, char **argv);

#endif
