#!/usr/bin/env python3
"""Seeded random 1-layer Llama checkpoint (built and saved by transformers itself, float32) and
seeded tokens X for bench/rotary_local.

Attention weights: W_Q, W_K, W_V ~ N(0, 1/d), W_O ~ N(0, 1/(heads * head_dim)), no biases; with
rows of X of RMS 1 (norm sqrt(d), an RMSNorm output with unit gains) each q and k entry is O(1)
and the scaled scores q.k/sqrt(head_dim) are O(1)-O(10). The MLP and the vocabulary are tiny
(unused by the benchmark, which reads layer 0's attention only).

Defaults: the Llama-shaped layer of issue #17 item 6 (d 4096, 32 query heads, 8 key/value heads,
head_dim 128, n 512, rope_theta 500000). Smaller sizes: --d 512 --heads 8 --kv 2 --head-dim 64
--n 64 (or the environment variables D, HEADS, KV, HEAD_DIM, N, SEED).
"""
import argparse
import json
import os

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def env(name, default):
    return type(default)(os.environ.get(name, default))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=env("D", 4096))
    ap.add_argument("--heads", type=int, default=env("HEADS", 32))
    ap.add_argument("--kv", type=int, default=env("KV", 8))
    ap.add_argument("--head-dim", type=int, default=env("HEAD_DIM", 128))
    ap.add_argument("--n", type=int, default=env("N", 512))
    ap.add_argument("--seed", type=int, default=env("SEED", 0))
    ap.add_argument("--out-dir", required=True, help="writes OUT/model (the checkpoint) and OUT/X.npy")
    a = ap.parse_args()
    d, h, kv, hd = a.d, a.heads, a.kv, a.head_dim
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=d,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=h,
        num_key_value_heads=kv,
        head_dim=hd,
        max_position_embeddings=max(8192, a.n),
        rope_theta=500000.0,
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    g = torch.Generator().manual_seed(a.seed)

    def gauss(rows, cols, std):
        return torch.randn(rows, cols, generator=g, dtype=torch.float64).mul_(std).to(torch.float32)

    att = model.model.layers[0].self_attn
    with torch.no_grad():
        att.q_proj.weight.copy_(gauss(h * hd, d, d ** -0.5))
        att.k_proj.weight.copy_(gauss(kv * hd, d, d ** -0.5))
        att.v_proj.weight.copy_(gauss(kv * hd, d, d ** -0.5))
        att.o_proj.weight.copy_(gauss(d, h * hd, (h * hd) ** -0.5))
    out = os.path.abspath(a.out_dir)
    model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)

    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.n, d))
    x *= np.sqrt(d) / np.linalg.norm(x, axis=1, keepdims=True)  # RMS 1 per row
    np.save(os.path.join(out, "X.npy"), x.astype(np.float32))
    print(json.dumps({"out": out, "d": d, "heads": h, "kv_heads": kv, "head_dim": hd, "n": a.n,
                      "seed": a.seed, "x_dtype": "float32"}))


if __name__ == "__main__":
    main()
