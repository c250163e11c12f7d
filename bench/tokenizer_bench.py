"""tokenizer_bench.py: the Rust `tokenizers` (Python module) on the same text as tokenizer_bench.c.
    python3 bench/tokenizer_bench.py MODEL_DIR CORPUS"""
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
from tokenizers import Tokenizer  # noqa: E402

tok = Tokenizer.from_file(os.path.join(sys.argv[1], "tokenizer.json"))
text = open(sys.argv[2], "rb").read().decode("utf-8", errors="replace")
mb = len(text.encode("utf-8")) / 1e6
enc = dec = 0.0
for _ in range(2):
    t0 = time.perf_counter()
    ids = tok.encode(text, add_special_tokens=False).ids
    t1 = time.perf_counter()
    tok.decode(ids, skip_special_tokens=False)
    t2 = time.perf_counter()
    enc, dec = max(enc, mb / (t1 - t0)), max(dec, mb / (t2 - t1))
print("encode %8.2f MB/s  decode %8.2f MB/s  (%d ids)" % (enc, dec, len(ids)))
