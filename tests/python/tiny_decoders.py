"""Tiny random checkpoints of the rotary decoder families, built and saved by transformers itself
(no trained one can be installed offline), and transformers' float64 reference of their hidden
states, for tests/python/test_decoder_families.py and the Python package's tests.

transformers computes some steps in float32 even in a float64 model: the rotary angles, cos and sin
(its rotary embedding casts positions and inv_freq to float), every RMSNorm (it casts its input to
float32), and the eager attention's softmax (dtype=torch.float32; Gemma 2 runs eager, as sdpa
cannot soft-cap). `float64_reference` replaces those three by the same formulas in float64.
"""
import json
import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers  # noqa: E402

TEXTS = [
    "it was the best of times it was the worst of times",
    "it was the age of wisdom it was the age of foolishness",
    "it was the epoch of belief it was the epoch of incredulity",
    "the quick brown fox jumps over the lazy dog",
]
# 29 tokens with the BOS: longer than every window of the tests and than their dynamic rope's length.
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


def causal_mask(n, window):
    """The additive eager mask: query i sees keys j <= i with i - j < window (all j <= i without)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    seen = (j <= i) & ((i - j < window) if window else True)
    m = torch.zeros(n, n, dtype=torch.float64)
    m[~seen] = torch.finfo(torch.float64).min
    return m[None, None]


def attention_top_singular(path, layer, x, head=None):
    """The largest singular value of the Jacobian of transformers' own attention module of `layer`
    (eager, its float32 steps in float64, positions 0..n-1) at the tokens `x` (n, d), by
    torch.autograd.functional.jacobian, and the module's sliding window. With `head`, the other
    query heads' columns of o_proj (and its bias) are zeroed: head `head`'s contribution alone."""
    model = load(path)
    model.config._attn_implementation = "eager"
    attn = model.layers[layer].self_attn
    window = getattr(attn, "sliding_window", getattr(model.config, "sliding_window", None))
    if head is not None:
        hd = attn.head_dim
        with torch.no_grad():
            keep = torch.zeros(attn.o_proj.weight.shape[1], dtype=torch.bool)
            keep[head * hd:(head + 1) * hd] = True
            attn.o_proj.weight[:, ~keep] = 0.0
            if attn.o_proj.bias is not None:
                attn.o_proj.bias.zero_()
    n = x.shape[0]
    xt = torch.tensor(x, dtype=torch.float64)[None]
    pos = torch.arange(n)[None]
    mask = causal_mask(n, window)
    with float64_reference():
        cos, sin = model.rotary_emb(xt, pos)
        f = lambda z: attn(z[None], position_embeddings=(cos, sin), attention_mask=mask)[0][0]  # noqa: E731
        jac = torch.autograd.functional.jacobian(f, xt[0])
    jac = jac.reshape(n * x.shape[1], n * x.shape[1]).numpy()
    return float(np.linalg.svd(jac, compute_uv=False)[0]), window


def attention_output(path, layer, x):
    """transformers' own attention module of `layer` (eager, its float32 steps in float64,
    positions 0..n-1, the module's causal or sliding-window mask) applied to the tokens `x` (n, d)."""
    model = load(path)
    model.config._attn_implementation = "eager"
    attn = model.layers[layer].self_attn
    window = getattr(attn, "sliding_window", getattr(model.config, "sliding_window", None))
    n = x.shape[0]
    xt = torch.tensor(x, dtype=torch.float64)[None]
    pos = torch.arange(n)[None]
    with float64_reference(), torch.no_grad():
        cos, sin = model.rotary_emb(xt, pos)
        y = attn(xt, position_embeddings=(cos, sin), attention_mask=causal_mask(n, window))[0][0]
    return y.numpy()


def attention_map(path, layer, n):
    """transformers' own attention module of `layer` as a function of the token matrix (n, d), a
    float64 torch tensor (eager, its float32 steps in float64, positions 0..n-1, the module's
    mask), for integrating the token flow dX/dt = f(X) and differentiating it with torch."""
    model = load(path)
    model.config._attn_implementation = "eager"
    attn = model.layers[layer].self_attn
    window = getattr(attn, "sliding_window", getattr(model.config, "sliding_window", None))
    pos = torch.arange(n)[None]
    mask = causal_mask(n, window)
    with float64_reference():
        cos, sin = model.rotary_emb(torch.zeros(1, n, model.config.hidden_size, dtype=torch.float64), pos)

    def f(z):
        with float64_reference():
            return attn(z[None], position_embeddings=(cos, sin), attention_mask=mask)[0][0]
    return f


def rk4_flow(f, x, dt, steps):
    """Classical RK4 for dX/dt = f(X) in torch float64 from the NumPy tokens `x`: the states after
    each step, steps + 1 of them (NumPy)."""
    z = torch.tensor(x, dtype=torch.float64)
    out = [z.numpy().copy()]
    with torch.no_grad():
        for _ in range(steps):
            k1 = f(z)
            k2 = f(z + 0.5 * dt * k1)
            k3 = f(z + 0.5 * dt * k2)
            k4 = f(z + dt * k3)
            z = z + dt * (k1 / 6 + k2 / 3 + k3 / 3 + k4 / 6)
            out.append(z.numpy().copy())
    return out


def fastest_separation(f, x):
    """The largest eigenvalue of the symmetric part of transformers' attention Jacobian at `x` and
    its eigenvector (n, d): two flows from x separate fastest along it at t = 0."""
    xt = torch.tensor(x, dtype=torch.float64)
    j = torch.autograd.functional.jacobian(f, xt).reshape(x.size, x.size).numpy()
    w, v = np.linalg.eigh(0.5 * (j + j.T))
    return float(w[-1]), v[:, -1].reshape(x.shape)
