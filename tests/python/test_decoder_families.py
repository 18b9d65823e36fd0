"""The rotary decoder families (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2) against transformers.

No trained checkpoint of these families can be installed offline here, so every checkpoint is a tiny
random model built and saved by transformers itself (docs/models.md#rotary-decoder-families). For
each family and variant, `lipattn hidden` must give transformers' float64 `output_hidden_states` at
every layer to 1e-10 relative, and its token ids must be those of transformers' own tokenizer.

transformers computes some steps in float32 even in a float64 model: the rotary angles, cos and sin
(its rotary embedding casts positions and inv_freq to float), every RMSNorm (it casts its input to
float32), and the eager attention's softmax (dtype=torch.float32; Gemma 2 runs eager, as sdpa
cannot soft-cap). For the 1e-10 comparison those three are replaced in the reference by the same
formulas in float64 (`float64_reference`); the unpatched transformers must then differ from lipattn
by no more than that float32 rounding (1e-5), which shows the patches are the only difference.
"""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers  # noqa: E402

from cli import run  # noqa: E402

TEXTS = [
    "it was the best of times it was the worst of times",
    "it was the age of wisdom it was the age of foolishness",
    "it was the epoch of belief it was the epoch of incredulity",
    "the quick brown fox jumps over the lazy dog",
]
# 24 tokens with the BOS: longer than every window below and than the dynamic rope's length.
TEXT = " ".join(TEXTS[:2]) + " of"
TOL = 1e-10
TOL_F32 = 1e-5


