#!/usr/bin/env python3
"""Writes tests/data/engine_tiny/{tokenizer.json,tokenizer_config.json}: a hand-made byte-level BPE
whose vocabulary is exactly the golden deepseek_a model's (320 ids), so that kvgate-engine's server
can be tested end to end with text. Ids 0-5 are special (unk, BOS 1 and EOS 2 as the model's config
says, the three DeepSeek FIM tokens), 6-261 the 256 bytes (GPT-2 byte-to-unicode), 262-319 merges
learnt greedily from a fixed English/code text. The chat template is DeepSeek-V2's.
Run from the repository root: python3 tools/mk_engine_tok.py"""
import json, collections

VOCAB = 320
SPECIAL = ["<unk>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
           "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>"]

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}

B2U = bytes_to_unicode()
TEXT = ("the quick brown fox jumps over the lazy dog. def main(): return 0\n"
        "hello world, this is a test of the engine and the server. int main(void) { return 0; }\n") * 4
words = []
for w in TEXT.replace("\n", " \n ").split(" "):
    if w:
        words.append("".join(B2U[b] for b in (" " + w).encode()))
vocab = {s: i for i, s in enumerate(SPECIAL)}
for b in range(256):
    vocab[B2U[b]] = len(vocab)
merges = []
seqs = [list(w) for w in words]
while len(vocab) < VOCAB:
    pairs = collections.Counter()
    for s in seqs:
        for a, b in zip(s, s[1:]):
            pairs[(a, b)] += 1
    if not pairs:
        break
    (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
    merges.append(a + " " + b)
    vocab[a + b] = len(vocab)
    for s in seqs:
        i = 0
        while i < len(s) - 1:
            if s[i] == a and s[i + 1] == b:
                s[i:i + 2] = [a + b]
            i += 1
assert len(vocab) == VOCAB, len(vocab)
tok = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True} for i, s in enumerate(SPECIAL)],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": vocab, "merges": merges},
}
with open("tests/data/tok/deepseek_v2_chat_template.jinja") as f:
    template = f.read()
conf = {"add_bos_token": False, "add_eos_token": False, "bos_token": SPECIAL[1], "eos_token": SPECIAL[2],
        "clean_up_tokenization_spaces": False, "model_max_length": 256,
        "tokenizer_class": "LlamaTokenizerFast", "chat_template": template}
with open("tests/data/engine_tiny/tokenizer.json", "w") as f:
    json.dump(tok, f, ensure_ascii=False)
with open("tests/data/engine_tiny/tokenizer_config.json", "w") as f:
    json.dump(conf, f, ensure_ascii=False, indent=1)
