"""A checkpoint's score scale (GPT-2's scale_attn_weights, scale_attn_by_inverse_layer_idx)
reaches the Python layer, which then computes transformers' own attention sublayer, and survives
a rebuild from its weights when passed back (docs/models.md#config-keys)."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch  # noqa: E402
import transformers  # noqa: E402

import lipattn  # noqa: E402

D, HEADS, LAYERS = 16, 4, 3


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2-scale")
    config = transformers.GPT2Config(vocab_size=8, n_positions=8, n_embd=D, n_layer=LAYERS, n_head=HEADS,
                                     scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True)
    config._attn_implementation = "eager"
    model = transformers.GPT2Model(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    return path, model.eval().double()


@pytest.mark.parametrize("layer", range(LAYERS))
def test_from_model_computes_transformers_attention(gpt2, layer):
    path, model = gpt2
    att = lipattn.AttentionLayer.from_model(path, layer)
    # No 1/sqrt(dk); the scores of block l divided by l + 1 = 1/sqrt((l + 1)^2).
    assert att.score_divisor_sq == (layer + 1) ** 2
    x = np.random.default_rng(layer).standard_normal((6, D))
    # The sublayer alone gets no mask from the model, so it is handed GPT-2's causal one.
    mask = torch.full((6, 6), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    with torch.no_grad():
        ref = model.h[layer].attn(torch.tensor(x[None]), attention_mask=mask)[0][0].numpy()
    y = att.forward(x)
    assert np.linalg.norm(y - ref) < 1e-10 * np.linalg.norm(ref)

    copy = lipattn.AttentionLayer(**att.weights(), heads=HEADS, causal=True, score_divisor_sq=att.score_divisor_sq)
    np.testing.assert_array_equal(copy.forward(x), y)
    # Without it the copy is the standard 1/sqrt(dk) layer: a different function, except in
    # block 1, where (l + 1)^2 = 4 = dk.
    plain = lipattn.AttentionLayer(**att.weights(), heads=HEADS, causal=True)
    assert plain.score_divisor_sq == D // HEADS
    if att.score_divisor_sq != D // HEADS:
        assert np.linalg.norm(plain.forward(x) - ref) > 1e-3 * np.linalg.norm(ref)


def test_a_zero_divisor_is_refused():
    rng = np.random.default_rng(0)
    w = {k: rng.standard_normal((4, 4)) for k in ("wq", "wk", "wv", "wo")}
    w.update({k: np.zeros(4) for k in ("bq", "bk", "bv", "bo")})
    with pytest.raises(ValueError, match="divisor"):
        lipattn.AttentionLayer(**w, heads=1, score_divisor_sq=0)