def tokenizer():
    """A byte-pair tokenizer trained on TEXTS, adding BOS by its post-processor (the convention of
    Llama's and Gemma's tokenizer.json)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


TOKENIZER = tokenizer()
VOCAB = TOKENIZER.get_vocab_size()


def config(family, **keys):
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                eos_token_id=2, pad_token_id=0)
    if family in ("gemma", "gemma2"):
        base["head_dim"] = 8
    if family == "qwen3":
        base["head_dim"] = 8
    if family == "gemma2":
        base.update(query_pre_attn_scalar=12, attn_logit_softcapping=3.0, sliding_window=5)
    base.update(keys)
    return transformers.AutoConfig.for_model(family, **base)


def build(cfg, causal_lm=True):
    """transformers' model of `cfg` in float64, with weights large enough that attention is far from
    uniform and every norm weight away from its initial value (so w and 1 + w differ)."""
    torch.manual_seed(0)
    cls = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModel
    model = cls.from_config(cfg, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(0.3 + 0.5 * torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(0.35 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def save(model, path, **kwargs):
    model.save_pretrained(path, **kwargs)
    TOKENIZER.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    (path / "t.txt").write_text(TEXT)


def load(path):
    return transformers.AutoModel.from_pretrained(path, dtype=torch.float64).eval()


class float64_reference:
    """Within the block, transformers computes the rotary angles, the RMSNorms and the eager softmax
    in float64: the same formulas as its own code, without the casts to float32."""

    def __enter__(self):
        self.saved = []
        mods = [transformers.models.llama.modeling_llama, transformers.models.mistral.modeling_mistral,
                transformers.models.qwen2.modeling_qwen2, transformers.models.qwen3.modeling_qwen3,
                transformers.models.gemma.modeling_gemma, transformers.models.gemma2.modeling_gemma2]
        for m in mods:
            for name in dir(m):
                cls = getattr(m, name)
                if not isinstance(cls, type):
                    continue
                if name.endswith("RotaryEmbedding"):
                    self._patch(cls, "forward", rope_forward_f64)
                elif name.endswith("RMSNorm"):
                    gemma = "Gemma" in name
                    self._patch(cls, "forward", gemma_rms_f64 if gemma else llama_rms_f64)
            if hasattr(m, "eager_attention_forward"):
                self._patch(m, "eager_attention_forward", eager_f64(m.eager_attention_forward))
        return self

    def _patch(self, owner, attr, new):
        self.saved.append((owner, attr, owner.__dict__.get(attr)))
        setattr(owner, attr, new)

    def __exit__(self, *exc):
        for owner, attr, old in reversed(self.saved):
            if old is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, old)


def rope_forward_f64(self, x, position_ids):
    # The frequencies come from the module's own initialisation function (for dynamic rope, at this
    # sequence length, as its forward's update does), run with torch.float and torch.float32
    # standing for float64: transformers writes those dtypes into the formulas.
    seq_len = int(position_ids.max()) + 1
    init = (self.compute_default_rope_parameters if self.rope_type == "default"
            else transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS[self.rope_type])
    kwargs = {"seq_len": seq_len} if self.rope_type == "dynamic" else {}
    saved = torch.float, torch.float32
    torch.float = torch.float32 = torch.float64
    try:
        inv_freq, scaling = init(self.config, **kwargs)
    finally:
        torch.float, torch.float32 = saved
    assert inv_freq.dtype == torch.float64
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)


def llama_rms_f64(self, h):
    variance = h.pow(2).mean(-1, keepdim=True)
    return self.weight * (h * torch.rsqrt(variance + self.variance_epsilon))


def gemma_rms_f64(self, x):
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
    return out * (1.0 + self.weight)


def eager_f64(original):
    softmax = torch.nn.functional.softmax

    def patched(*args, **kwargs):
        def f64_softmax(t, dim=None, dtype=None, **kw):
            return softmax(t, dim=dim, **kw)
        torch.nn.functional.softmax = f64_softmax
        try:
            return original(*args, **kwargs)
        finally:
            torch.nn.functional.softmax = softmax
    return patched


def ids_of(text):
    return TOKENIZER.encode(text).ids


def reference(model, patched=True):
    ids = torch.tensor([ids_of(TEXT)])
    with torch.no_grad():
        if patched:
            with float64_reference():
                out = model(input_ids=ids, output_hidden_states=True)
        else:
            out = model(input_ids=ids, output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def lipattn_states(lipattn_bin, path, layers):
    states = []
    for layer in range(layers + 1):
        out = run(lipattn_bin, "hidden", "--model", path, "--text", path / "t.txt", "--layer", layer,
                  "--out", path / "h.npy", "--ids-out", path / "ids.npy")
        assert out.returncode == 0, out.stderr
        states.append(np.load(path / "h.npy"))
    return states, np.load(path / "ids.npy")


def compare(lipattn_bin, path, tol=TOL):
    """Saves `model`, reloads it with transformers in float64, and compares every hidden state."""
    ref_model = load(path)
    want = reference(ref_model)
    got, ids = lipattn_states(lipattn_bin, path, len(want) - 1)
    np.testing.assert_array_equal(ids, ids_of(TEXT))
    errs = [rel(g, w) for g, w in zip(got, want)]
    assert max(errs) < tol, errs
    unpatched = reference(ref_model, patched=False)
    f32 = [rel(g, w) for g, w in zip(got, unpatched)]
    assert max(f32) < TOL_F32, f32
    return errs, f32


# (family, config keys, what the case shows, others): transformers' output with the keys of each
# of `others` set over them, at the same weights, must differ from the case's (by more than MATTERS),
# so that a lipattn ignoring those keys would fail.
MATTERS = 1e-6
CASES = [
    ("llama", {}, "default rope, GQA 2", []),
    ("llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}, "MQA, tied", []),
    ("llama", {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True, "head_dim": 12,
               "rope_theta": 500.0}, "biases, head_dim given separately, MHA", [{"rope_theta": 10000.0}]),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.5, "rope_theta": 10000.0}}, "linear",
     [{"rope_parameters": None}]),
    ("llama", {"max_position_embeddings": 10, "rope_parameters": {"rope_type": "dynamic", "factor": 3.0,
                                                                   "rope_theta": 10000.0}},
     "dynamic, n beyond max_position_embeddings", [{"rope_parameters": None}, {"max_position_embeddings": 40}]),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                   "rope_theta": 10000.0}}, "llama3", [{"rope_parameters": None}]),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                   "beta_fast": 8.0, "beta_slow": 1.0, "rope_theta": 10000.0}}, "yarn",
     [{"rope_parameters": None}]),
    ("mistral", {"sliding_window": 6}, "sliding window below n", [{"sliding_window": None}]),
    ("qwen2", {}, "q/k/v biases", []),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
     "windows from max_window_layers on", [{"use_sliding_window": False}, {"max_window_layers": 2}]),
    ("qwen3", {}, "q/k norms", []),
    ("gemma", {}, "(1 + w) norms, scaled embeddings, GeGLU", []),
    ("gemma2", {}, "sandwich norms, soft-capping, alternating windows, query_pre_attn_scalar",
     [{"attn_logit_softcapping": None}, {"sliding_window": 64}, {"query_pre_attn_scalar": 8}]),
]


def moved(path, family, keys, others):
    """Checks that transformers' own output moves with each of `others` at the saved weights."""
    base = load(path)
    want = reference(base, patched=False)
    for other in others:
        cfg = config(family, **{**keys, **other})
        model = transformers.AutoModel.from_config(cfg, dtype=torch.float64).eval()
        model.load_state_dict(base.state_dict())
        got = reference(model, patched=False)
        assert max(rel(g, w) for g, w in zip(got, want)) > MATTERS, other


