#!/usr/bin/env python3
"""golden.py: tiny random models and reference logits from Hugging Face transformers.

Runs on the GPU machine (torch, transformers, safetensors; no internet); the reference itself is
computed on the CPU in fp32 with eager attention, so that it is exact and reproducible.

    python3 tools/golden.py --out tests/data/golden

For each model it writes OUT/<name>/:
  config.json                     hub shape (rope_scaling + rope_theta at the top level) or, for
                                  deepseek_b, what transformers itself writes (rope_parameters)
  model.safetensors               or model-0000k-of-0000n.safetensors + model.safetensors.index.json
  golden.json                     prompts, greedy continuations, meta (versions, rope tables)
  logits.f32                      little-endian fp32, for each prompt in order: (n_tokens, vocab)

Weights are random (seeded), rounded to the storage dtype before the reference runs, saved in the
Hub's tensor naming (per-expert gate/up/down for DeepSeek-V2 MoE), then reloaded from the directory
with from_pretrained: the reference is what transformers computes from the files we ship.

DeepSeek-V2 softmax scale: DeepSeek's own modeling_deepseek.py and vLLM multiply the softmax scale by
yarn_get_mscale(factor, mscale_all_dim)**2; transformers added it only in PR 47435. If the installed
version lacks it, the script sets attn.scaling to that value and records patched_softmax_scale.
"""
import argparse
import json
import math
import os
import sys
import traceback

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

N_GREEDY = 32

BASE_DS = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_shared_experts": 2,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "routed_scaling_factor": 1.0,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "scoring_func": "softmax",
    "norm_topk_prob": False,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}

MODELS = [
    # DeepSeek-V2 with q_lora, greedy top-k, hub-shaped config, bf16, mscale == mscale_all_dim
    ("deepseek_a", dict(BASE_DS, q_lora_rank=24, rope_theta=10000.0,
                        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                      "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                                      "mscale_all_dim": 0.707}),
     torch.bfloat16, 1, "hub"),
    # DeepSeek-V2 without q_lora, group-limited top-k, scaled routing, config as transformers writes it,
    # f32, mscale != mscale_all_dim (the cos/sin scale does not cancel)
    ("deepseek_b", dict(BASE_DS, q_lora_rank=None, rope_theta=10000.0, topk_method="group_limited_greedy",
                        n_group=4, topk_group=2, num_experts_per_tok=3, routed_scaling_factor=1.5,
                        n_shared_experts=1, num_hidden_layers=3, torch_dtype="float32",
                        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                      "beta_fast": 24, "beta_slow": 2, "mscale": 1.0,
                                      "mscale_all_dim": 0.8}),
     torch.float32, 1, "transformers"),
    # Llama: GQA, explicit head_dim != hidden/heads, llama3 rope scaling, sharded bf16
    ("llama", {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 300,
               "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 24, "hidden_act": "silu", "max_position_embeddings": 512,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False,
               "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
               "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"},
     torch.bfloat16, 2, "hub"),
    # Qwen2: attention bias on q/k/v, tied embeddings, f32
    ("qwen2", {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 288,
               "hidden_size": 64, "intermediate_size": 112, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 1, "hidden_act": "silu", "max_position_embeddings": 512,
               "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "use_sliding_window": False,
               "sliding_window": None, "max_window_layers": 2, "tie_word_embeddings": True,
               "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"},
     torch.float32, 1, "hub"),
    # Mistral: GQA, no sliding window, f16
    ("mistral", {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 256,
                 "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6,
                 "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 512,
                 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": None,
                 "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"},
     torch.float16, 1, "hub"),
]

PROMPT_LENS = [1, 9, 40, 100]  # 100 > YaRN's original_max_position_embeddings (64)


def yarn_get_mscale(scale, mscale):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def randomize(model, gen):
    """Weights with unit-scale activations (std 1/sqrt(fan_in)): peaked logits, clear greedy margins."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                fan_in = p.shape[-1]
                scale = 3.0 if name.startswith("lm_head") else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def hub_state_dict(model, tied):
    """State dict in the Hub's naming: fused 3-D expert tensors split per expert."""
    out = {}
    for k, v in model.state_dict().items():
        if tied and k == "lm_head.weight":
            continue
        if k.endswith(".experts.gate_up_proj") and v.dim() == 3:
            pre = k[: -len("gate_up_proj")]
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"] = v[e, :inter].clone()
                out[f"{pre}{e}.up_proj.weight"] = v[e, inter:].clone()
            continue
        if k.endswith(".experts.down_proj") and v.dim() == 3:
            pre = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{pre}{e}.down_proj.weight"] = v[e].clone()
            continue
        out[k] = v.clone()
    return out


