#!/usr/bin/env python3
"""train_tiny.py: train the small DeepSeek-V2 (MLA + MoE + YaRN) code model bundled under models/.

Runs on the GPU machine (torch, transformers, tokenizers, safetensors, jinja2; no internet), in one go:

  1. corpus: every .py file of the Python standard library and site-packages found there, filtered
     (UTF-8, no generated-looking files), deduplicated by SHA-256 of the content, split by file:
     a file whose hash falls in the first 2% of the hash space is held out;
  2. tokenizer: byte-level BPE trained with `tokenizers` on a sample of the training files, with the
     pre-tokenizer, post-processor (ByteLevel: no BOS on a plain encode) and decoder of DeepSeek's own
     tokenizer.json files, and DeepSeek's special tokens appended after the BPE vocabulary the way
     DeepSeek-Coder-V2 appends them after its 100000 (BOS, EOS, the FIM tokens, ..., EOT; pad = EOS);
     tokenizer_config.json carries DeepSeek-Coder-V2-Lite-Instruct's chat template;
  3. training data: files cut at line boundaries into documents, some turned into fill-in-the-middle
     documents in DeepSeek's PSM format (<｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>middle<EOS>),
     and a few chat documents in the chat template's format made from docstring'd functions
     (User: <docstring summary> / Assistant: <the function>);
  4. model: transformers' own DeepseekV2ForCausalLM, randomly initialised from a Hub-shaped config,
     trained with AdamW in bf16 autocast for a wall-clock budget, with a small expert load-balancing
     loss (hooks on the MoE blocks);
  5. export: config.json in the Hub's shape (rope_scaling and rope_theta at the top level), bf16
     safetensors in the Hub's tensor naming (one tensor per expert) sharded under 16 MB a file with
     model.safetensors.index.json, generation_config.json, tokenizer files; the directory is then
     reloaded with from_pretrained and must hold exactly the trained weights (rounded to bf16);
  6. evaluation with the reloaded model (fp32, eager attention): perplexity of eval/heldout.txt
     (windows of 1024 tokens, each after a BOS; per-window NLL in eval/heldout_ppl.json so another
     implementation can be checked window by window), perplexity of the whole held-out split (bf16),
     greedy completions with their top-2 margins (eval/samples.json);
  7. packing: one tar.gz of the model directory, cut in parts under 15 MiB, under --out.

Before the long training it runs the whole model path (train steps at full batch, export, reload,
evaluation, samples, packing) on the real configuration for a few steps, so a mistake there costs
seconds, not the run.

    set -o pipefail; PYTHONUNBUFFERED=1 python3 tools/train_tiny.py --out "$OUT" 2>&1 | tee "$OUT/train.log"
    # then, here: cat OUT/kvgate-tiny-coder.tar.gz.part-* | tar xzf - -C models/

--budget is the wall-clock time of the whole run (training gets what the other phases leave, less
--reserve for export and evaluation); the defaults are those of the bundled model (285 s: 159 s of
training on an H200). A larger budget trains longer. The learning-rate schedule follows the clock,
so a rerun takes about, not exactly, as many steps.
"""
import argparse
import ast
import glob
import hashlib
import io
import json
import math
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time

T0 = time.time()
NAME = "kvgate-tiny-coder"

# ---------------------------------------------------------------------------------------------------
# Tokenizer pieces, as DeepSeek's tokenizer.json files have them (DeepSeek-V3's pre-tokenizer; the
# post-processor and decoder are ByteLevel in DeepSeek's files: a plain encode adds no BOS).

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
FIM_HOLE = "<\uff5cfim\u2581hole\uff5c>"
FIM_BEGIN = "<\uff5cfim\u2581begin\uff5c>"
FIM_END = "<\uff5cfim\u2581end\uff5c>"
# DeepSeek-Coder-V2 order after the BPE vocabulary: BOS, EOS, fim hole, fim begin, fim end, then the
# chat-role tokens and EOT; the rest of the reserved range is placeholders, as in DeepSeek's files.
SPECIALS = [BOS, EOS, FIM_HOLE, FIM_BEGIN, FIM_END,
            "<\uff5ccompletion\uff5c>", "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>", "<\uff5cEOT\uff5c>"]
N_RESERVED = 16   # special ids at the end of the vocabulary (SPECIALS + placeholders)

PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": False},
    {"type": "Split", "pattern": {"Regex": "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"},
     "behavior": "Isolated", "invert": False},
    {"type": "Split", "pattern": {"Regex":
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
        " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
POST_PROCESSOR = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}

# DeepSeek-Coder-V2-Lite-Instruct's chat template (tokenizer_config.json), byte for byte.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

# ---------------------------------------------------------------------------------------------------
# The model: DeepSeek-Coder-V2-Lite's shape scaled down (hidden 2048 -> 256, 27 -> 6 layers, 16 -> 8
# heads, head dims / 4, latent 512 -> 128, 64 experts top-6 -> 8 top-2, 2 shared experts kept, dense
# first layer kept), YaRN as the real model has it (factor 40 from 4096 there, 8 from 1024 here).


def model_config(vocab, bos_id, eos_id):
    return {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": vocab,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "moe_intermediate_size": 192,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "q_lora_rank": None,
        "kv_lora_rank": 128,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_shared_experts": 2,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "aux_loss_alpha": 0.001,
        "seq_aux": True,
        "ep_size": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


# ---------------------------------------------------------------------------------------------------
# 1. Corpus


def corpus_roots(exclude):
    import site
    import sysconfig
    cands = [sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    try:
        cands += site.getsitepackages()
    except Exception:
        pass
    cands += [p for p in sys.path if p]
    cands += glob.glob("/usr/lib/python3*") + glob.glob("/usr/local/lib/python3*")
    roots = sorted({os.path.realpath(p) for p in cands if p and os.path.isdir(p)})
    ex = os.path.realpath(exclude)
    roots = [r for r in roots if r != ex and not r.startswith(ex + os.sep) and r != "/"]
    return [r for r in roots if not any(o != r and r.startswith(o + os.sep) for o in roots)]


def list_py(roots):
    paths = []
    for root in roots:
        for dp, dn, fn in os.walk(root):
            dn[:] = sorted(d for d in dn if d not in ("__pycache__", ".git", "node_modules"))
            paths += [os.path.join(dp, f) for f in fn if f.endswith(".py")]
    return sorted(set(paths))


def keep_text(t):
    """Source a person wrote: no DeepSeek special-token text, no very long lines, mostly ASCII."""
    if "\uff5c" in t or "\x00" in t:
        return False
    lines = t.split("\n")
    if len(lines) < 3 or max(len(x) for x in lines) > 1000 or len(t) / len(lines) > 120:
        return False
    return len(t.encode("utf-8")) - len(t) <= 0.03 * len(t)


def read_one(path):
    try:
        st = os.stat(path)
        if not 64 <= st.st_size <= 400_000:
            return None
        with open(path, "rb") as f:
            b = f.read()
        t = b.decode("utf-8").replace("\r\n", "\n")
    except Exception:
        return None
    if not keep_text(t):
        return None
    return hashlib.sha256(t.encode("utf-8")).hexdigest(), t


def gather_corpus(repo, heldout_permille, procs):
    import multiprocessing as mp
    roots = corpus_roots(repo)
    paths = list_py(roots)
    with mp.get_context("fork").Pool(procs) as pool:
        got = pool.map(read_one, paths, chunksize=64)
    seen = {}
    for p, r in zip(paths, got):
        if r and r[0] not in seen:
            seen[r[0]] = (p, r[1])
    kept = sum(1 for r in got if r)
    files = sorted(((h, p, t) for h, (p, t) in seen.items()), key=lambda x: x[0])
    train = [f for f in files if int(f[0][:8], 16) % 1000 >= heldout_permille]
    held = [f for f in files if int(f[0][:8], 16) % 1000 < heldout_permille]
    stats = {"roots": roots, "py_files_found": len(paths), "kept_after_filters": kept,
             "unique_after_dedup": len(files), "duplicates_dropped": kept - len(files),
             "train_files": len(train), "heldout_files": len(held),
             "train_bytes": sum(len(f[2].encode()) for f in train),
             "heldout_bytes": sum(len(f[2].encode()) for f in held)}
    return train, held, stats


# ---------------------------------------------------------------------------------------------------
# 3. Documents: plain, fill-in-the-middle, chat


def chunks(text, maxc):
    if len(text) <= maxc:
        return [text]
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        if n + len(line) > maxc and cur:
            out.append("".join(cur))
            cur, n = [], 0
        cur.append(line)
        n += len(line)
    if cur:
        out.append("".join(cur))
    return out


def fim_split(s, rng):
    """(prefix, middle, suffix): mostly whole lines, the cursor sometimes inside the first line (as an
    editor asks), else a random span of characters."""
    lines = s.splitlines(keepends=True)
    if len(lines) >= 3 and rng.random() < 0.7:
        i = rng.randrange(len(lines))
        j = min(len(lines), i + 1 + min(12, int(rng.expovariate(1 / 2.5))))
        pre, mid, suf = "".join(lines[:i]), "".join(lines[i:j]), "".join(lines[j:])
        first = lines[i].rstrip("\n")
        if first.strip() and rng.random() < 0.5:
            k = rng.randrange(len(first) - len(first.lstrip()), len(first))
            pre, mid = pre + first[:k], mid[k:]
        return pre, mid, suf
    a = rng.randrange(len(s) + 1)
    n = min(len(s) - a, 1 + int(rng.expovariate(1 / 150)))
    return s[:a], s[a:a + n], s[a + n:]


def make_docs(files, rng, fim_rate, bos_rate, maxc):
    docs = []
    for _h, _p, text in files:
        for c in chunks(text, maxc):
            b = BOS if rng.random() < bos_rate else ""
            if rng.random() < fim_rate and len(c) > 16:
                pre, mid, suf = fim_split(c, rng)
                docs.append(b + FIM_BEGIN + pre + FIM_HOLE + suf + FIM_END + mid + EOS)
            else:
                docs.append(b + c + EOS)
    return docs


def extract_functions(text):
    """Top-level public functions with a docstring summary and a short body: (name, args, summary, src)."""
    try:
        tree = ast.parse(text)
    except Exception:
        return []
    out = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.decorator_list:
            continue
        if node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        summary = " ".join(doc.strip().split("\n\n")[0].split())
        if not 20 <= len(summary) <= 200 or not summary[0].isalpha():
            continue
        try:
            src = ast.get_source_segment(text, node)
            args = ast.unparse(node.args)
        except Exception:
            continue
        if not src or len(src) > 1500 or src.count("\n") < 2 or "\t" in src:
            continue
        out.append((node.name, args, summary, src))
    return out


ASKS = ["Write a Python function `{name}({args})`: {s}",
        "{s}\nWrite it in Python as `{name}`.",
        "Implement `{name}` in Python. {s}",
        "Can you write a Python function {name}? {s}",
        "python: {s}"]
ANSWERS = ["```python\n{src}\n```", "Here is an implementation:\n\n```python\n{src}\n```",
           "Sure.\n\n```python\n{src}\n```"]
SYSTEMS = ["You are a helpful coding assistant.", "You are an AI programming assistant.",
           "Answer with Python code."]


def chat_docs(funcs, rng, limit):
    docs = []
    for name, args, s, src in funcs[:limit]:
        q = rng.choice(ASKS).format(name=name, args=args, s=s)
        a = rng.choice(ANSWERS).format(src=src)
        sys_part = rng.choice(SYSTEMS) + "\n\n" if rng.random() < 0.2 else ""
        docs.append(BOS + sys_part + "User: " + q + "\n\n" + "Assistant: " + a + EOS)
    return docs


def gather_functions(files, max_bytes, procs):
    import multiprocessing as mp
    texts, n = [], 0
    for _h, _p, t in files:
        if n >= max_bytes:
            break
        texts.append(t)
        n += len(t)
    with mp.get_context("fork").Pool(procs) as pool:
        res = pool.map(extract_functions, texts, chunksize=32)
    funcs = sorted({f for r in res for f in r})
    return funcs


def render_chat(messages, add_generation_prompt=True):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(messages=messages, bos_token=BOS, eos_token=EOS,
                                                 add_generation_prompt=add_generation_prompt)


# ---------------------------------------------------------------------------------------------------
# 2. Tokenizer


def train_tokenizer(texts, vocab_total):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    pt = PRE_TOKENIZER["pretokenizers"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p["pattern"]["Regex"]), behavior="isolated", invert=False) for p in pt[:3]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    kw = dict(vocab_size=vocab_total - N_RESERVED, min_frequency=2, show_progress=False, special_tokens=[],
              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    try:
        trainer = trainers.BpeTrainer(max_token_length=24, **kw)
    except TypeError:
        trainer = trainers.BpeTrainer(**kw)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    n_bpe = tok.get_vocab_size()
    names = SPECIALS + [f"<\uff5cplace\u2581holder\u2581no\u2581{i}\uff5c>"
                        for i in range(vocab_total - n_bpe - len(SPECIALS))]
    tok.add_special_tokens([AddedToken(s, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                       special=True) for s in names])
    j = json.loads(tok.to_str())
    j["normalizer"] = {"type": "Sequence", "normalizers": []}
    j["pre_tokenizer"] = PRE_TOKENIZER
    j["post_processor"] = POST_PROCESSOR
    j["decoder"] = DECODER
    m = j["model"]
    m["merges"] = [x if isinstance(x, str) else " ".join(x) for x in m["merges"]]
    m.pop("ignore_merges", None)
    text = json.dumps(j, ensure_ascii=False, indent=2)
    final = Tokenizer.from_str(text)
    if final.get_vocab_size() != vocab_total:
        raise RuntimeError(f"vocab {final.get_vocab_size()} != {vocab_total}")
    for i, s in enumerate(SPECIALS):
        if final.token_to_id(s) != n_bpe + i:
            raise RuntimeError(f"special {s} has id {final.token_to_id(s)}, want {n_bpe + i}")
    return final, text, n_bpe


def tokenizer_config(max_len):
    def added(c):
        return {"__type": "AddedToken", "content": c, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}
    return {"add_bos_token": True, "add_eos_token": False, "bos_token": added(BOS),
            "clean_up_tokenization_spaces": False, "eos_token": added(EOS), "legacy": True,
            "model_max_length": max_len, "pad_token": added(EOS), "sp_model_kwargs": {}, "unk_token": None,
            "tokenizer_class": "LlamaTokenizerFast", "chat_template": CHAT_TEMPLATE}


def encode_all(tok, docs, batch=4096):
    import numpy as np
    enc = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    parts = []
    for i in range(0, len(docs), batch):
        for e in enc(docs[i:i + batch], add_special_tokens=False):
            parts.append(np.asarray(e.ids, dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


# ---------------------------------------------------------------------------------------------------
# 4. Model, training


def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def softmax_scale(cfg):
    rs = cfg["rope_scaling"]
    m = yarn_get_mscale(rs["factor"], rs["mscale_all_dim"])
    return (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]) ** -0.5 * m * m


def fix_softmax_scale(model, cfg):
    """DeepSeek's softmax scale carries YaRN's mscale squared (transformers added it late; golden.py)."""
    want, patched = softmax_scale(cfg), False
    for layer in model.model.layers:
        if abs(layer.self_attn.scaling - want) > 1e-9 * want:
            layer.self_attn.scaling = want
            patched = True
    return patched


def set_experts_impl(model, impl):
    f = getattr(model, "set_experts_implementation", None)
    if f:
        try:
            f(impl)
        except Exception:
            pass
    try:
        model.config._experts_implementation = impl
    except Exception:
        pass


def build_model(cfg, device, attn, seed):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    hf = AutoConfig.from_pretrained(d)
    shutil.rmtree(d)
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(hf, dtype=torch.float32, attn_implementation=attn)
    except TypeError:
        model = AutoModelForCausalLM.from_config(hf, torch_dtype=torch.float32, attn_implementation=attn)
    with torch.no_grad():   # GPT-2's residual scaling: output projections / sqrt(2 * layers)
        s = 1.0 / math.sqrt(2 * cfg["num_hidden_layers"])
        for n, p in model.named_parameters():
            if n.endswith("o_proj.weight") or n.endswith("down_proj.weight") or n.endswith("experts.down_proj"):
                p.mul_(s)
    patched = fix_softmax_scale(model, cfg)
    return model.to(device), patched


class MoeStats:
    """Forward hooks on the MoE blocks: a switch-style balance loss and the expert load."""

    def __init__(self, model):
        self.aux, self.load, self.on = [], [], True
        self.k = model.config.num_experts_per_tok
        self.n = 0
        for m in model.modules():
            if type(m).__name__.endswith("Moe") and hasattr(m, "gate"):
                m.register_forward_hook(self.hook)
                self.n += 1

    def hook(self, module, inputs, output):
        if not self.on:
            return
        import torch
        h = inputs[0]
        logits = torch.nn.functional.linear(h.reshape(-1, h.shape[-1]), module.gate.weight).float()
        probs = logits.softmax(-1)
        e = probs.shape[-1]
        idx = probs.topk(getattr(module, "top_k", None) or self.k, dim=-1).indices.reshape(-1)
        f = torch.zeros(e, device=h.device).scatter_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        f = f / idx.numel()
        self.aux.append(e * (f * probs.mean(0)).sum())
        self.load.append(f)

    def reset(self):
        self.aux, self.load = [], []


def lm_loss(model, x, y, stats, aux_coef):
    import torch
    import torch.nn.functional as F
    stats.reset()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=x, use_cache=False).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    aux = torch.stack(stats.aux).mean() if stats.aux else torch.zeros((), device=x.device)
    return loss, aux, loss + aux_coef * aux


def make_optimizer(model, lr, wd):
    import torch
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed_tokens" not in n)]
    groups = [{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except Exception:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


class Batches:
    def __init__(self, tokens, batch, seq, seed, device):
        import torch
        self.t, self.b, self.L = tokens, batch, seq
        self.g = torch.Generator(device=device)
        self.g.manual_seed(seed)
        self.ar = torch.arange(seq + 1, device=device)

    def next(self):
        import torch
        o = torch.randint(0, self.t.numel() - self.L - 1, (self.b,), device=self.t.device, generator=self.g)
        s = self.t[o[:, None] + self.ar[None, :]].long()
        return s[:, :-1], s[:, 1:]


def train_step(model, opt, stats, x, y, lr, aux_coef, clip):
    import torch
    for g in opt.param_groups:
        g["lr"] = lr
    loss, aux, total = lm_loss(model, x, y, stats, aux_coef)
    opt.zero_grad(set_to_none=True)
    total.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss, aux, gn


def val_loss(model, stats, vb, n):
    import torch
    model.eval()
    tot = 0.0
    with torch.no_grad():
        for x, y in vb[:n]:
            tot += float(lm_loss(model, x, y, stats, 0.0)[0])
    model.train()
    return tot / max(1, min(n, len(vb)))


# ---------------------------------------------------------------------------------------------------
# 5. Export


def hub_state_dict(model):
    """Fused 3-D expert tensors split per expert, as DeepSeek's checkpoints name them."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith(".experts.gate_up_proj") and v.dim() == 3:
            pre, inter = k[: -len("gate_up_proj")], v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"] = v[e, :inter]
                out[f"{pre}{e}.up_proj.weight"] = v[e, inter:]
            continue
        if k.endswith(".experts.down_proj") and v.dim() == 3:
            pre = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{pre}{e}.down_proj.weight"] = v[e]
            continue
        out[k] = v
    return out


def save_sharded(sd, outdir, max_bytes):
    import torch
    from safetensors.torch import save_file
    sd = {k: v.detach().to(torch.bfloat16).cpu().contiguous() for k, v in sd.items()}
    shards, cur, n = [], {}, 0
    for k, v in sd.items():   # model order: embeddings, layer by layer, norm, lm_head
        b = v.numel() * v.element_size()
        if cur and n + b > max_bytes:
            shards.append(cur)
            cur, n = {}, 0
        cur[k] = v
        n += b
    shards.append(cur)
    wm, total = {}, 0
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, os.path.join(outdir, fname), metadata={"format": "pt"})
        for k, v in part.items():
            wm[k] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
    return len(shards), total


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def export(model, cfg, tok_text, outdir, shard_bytes, device):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    os.makedirs(outdir, exist_ok=True)
    c = dict(cfg, transformers_version=transformers.__version__)
    write_json(os.path.join(outdir, "config.json"), c)
    write_json(os.path.join(outdir, "generation_config.json"),
               {"_from_model_config": True, "bos_token_id": cfg["bos_token_id"],
                "eos_token_id": cfg["eos_token_id"], "transformers_version": transformers.__version__})
    with open(os.path.join(outdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok_text)
    write_json(os.path.join(outdir, "tokenizer_config.json"), tokenizer_config(cfg["max_position_embeddings"]))
    nshards, total = save_sharded(hub_state_dict(model), outdir, shard_bytes)
    # Reload as a user would: exactly the trained weights rounded to bf16, nothing missing or extra.
    kw = dict(attn_implementation="eager", output_loading_info=True)
    try:
        ref, info = AutoModelForCausalLM.from_pretrained(outdir, dtype=torch.float32, **kw)
    except TypeError:
        ref, info = AutoModelForCausalLM.from_pretrained(outdir, torch_dtype=torch.float32, **kw)
    bad = [f"{k}={info[k]}" for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if bad:
        raise RuntimeError("reload: " + "; ".join(bad))
    mem = model.state_dict()
    maxd = 0.0
    for k, v in ref.state_dict().items():
        maxd = max(maxd, float((v.float() - mem[k].detach().to(torch.bfloat16).float().cpu()).abs().max()))
    if maxd != 0.0:
        raise RuntimeError(f"reloaded weights differ by {maxd}")
    patched = fix_softmax_scale(ref, cfg)
    set_experts_impl(ref, "eager")
    ref = ref.to(device).eval()
    sizes = {f: os.path.getsize(os.path.join(outdir, f)) for f in sorted(os.listdir(outdir))}
    return ref, {"shards": nshards, "weight_bytes": total, "files": sizes, "reload_patched_softmax_scale": patched}


# ---------------------------------------------------------------------------------------------------
# 6. Evaluation


def window_nll(model, ids, window, bos_id, pad_id, dtype=None, bs=8):
    """Consecutive windows of `window` tokens (the last shorter), each scored after a BOS."""
    import torch
    import torch.nn.functional as F
    dev = next(model.parameters()).device
    wins = [ids[i:i + window] for i in range(0, len(ids), window)]
    out = []
    with torch.no_grad():
        for b in range(0, len(wins), bs):
            grp = wins[b:b + bs]
            n = max(len(w) for w in grp)
            x = torch.full((len(grp), n), pad_id, dtype=torch.long)
            y = torch.full((len(grp), n), -100, dtype=torch.long)
            for i, w in enumerate(grp):
                x[i, 0] = bos_id
                x[i, 1:len(w)] = torch.tensor(w[:-1])
                y[i, :len(w)] = torch.tensor(w)
            x, y = x.to(dev), y.to(dev)
            if dtype is not None:
                with torch.autocast("cuda", dtype=dtype):
                    logits = model(input_ids=x, use_cache=False).logits
            else:
                logits = model(input_ids=x, use_cache=False).logits
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                  reduction="none", ignore_index=-100).reshape(y.shape)
            for i, w in enumerate(grp):
                out.append({"start": (b + i) * window, "n": len(w), "nll": float(nll[i, :len(w)].double().sum())})
    return out


def summarize(wins):
    n = sum(w["n"] for w in wins)
    s = sum(w["nll"] for w in wins)
    return {"tokens": n, "nll_sum": s, "mean_nll": s / max(1, n), "ppl": math.exp(s / max(1, n))}


def greedy(model, ids, n, eos_id):
    import torch
    dev = next(model.parameters()).device
    ids, out, margins = list(ids), [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids], device=dev), use_cache=False).logits[0, -1].float()
            top = torch.topk(logits, 2)
            t = int(top.indices[0])
            out.append(t)
            margins.append(float(top.values[0] - top.values[1]))
            ids.append(t)
            if t == eos_id:
                break
    return out, margins


COMPLETION_PROMPTS = [
    "def fibonacci(n):\n",
    "def fibonacci(n):",
    "def quick_sort(arr):\n",
    "class Stack:\n    def __init__(self):\n",
    "import os\nimport sys\n\n\ndef main():\n",
    "def read_json(path):\n    \"\"\"Read a JSON file and return its content.\"\"\"\n",
    "for i in range(10):\n",
]
FIM_PROMPTS = [
    ("def is_even(n):\n    return ", "\n\n\nprint(is_even(4))\n"),
    ("def add(a, b):\n", "\n\n\ndef sub(a, b):\n    return a - b\n"),
    ("import json\n\n\ndef load(path):\n    with open(path) as f:\n        ", "\n"),
]
CHAT_PROMPTS = [
    [{"role": "user", "content": "Write a Python function that returns the factorial of n."}],
    [{"role": "system", "content": "You are a helpful coding assistant."},
     {"role": "user", "content": "Write a Python function `is_prime(n)`: Return True if n is a prime number."}],
]


def samples(model, tok, n_new, eos_id):
    out = []

    def one(kind, prompt_text, extra):
        ids = tok.encode(prompt_text, add_special_tokens=False).ids
        g, m = greedy(model, ids, n_new, eos_id)
        out.append(dict(extra, kind=kind, prompt_text=prompt_text, prompt_ids=ids, greedy_ids=g,
                        greedy_text=tok.decode(g, skip_special_tokens=False), min_margin=min(m) if m else None,
                        margins=[round(x, 4) for x in m]))
    for p in COMPLETION_PROMPTS:
        one("completion", p, {"prompt": p})
    for pre, suf in FIM_PROMPTS:
        one("fim", FIM_BEGIN + pre + FIM_HOLE + suf + FIM_END, {"prefix": pre, "suffix": suf})
    for msgs in CHAT_PROMPTS:
        one("chat", render_chat(msgs), {"messages": msgs})
    return out


def hf_tokenizer_check(outdir, tok):
    """What transformers makes of the tokenizer files (information only)."""
    try:
        from transformers import AutoTokenizer
        t = AutoTokenizer.from_pretrained(outdir)
        s = "def f(x):\n    return x + 1\n"
        raw = tok.encode(s, add_special_tokens=False).ids
        hf = t(s)["input_ids"]
        msgs = CHAT_PROMPTS[1]
        r = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return {"class": type(t).__name__, "raw_ids": raw, "hf_ids": hf,
                "hf_adds_bos": bool(hf and hf[0] == tok.token_to_id(BOS) and hf[1:] == raw),
                "hf_equals_raw": hf == raw, "chat_template_same_as_jinja": r == render_chat(msgs)}
    except Exception as e:
        return {"error": repr(e)[:500]}


# ---------------------------------------------------------------------------------------------------
# 7. Packing


def pack(srcdir, arcname, outdir, part_bytes):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tf:
        tf.add(srcdir, arcname=arcname)
    data = buf.getvalue()
    names = []
    for i in range(0, len(data), part_bytes):
        name = f"{arcname}.tar.gz.part-{i // part_bytes:02d}"
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data[i:i + part_bytes])
        names.append(name)
    return names, len(data), hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------


def param_counts(model, cfg):
    total = sum(p.numel() for p in model.parameters())
    emb = cfg["vocab_size"] * cfg["hidden_size"]
    routed = 0
    for n, p in model.named_parameters():
        if ".experts." in n and "shared" not in n:
            routed += p.numel()
    active = total - routed + routed * cfg["num_experts_per_tok"] // cfg["n_routed_experts"]
    return {"total": total, "embedding": emb, "lm_head": emb, "routed_experts": routed,
            "active_per_token": active, "active_per_token_without_embedding": active - emb}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--name", default=NAME)
    ap.add_argument("--budget", type=float, default=285, help="wall-clock seconds for the whole run")
    ap.add_argument("--reserve", type=float, default=70, help="seconds kept for export and evaluation")
    ap.add_argument("--train-seconds", type=float, default=0, help="upper bound on training time (0: budget)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, default=12288)
    ap.add_argument("--max-text-mb", type=float, default=320)
    ap.add_argument("--tok-sample-mb", type=float, default=24)
    ap.add_argument("--heldout-permille", type=int, default=20)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--aux", type=float, default=0.01)
    ap.add_argument("--fim-rate", type=float, default=0.4)
    ap.add_argument("--bos-rate", type=float, default=0.75)
    ap.add_argument("--chat-max", type=int, default=25000)
    ap.add_argument("--eval-window", type=int, default=1024)
    ap.add_argument("--heldout-text-kb", type=int, default=300)
    ap.add_argument("--shard-mb", type=float, default=10)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")        # no network there: never wait for one
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)
    report = {"args": vars(a), "timings": {}}

    def mark(k):
        report["timings"][k] = round(time.time() - T0, 1)

    import numpy as np
    dev = "cuda"

    # 1. corpus
    procs = min(16, os.cpu_count() or 4)
    train_files, held_files, cstats = gather_corpus(repo, a.heldout_permille, procs)
    report["corpus"] = cstats
    log("corpus", {k: v for k, v in cstats.items() if k != "roots"})
    cap, used, n = a.max_text_mb * 1e6, [], 0
    for f in train_files:   # hash order: a random, reproducible choice when the cap bites
        if n >= cap:
            break
        used.append(f)
        n += len(f[2].encode())
    report["corpus"]["train_files_used"] = len(used)
    report["corpus"]["train_bytes_used"] = n
    funcs = gather_functions(used, 50e6, procs)
    report["corpus"]["docstring_functions"] = len(funcs)
    log(f"train files used {len(used)} ({n / 1e6:.1f} MB); functions with docstrings {len(funcs)}")
    mark("corpus")
    # torch and CUDA only now: the corpus reading and the function extraction above fork workers.
    import torch
    import tokenizers
    import transformers
    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]}
    log("versions", report["versions"])
    report["device"] = torch.cuda.get_device_name(0)
    log("device", report["device"])
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    # 2. tokenizer
    sample, n = [], 0
    for f in used:
        if n >= a.tok_sample_mb * 1e6:
            break
        sample.append(f[2])
        n += len(f[2])
    tok, tok_text, n_bpe = train_tokenizer(sample, a.vocab)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    report["tokenizer"] = {"vocab_size": a.vocab, "bpe_tokens": n_bpe, "trained_on_files": len(sample),
                           "trained_on_bytes": n, "special_ids": {s: tok.token_to_id(s) for s in SPECIALS}}
    probe = held_files[0][2][:5000] if held_files else "def f(x):\n    return x\n"
    if tok.decode(tok.encode(probe, add_special_tokens=False).ids, skip_special_tokens=False) != probe:
        raise RuntimeError("tokenizer does not round-trip")
    log("tokenizer", report["tokenizer"])
    mark("tokenizer")

    # 3. data
    docs = make_docs(used, rng, a.fim_rate, a.bos_rate, 6000)
    rng.shuffle(funcs)
    cdocs = chat_docs(funcs, rng, a.chat_max)
    all_docs = docs + cdocs
    rng.shuffle(all_docs)
    train_np = encode_all(tok, all_docs)
    held_docs = [BOS + t + EOS for _h, _p, t in held_files]
    held_np = encode_all(tok, held_docs)
    chat_tokens = int(sum(len(tok.encode(d, add_special_tokens=False).ids) for d in cdocs[:500]) *
                      len(cdocs) / max(1, min(500, len(cdocs))))
    report["data"] = {"documents": len(all_docs), "fim_documents": sum(FIM_BEGIN in d for d in docs),
                      "chat_documents": len(cdocs), "chat_tokens_est": chat_tokens,
                      "train_tokens": int(train_np.size), "heldout_tokens": int(held_np.size),
                      "bytes_per_token": report["corpus"]["train_bytes_used"] / max(1, train_np.size)}
    log("data", report["data"])
    mark("encode")
    train_t = torch.from_numpy(train_np).to(dev)
    held_t = torch.from_numpy(held_np).to(dev)

    # heldout.txt: the text for other implementations' perplexity (per file at most 16 KB, cut at a line)
    parts, n = [], 0
    for _h, _p, t in held_files:
        if n >= a.heldout_text_kb * 1000:
            break
        t = t[:16000]
        t = t[: t.rfind("\n") + 1] if "\n" in t else t
        parts.append(t)
        n += len(t.encode())
    heldout_text = "\n".join(parts)
    heldout_ids = tok.encode(heldout_text, add_special_tokens=False).ids

    cfg = model_config(a.vocab, bos_id, eos_id)

    # 4a. smoke: the whole model path on the real configuration, a few steps
    model, patched = build_model(cfg, dev, "sdpa", a.seed)
    stats = MoeStats(model)
    opt = make_optimizer(model, a.lr, a.wd)
    bt = Batches(train_t, a.batch, a.seq, a.seed, dev)
    cands = []
    for impl in ["grouped_mm", "eager"]:   # batched_mm copies weights per token: too big here
        set_experts_impl(model, impl)
        try:
            x, y = bt.next()
            train_step(model, opt, stats, x, y, 1e-5, a.aux, 1.0)
            torch.cuda.synchronize()
            t = time.time()
            for _ in range(3):
                x, y = bt.next()
                loss, _, _ = train_step(model, opt, stats, x, y, 1e-5, a.aux, 1.0)
            float(loss)
            torch.cuda.synchronize()
            cands.append(((time.time() - t) / 3, impl))
            log(f"experts {impl}: {cands[-1][0] * 1000:.0f} ms/step, loss {float(loss):.3f}")
        except Exception as e:
            log(f"experts {impl}: failed: {repr(e)[:300]}")
            opt.zero_grad(set_to_none=True)
    if not cands:
        raise RuntimeError("no experts implementation trains")
    impl = min(cands)[1]
    report["experts_implementation"] = impl
    report["experts_timing_ms"] = {i: round(t * 1000, 1) for t, i in cands}
    report["moe_hooks"] = stats.n
    report["train_patched_softmax_scale"] = patched
    smoke_dir = tempfile.mkdtemp()
    ref, _ = export(model, cfg, tok_text, os.path.join(smoke_dir, a.name), a.shard_mb * 1e6, dev)
    summarize(window_nll(ref, heldout_ids[:300], 128, bos_id, eos_id))
    summarize(window_nll(ref, heldout_ids[:300], 128, bos_id, eos_id, dtype=torch.bfloat16))
    window_nll(ref, held_np[:600].tolist(), 256, bos_id, eos_id, dtype=torch.bfloat16)
    samples(ref, tok, 2, eos_id)
    hf_tokenizer_check(os.path.join(smoke_dir, a.name), tok)
    os.makedirs(os.path.join(smoke_dir, a.name, "eval"), exist_ok=True)
    write_json(os.path.join(smoke_dir, a.name, "eval", "x.json"), {"ok": 1})
    pack(os.path.join(smoke_dir, a.name), a.name, smoke_dir, 15 * 2**20)
    shutil.rmtree(smoke_dir)
    del model, ref, opt, stats
    torch.cuda.empty_cache()
    log("smoke ok")
    mark("smoke")

    # 4b. training
    model, _ = build_model(cfg, dev, "sdpa", a.seed)
    set_experts_impl(model, impl)
    stats = MoeStats(model)
    opt = make_optimizer(model, a.lr, a.wd)
    bt = Batches(train_t, a.batch, a.seq, a.seed + 1, dev)
    vb = []
    vg = Batches(held_t, 8, a.seq, a.seed + 2, dev)
    for _ in range(4):
        vb.append(vg.next())
    report["params"] = param_counts(model, cfg)
    log("params", report["params"])
    t_start = time.time()
    t_end = T0 + a.budget - a.reserve
    if a.train_seconds > 0:
        t_end = min(t_end, t_start + a.train_seconds)
    span = max(1.0, t_end - t_start)
    log(f"training for {span:.0f} s")
    model.train()
    step, hist, last_val = 0, [], t_start
    try:
        while True:
            now = time.time()
            if now >= t_end:
                break
            frac = min(1.0, (now - t_start) / span)
            lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            x, y = bt.next()
            loss, aux, gn = train_step(model, opt, stats, x, y, lr, a.aux, 1.0)
            step += 1
            if step % 50 == 0:
                load = torch.stack(stats.load).float()
                rec = {"step": step, "t": round(time.time() - t_start, 1), "loss": round(float(loss), 4),
                       "aux": round(float(aux), 4), "grad_norm": round(float(gn), 3), "lr": lr,
                       "tok_per_s": round(step * a.batch * a.seq / (time.time() - t_start)),
                       "expert_load_max": round(float(load.max()), 3),
                       "expert_load_min": round(float(load.min()), 3)}
                if time.time() - last_val > 45:
                    rec["val_loss"] = round(val_loss(model, stats, vb, 4), 4)
                    last_val = time.time()
                hist.append(rec)
                log(rec)
    except Exception as e:   # keep what was trained: export and evaluate it all the same
        import traceback
        traceback.print_exc()
        report["train_error"] = repr(e)[:2000]
    train_time = time.time() - t_start
    model.eval()
    final_val = val_loss(model, stats, vb, 4)
    report["training"] = {"steps": step, "batch": a.batch, "seq": a.seq, "tokens_per_step": a.batch * a.seq,
                          "tokens_seen": step * a.batch * a.seq, "epochs": step * a.batch * a.seq / train_np.size,
                          "seconds": round(train_time, 1), "lr_peak": a.lr, "lr_final_ratio": 0.1,
                          "warmup_steps": a.warmup, "weight_decay": a.wd, "aux_coef": a.aux,
                          "final_val_loss_bf16": final_val, "history": hist}
    report["training"]["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    log("trained", {k: v for k, v in report["training"].items() if k != "history"})
    mark("train")

    # 5. export + 6. evaluation
    outdir = os.path.join(tempfile.mkdtemp(), a.name)
    ev = os.path.join(outdir, "eval")
    try:
        ref, einfo = export(model, cfg, tok_text, outdir, a.shard_mb * 1e6, dev)
        report["export"] = einfo
        mark("export")
        os.makedirs(ev, exist_ok=True)
        with open(os.path.join(ev, "heldout.txt"), "w", encoding="utf-8") as f:
            f.write(heldout_text)
        w32 = window_nll(ref, heldout_ids, a.eval_window, bos_id, eos_id)
        wbf = window_nll(ref, heldout_ids, a.eval_window, bos_id, eos_id, dtype=torch.bfloat16)
        idb = np.asarray(heldout_ids, dtype="<i4").tobytes()
        hp = {"text_file": "heldout.txt", "text_sha256": hashlib.sha256(heldout_text.encode()).hexdigest(),
              "text_bytes": len(heldout_text.encode()), "tokens": len(heldout_ids),
              "token_ids_sha256_le_int32": hashlib.sha256(idb).hexdigest(),
              "recipe": (f"tokenize heldout.txt with tokenizer.json (no special tokens added); cut the ids into "
                         f"consecutive windows of {a.eval_window} (the last shorter); feed [BOS] + window[:-1] "
                         f"and score every token of the window; ppl = exp(sum nll / tokens)"),
              "window": a.eval_window, "bos_id": bos_id,
              "transformers_fp32_eager": summarize(w32),
              "transformers_bf16_autocast_eager": summarize(wbf),
              "windows_fp32": w32}
        write_json(os.path.join(ev, "heldout_ppl.json"), hp)
        log("heldout.txt", {"fp32": summarize(w32), "bf16": summarize(wbf)})
        split = window_nll(ref, held_np[:2_000_000].tolist(), a.seq, bos_id, eos_id, dtype=torch.bfloat16, bs=16)
        report["heldout_split"] = dict(summarize(split), windows=len(split), window=a.seq,
                                       note="held-out files, BOS + file + EOS each, concatenated, the first "
                                            "2M tokens; windows after a BOS; bf16 autocast")
        log("held-out split", report["heldout_split"])
        mark("eval")
        smp = samples(ref, tok, 48, eos_id)
        write_json(os.path.join(ev, "samples.json"),
                   {"note": "greedy, transformers fp32 eager, full recompute each step; prompt_ids as tokenized "
                            "without added special tokens (chat prompts rendered with the chat template)",
                    "samples": smp})
        for s in smp:
            log(s["kind"], repr(s["prompt_text"][-60:]), "->", repr(s["greedy_text"]))
        report["hf_tokenizer"] = hf_tokenizer_check(outdir, tok)
        log("hf tokenizer", report["hf_tokenizer"])
        # expert load on held-out text
        stats.reset()
        with torch.no_grad():
            lm_loss(model, vb[0][0], vb[0][1], stats, 0.0)
        report["expert_load_heldout"] = [[round(float(v), 3) for v in f] for f in stats.load]
        mark("samples")
    except Exception as e:
        import traceback
        traceback.print_exc()
        report["error"] = repr(e)[:2000]
    finally:
        os.makedirs(ev, exist_ok=True)
        report["timings"]["total"] = round(time.time() - T0, 1)
        write_json(os.path.join(ev, "train_report.json"), report)
        names, size, sha = pack(outdir, a.name, a.out, 15 * 2**20)
        log("packed", names, size, sha)
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