@pytest.mark.parametrize("family,keys,what,others", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_hidden_states_equal_transformers(lipattn_bin, tmp_path, family, keys, what, others):
    model = build(config(family, **keys))
    save(model, tmp_path)
    errs, f32 = compare(lipattn_bin, tmp_path)
    print(f"{family} ({what}): max rel err {max(errs):.2e} (unpatched transformers {max(f32):.2e})")
    moved(tmp_path, family, keys, others)


def test_bare_model_sharded_and_half_precision(lipattn_bin, tmp_path):
    """A bare LlamaModel save (no `model.` prefix), a sharded save, and BF16 / F16 weights, compared
    with transformers loading the same files in float64."""
    model = build(config("llama"), causal_lm=False)
    bare = tmp_path / "bare"
    save(model, bare, max_shard_size="20KB")
    assert (bare / "model.safetensors.index.json").exists()
    compare(lipattn_bin, bare)
    for dtype in (torch.bfloat16, torch.float16):
        half = tmp_path / str(dtype).split(".")[1]
        save(build(config("gemma2")).to(dtype), half)
        compare(lipattn_bin, half)


def test_token_ids_equal_transformers_tokenizer(lipattn_bin, tmp_path):
    """BOS from tokenizer.json's post-processor, as transformers 5.25 reads it; tokenizer_config.json's
    add_bos_token / add_eos_token do not change transformers' ids when tokenizer.json has a
    template, and lipattn's ids are the same."""
    model = build(config("llama", num_hidden_layers=1))
    save(model, tmp_path)
    for flags in ({}, {"add_bos_token": True, "add_eos_token": True}):
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", **flags}
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
        hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
        for text in TEXTS + ["wisdom and foolishness"]:
            (tmp_path / "t.txt").write_text(text)
            out = run(lipattn_bin, "hidden", "--model", tmp_path, "--text", tmp_path / "t.txt", "--layer", 0,
                      "--out", tmp_path / "h.npy", "--ids-out", tmp_path / "ids.npy")
            assert out.returncode == 0, out.stderr
            want = hf(text)["input_ids"]
            assert want[0] == 1
            np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), want)


def test_unsupported_commands_and_values_are_refused(lipattn_bin, tmp_path):
    model = build(config("llama", num_hidden_layers=1))
    save(model, tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((5, 32)))
    commands = [
        ["lipschitz", "--model", tmp_path, "--layer", 0, "--radius", 1, "--n", 4, "--json"],
        ["local", "--model", tmp_path, "--layer", 0, "--tokens", x, "--json"],
        ["forward", "--model", tmp_path, "--layer", 0, "--tokens", x, "--out", tmp_path / "y.npy"],
        ["analyze", tmp_path, "--text", tmp_path / "t.txt", "--ns", 8, "--json"],
        ["invert", "--model", tmp_path, "--layer", 0, "--json"],
        ["fixed-point", "--model", tmp_path, "--layer", 0, "--json"],
        ["flow", "--model", tmp_path, "--layer", 0, "--json"],
    ]
    for args in commands:
        out = run(lipattn_bin, *args)
        assert out.returncode != 0, args
        assert "model_type 'llama'" in out.stderr and "rotary" in out.stderr, (args, out.stderr)
        assert "lipattn hidden" in out.stderr, (args, out.stderr)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 4,
                              "long_factor": [1.0] * 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = run(lipattn_bin, "hidden", "--model", tmp_path, "--text", tmp_path / "t.txt", "--layer", 1,
              "--out", tmp_path / "h.npy")
    assert out.returncode != 0 and "rope_parameters" in out.stderr and "longrope" in out.stderr, out.stderr
