"""Outputs of transformers' own attention modules (eager, float64) for tests/rotary.rs
(`transformers_attention_modules`): one small random layer per family, its weights, a token
sequence and the output. Run once with transformers 5.25:

    PYTHONPATH=.build/py python3 scripts/rotary_reference.py crates/lipattn/tests/data/rotary_transformers.json

The rope angles, cos and sin (and the qk RMS norms and the eager softmax) are float32 inside
transformers even here: `y` is that output, which the test compares to about 1e-6 relative.
For the families `tests/python/tiny_decoders.float64_reference` covers (all but Gemma 3) the case
also holds the output with those steps in float64 (`y64`), and the derivatives of that float64
module by torch.func: `jvp` along the tangent `dx`, `vjp` of the cotangent `dy`; the test
compares those three to 1e-10.
"""
import json
import os
import sys

import torch
from torch.func import jvp, vjp
from transformers import masking_utils

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from tiny_decoders import float64_reference  # noqa: E402

torch.manual_seed(0)


def mask(n, window):
    fn = (
        masking_utils.sliding_window_causal_mask_function(window)
        if window
        else masking_utils.causal_mask_function
    )
    m = torch.full((1, 1, n, n), torch.finfo(torch.float64).min, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if fn(0, 0, torch.tensor(i), torch.tensor(j)):
                m[0, 0, i, j] = 0.0
    return m


def run(name, config_cls, attn_cls, rope_cls, n, window, rope_entry, extra, layer_type=None):
    cfg = config_cls(
        hidden_size=16,
        num_attention_heads=4,
        head_dim=8,
        intermediate_size=32,
        num_hidden_layers=1,
        vocab_size=32,
        **extra,
    )
    cfg._attn_implementation = "eager"
    attn = attn_cls(cfg, layer_idx=0).double().eval()
    for p in attn.parameters():
        with torch.no_grad():
            p.normal_(0.0, 0.4)
    rope = rope_cls(cfg).double()
    x = torch.randn(1, n, 16, dtype=torch.float64)
    pos = torch.arange(n)[None]
    cos, sin = rope(x, pos) if layer_type is None else rope(x, pos, layer_type)
    with torch.no_grad():
        y, _ = attn(x, position_embeddings=(cos, sin), attention_mask=mask(n, window))
    extra_out = {}
    if layer_type is None:
        dx = torch.randn(1, n, 16, dtype=torch.float64)
        dy = torch.randn(1, n, 16, dtype=torch.float64)
        with float64_reference():
            cos64, sin64 = rope(x, pos)
            f = lambda z: attn(z, position_embeddings=(cos64, sin64), attention_mask=mask(n, window))[0]  # noqa: E731
            y64, t = jvp(f, (x,), (dx,))
            _, pull = vjp(f, x)
            (xbar,) = pull(dy)
        extra_out = dict(y64=y64[0].tolist(), dx=dx[0].tolist(), jvp=t[0].tolist(), dy=dy[0].tolist(),
                         vjp=xbar[0].tolist())
    sd = {k: v.tolist() for k, v in attn.state_dict().items()}
    return dict(**extra_out,
        name=name,
        heads=cfg.num_attention_heads,
        kv_heads=cfg.num_key_value_heads,
        head_dim=8,
        window=window,
        rope=rope_entry,
        softcap=getattr(cfg, "attn_logit_softcapping", None),
        score_divisor_sq=getattr(cfg, "query_pre_attn_scalar", None) or 8,
        eps=getattr(cfg, "rms_norm_eps", None),
        weights=sd,
        x=x[0].tolist(),
        y=y[0].tolist(),
    )


cases = []
from transformers.models.llama import modeling_llama as L
from transformers import LlamaConfig

cases.append(run(
    "llama3 scaling, GQA 2, biases", LlamaConfig, L.LlamaAttention, L.LlamaRotaryEmbedding, 9, None,
    dict(type="llama3", theta=500000.0, max_pos=64, factor=8.0, low=1.0, high=4.0, original=4),
    dict(num_key_value_heads=2, attention_bias=True, max_position_embeddings=64,
         rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=4)),
))
from transformers.models.mistral import modeling_mistral as M
from transformers import MistralConfig

cases.append(run(
    "mistral, dynamic scaling past max_position_embeddings, window 2", MistralConfig, M.MistralAttention,
    M.MistralRotaryEmbedding, 9, 2,
    dict(type="dynamic", theta=10000.0, max_pos=4, factor=2.0, original=4),
    dict(num_key_value_heads=4, sliding_window=2, max_position_embeddings=4,
         rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
))
from transformers.models.qwen3 import modeling_qwen3 as Q
from transformers import Qwen3Config

cases.append(run(
    "qwen3, qk-norm, yarn, multi-query, window 3", Qwen3Config, Q.Qwen3Attention, Q.Qwen3RotaryEmbedding, 9, 3,
    dict(type="yarn", theta=10000.0, max_pos=64, factor=4.0, original=4, beta_fast=32.0, beta_slow=1.0),
    dict(num_key_value_heads=1, max_position_embeddings=64, use_sliding_window=True, sliding_window=3,
         layer_types=["sliding_attention"], rms_norm_eps=1e-6,
         rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                              original_max_position_embeddings=4, beta_fast=32.0, beta_slow=1.0)),
))
from transformers.models.gemma2 import modeling_gemma2 as G2
from transformers import Gemma2Config

cases.append(run(
    "gemma2, softcap, query_pre_attn_scalar, window 4", Gemma2Config, G2.Gemma2Attention,
    G2.Gemma2RotaryEmbedding, 9, 4,
    dict(type="default", theta=10000.0, max_pos=64),
    dict(num_key_value_heads=2, max_position_embeddings=64, sliding_window=4, layer_types=["sliding_attention"],
         query_pre_attn_scalar=12, attn_logit_softcapping=1.5,
         rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
))
from transformers.models.gemma3 import modeling_gemma3 as G3
from transformers import Gemma3TextConfig

g3 = run(
    "gemma3, qk-norm with gain 1 + w, linear scaling, full attention", Gemma3TextConfig, G3.Gemma3Attention,
    G3.Gemma3RotaryEmbedding, 9, None,
    dict(type="linear", theta=10000.0, max_pos=64, factor=4.0),
    dict(num_key_value_heads=2, max_position_embeddings=64, sliding_window=4, layer_types=["full_attention"],
         query_pre_attn_scalar=8, rms_norm_eps=1e-6,
         rope_parameters=dict(full_attention=dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
                              sliding_attention=dict(rope_type="default", rope_theta=10000.0))),
    layer_type="full_attention",
)
g3["unit_offset"] = True
cases.append(g3)
json.dump(cases, open(sys.argv[1], "w"))
for c in cases:
    print(c["name"], list(c["weights"].keys()), c["softcap"], c["score_divisor_sq"], c["window"])