def save_weights(sd, outdir, dtype, shards):
    sd = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    if shards == 1:
        save_file(sd, os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})
        return
    keys = sorted(sd.keys())
    per = (len(keys) + shards - 1) // shards
    weight_map = {}
    total = 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[s * per:(s + 1) * per]}
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
        save_file(part, os.path.join(outdir, fname), metadata={"format": "pt"})
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def greedy(model, ids, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            t = int(torch.argmax(logits))
            top2 = torch.topk(logits, 2).values
            out.append((t, float(top2[0] - top2[1])))
            ids.append(t)
    return out


def make(name, cfg, dtype, shards, shape, root, seed):
    outdir = os.path.join(root, name)
    os.makedirs(outdir, exist_ok=True)
    for f in os.listdir(outdir):
        os.unlink(os.path.join(outdir, f))
    gen = torch.Generator().manual_seed(seed)

    # 1. Config: hub shape written by hand, or transformers' own.
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    hf_cfg = AutoConfig.from_pretrained(outdir)
    if shape == "transformers":
        os.unlink(os.path.join(outdir, "config.json"))
        hf_cfg.save_pretrained(outdir)
        hf_cfg = AutoConfig.from_pretrained(outdir)

    # 2. Random weights rounded to the storage dtype, saved in hub naming.
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        model = AutoModelForCausalLM.from_config(hf_cfg, torch_dtype=torch.float32, attn_implementation="eager")
    randomize(model, gen)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    tied = bool(cfg.get("tie_word_embeddings", False))
    naming = "hub"
    sd = hub_state_dict(model, tied)
    save_weights(sd, outdir, dtype, shards)

    # 3. Reload the directory as a user would; it must hold exactly these weights. If this
    # transformers cannot read per-expert names, fall back to its own fused naming (recorded).
    def reload():
        r, info = AutoModelForCausalLM.from_pretrained(outdir, dtype=torch.float32, attn_implementation="eager",
                                                       output_loading_info=True)
        return r, [f"{k}={info[k]}" for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
                   if info.get(k)]
    ref, bad = reload()
    if bad and cfg["model_type"] == "deepseek_v2":
        print(f"{name}: hub naming not accepted ({bad}); saving fused naming", flush=True)
        for f in os.listdir(outdir):
            if "safetensors" in f:
                os.unlink(os.path.join(outdir, f))
        naming = "fused"
        save_weights({k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")},
                     outdir, dtype, shards)
        ref, bad = reload()
    if bad:
        raise RuntimeError(f"{name}: reload: " + "; ".join(bad))
    ref.eval()
    sd_ref = ref.state_dict()
    sd_mem = model.state_dict()
    maxd = max(float((sd_ref[k].float() - sd_mem[k].float()).abs().max()) for k in sd_mem if k in sd_ref)
    if maxd != 0.0:
        raise RuntimeError(f"{name}: reloaded weights differ by {maxd}")

    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "dtype": str(dtype),
            "shards": shards, "config_shape": shape, "seed": seed, "weight_naming": naming}
    rot = ref.model.rotary_emb
    meta["inv_freq"] = [float(x) for x in rot.inv_freq.float()]
    meta["rope_attention_scaling"] = float(getattr(rot, "attention_scaling", 1.0))

    # 4. DeepSeek-V2 softmax scale (see the module comment).
    if cfg["model_type"] == "deepseek_v2":
        rs = cfg["rope_scaling"]
        qk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
        want = qk ** -0.5
        if rs.get("mscale_all_dim"):
            m = yarn_get_mscale(rs["factor"], rs["mscale_all_dim"])
            want *= m * m
        patched = False
        for layer in ref.model.layers:
            got = layer.self_attn.scaling
            if abs(got - want) > 1e-9 * want:
                layer.self_attn.scaling = want
                patched = True
        meta["softmax_scale"] = want
        meta["patched_softmax_scale"] = patched

    # 5. Prompts, logits at every position, greedy continuations (full recompute each step).
    vocab = cfg["vocab_size"]
    prompts = []
    chunks = []
    off = 0
    for n in PROMPT_LENS:
        ids = [int(x) for x in torch.randint(3, vocab, (n,), generator=gen)]
        with torch.no_grad():
            logits = ref(torch.tensor([ids])).logits[0].float().contiguous()
        chunks.append(logits.numpy().astype("<f4").tobytes())
        g = greedy(ref, ids, N_GREEDY)
        prompts.append({"ids": ids, "logits_offset": off, "greedy": [t for t, _ in g],
                        "greedy_min_margin": min(m for _, m in g),
                        "max_abs_logit": float(logits.abs().max())})
        off += n * vocab
    with open(os.path.join(outdir, "logits.f32"), "wb") as f:
        for c in chunks:
            f.write(c)
    with open(os.path.join(outdir, "golden.json"), "w") as f:
        json.dump({"name": name, "vocab_size": vocab, "prompts": prompts, "meta": meta}, f, indent=1)
    print(f"{name}: ok; params {sum(p.numel() for p in ref.parameters())}, "
          f"min greedy margin {min(p['greedy_min_margin'] for p in prompts):.4f}, meta "
          f"{ {k: v for k, v in meta.items() if k != 'inv_freq'} }", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/golden")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    print("transformers", transformers.__version__, "torch", torch.__version__, flush=True)
    fails = 0
    for i, (name, cfg, dtype, shards, shape) in enumerate(MODELS):
        if a.only and name not in a.only.split(","):
            continue
        try:
            make(name, json.loads(json.dumps(cfg)), dtype, shards, shape, a.out, 1234 + i)
        except Exception:
            traceback.print_exc()
            fails += 1
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
