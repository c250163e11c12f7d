#!/usr/bin/env python3
"""cuda_peer.py: the peer of bench_cuda_decode: Hugging Face transformers on the GPU with the same
DeepSeek-Coder-V2-Lite shape and random bf16 weights (tools/fullshape_check.py's config and
recipe), eager attention, its own KV cache: decode ms/step and tokens/s at batch 1 and 8 after a
512-token prompt, and the time to first token of a 2048-token prompt. Run on the GPU machine in
the same call as `tests/cuda/run.sh bench`, so both tables come from one machine state:
    python3 bench/cuda_peer.py [--steps 8]
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import fullshape_check as fs  # noqa: E402


def sync():
    torch.cuda.synchronize()


def decode(model, batch, ctx, steps, vocab, gen):
    ids = torch.randint(0, vocab, (batch, ctx), device="cuda", generator=gen)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(2):  # warm-up steps
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
        t = time.time()
        for _ in range(steps):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
    return (time.time() - t) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--layers", type=int, default=27)
    a = ap.parse_args()
    import transformers
    cfg = fs.lite_config(a.layers)
    with tempfile.TemporaryDirectory() as d:
        model = fs.build(cfg, os.path.join(d, "m"), 0, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(1)
    print(f"peer: transformers {transformers.__version__}, torch {torch.__version__}, eager attention, bf16, "
          f"{torch.cuda.get_device_name()}")
    print(f"{'batch':>5} {'ctx':>6} {'ms/step':>10} {'tokens/s':>10}")
    for batch in (1, 8):
        ms = decode(model, batch, 512, a.steps, cfg["vocab_size"], gen) * 1e3
        print(f"{batch:5d} {512:6d} {ms:10.2f} {batch / ms * 1e3:10.1f}", flush=True)
    ids = torch.randint(0, cfg["vocab_size"], (1, 2048), device="cuda", generator=gen)
    best = 1e30
    with torch.no_grad():
        for _ in range(2):
            sync()
            t = time.time()
            model(ids, use_cache=True)
            sync()
            best = min(best, time.time() - t)
    print(f"TTFT 2048-token prompt: {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
