"""inv_freq and the attention factor of each rope scaling type, from transformers' own rope init
functions (float32), for the expected values in crates/lipattn/tests/rotary.rs
(`frequencies_match_transformers`). Run once with transformers 5.25:

    PYTHONPATH=.build/py python3 scripts/rope_reference.py    # writes /tmp/rope_ref.json
"""
import json, torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
torch.set_printoptions(precision=10)
cases = [
 ("default", dict(rope_type="default", rope_theta=10000.0), 16, 64, 10),
 ("linear", dict(rope_type="linear", rope_theta=10000.0, factor=4.0), 16, 64, 10),
 ("dynamic_short", dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0), 16, 64, 10),
 ("dynamic_long", dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0), 16, 64, 200),
 ("llama3", dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192), 128, 131072, 10),
 ("yarn", dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32, beta_fast=32.0, beta_slow=1.0), 32, 128, 10),
 ("yarn_mscale", dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.707), 64, 163840, 10),
 ("yarn_notrunc_att", dict(rope_type="yarn", rope_theta=1000000.0, factor=4.0, original_max_position_embeddings=32768, beta_fast=32.0, beta_slow=1.0, attention_factor=1.25, truncate=False), 64, 131072, 10),
 ("yarn_partial", dict(rope_type="yarn", rope_theta=10000.0, factor=2.0, original_max_position_embeddings=64, beta_fast=16.0, beta_slow=2.0, partial_rotary_factor=0.5), 32, 256, 10),
]
out = {}
for name, rp, head_dim, maxpos, n in cases:
    cfg = LlamaConfig(hidden_size=head_dim*2, num_attention_heads=2, head_dim=head_dim, max_position_embeddings=maxpos, rope_parameters=rp)
    t = rp["rope_type"]
    if t == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        inv, att = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        kw = dict(seq_len=n) if t == "dynamic" else {}
        inv, att = ROPE_INIT_FUNCTIONS[t](cfg, None, **kw)
    out[name] = dict(inv=[float(x) for x in inv], att=float(att), head_dim=head_dim, maxpos=maxpos, n=n)
    print(name, len(inv), float(att), [float(x) for x in inv[:3]], [float(x) for x in inv[-2:]])
json.dump(out, open("/tmp/rope_ref.json", "w"))
