"""`AttentionLayer.local_constant(attention=...)` and the shared (zero-copy) input of the local
constant (docs/streaming.md#python): dense and streaming states give the same sigma, the result
says which ran, a bad name is a ValueError naming `attention`; C- and Fortran-contiguous
float32/float64 arrays are read where they lie (no input copy, `lipattn._lipattn._input_copies`),
other inputs are copied once, and both give the same value."""
import numpy as np
import pytest

import lipattn
from lipattn import _lipattn

RNG = np.random.default_rng(19)
D, HEADS, DK = 16, 2, 8
LAYER = lipattn.AttentionLayer(
    wq=0.3 * RNG.standard_normal((HEADS * DK, D)), bq=np.zeros(HEADS * DK),
    wk=0.3 * RNG.standard_normal((HEADS * DK, D)), bk=np.zeros(HEADS * DK),
    wv=0.3 * RNG.standard_normal((HEADS * DK, D)), bv=np.zeros(HEADS * DK),
    wo=0.3 * RNG.standard_normal((D, HEADS * DK)), bo=np.zeros(D), heads=HEADS)
X = RNG.standard_normal((300, D))


@pytest.mark.parametrize("causal", [False, True])
def test_dense_and_streaming_agree_and_say_which_ran(causal):
    r = {a: LAYER.local_constant(X, tol=1e-10, causal=causal, attention=a) for a in ("dense", "streaming", "auto")}
    assert {a: v.to_dict()["attention"] for a, v in r.items()} == {"dense": "dense", "streaming": "streaming",
                                                                    "auto": "dense"}
    assert r["streaming"].sigma == pytest.approx(r["dense"].sigma, rel=1e-9, abs=0)
    assert r["auto"].sigma == r["dense"].sigma


def test_auto_streams_when_the_budget_refuses_the_dense_state():
    x = RNG.standard_normal((1500, D))  # dense state: 2 x 2 heads x 1500^2 f64 = 72 MB
    lipattn.set_max_memory(32 << 20)
    try:
        with pytest.raises(MemoryError, match="attention of 1500 queries over 1500 tokens with 2 heads"):
            LAYER.local_constant(x, tol=1e-8, attention="dense")
        auto = LAYER.local_constant(x, tol=1e-8)
    finally:
        lipattn.set_max_memory(None)
    assert auto.to_dict()["attention"] == "streaming"
    dense = LAYER.local_constant(x, tol=1e-8, attention="dense")
    assert auto.sigma == pytest.approx(dense.sigma, rel=1e-7, abs=0)


def test_bad_attention_is_named():
    with pytest.raises(ValueError, match="attention"):
        LAYER.local_constant(X, attention="sparse")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_contiguous_inputs_are_not_copied(dtype, order):
    x = np.asarray(X[:64], dtype=dtype, order=order)
    before = _lipattn._input_copies()
    shared = LAYER.local_constant(x, tol=1e-10)
    assert _lipattn._input_copies() == before, "a contiguous array must be read where it lies"
    # A strided view is copied once (the counter proves the counter counts), with the same result.
    wide = np.zeros((64, 2 * D), dtype=dtype)
    wide[:, ::2] = x
    copied = LAYER.local_constant(wide[:, ::2], tol=1e-10)
    assert _lipattn._input_copies() == before + 1
    assert shared.sigma == copied.sigma
    assert shared.dtype == ("f32" if dtype == np.float32 else "f64")
    np.testing.assert_array_equal(shared.vector, copied.vector)


def test_a_large_float32_array_goes_in_without_a_copy():
    """32,768 x 384 float32, C order (50 MB): no input copy; a one-head layer of width 384 reads it (one
    Lanczos step on the streaming state, causal)."""
    d = 384
    rng = np.random.default_rng(3)
    layer = lipattn.AttentionLayer(
        wq=0.05 * rng.standard_normal((2, d)), bq=np.zeros(2), wk=0.05 * rng.standard_normal((2, d)), bk=np.zeros(2),
        wv=0.05 * rng.standard_normal((2, d)), bv=np.zeros(2), wo=0.05 * rng.standard_normal((d, 2)), bo=np.zeros(d),
        heads=1)
    x = rng.standard_normal((32_768, d), dtype=np.float32)
    assert x.flags.c_contiguous
    before = _lipattn._input_copies()
    r = layer.local_constant(x, max_iter=1, causal=True, attention="streaming")
    assert _lipattn._input_copies() == before
    assert r.n == 32_768 and r.d == d and r.dtype == "f32" and np.isfinite(r.sigma) and r.sigma > 0


def test_model_local_constant_and_certify_on_either_state(minilm):
    """`Model.local_constant(attention=...)` and `Model.certify(attention=...)` on MiniLM: the
    streaming state gives the dense value, and the result says which ran."""
    model = lipattn.Model(minilm)
    x = np.random.default_rng(3).standard_normal((64, model.hidden_size))
    r = {a: model.local_constant(1, x, tol=1e-10, attention=a) for a in ("dense", "streaming", "auto")}
    assert {a: v.to_dict()["attention"] for a, v in r.items()} == {"dense": "dense", "streaming": "streaming",
                                                                    "auto": "dense"}
    assert r["streaming"].sigma == pytest.approx(r["dense"].sigma, rel=1e-9, abs=0)
    kw = dict(x=x, upper_steps=40, attack_starts=1, attack_steps=3, tol=1e-10)
    c = {a: model.certify(1, 1e-3, attention=a, **kw) for a in ("dense", "streaming")}
    assert c["dense"]["attention"] == "dense" and c["streaming"]["attention"] == "streaming"
    for key in ("certified", "attained", "output_change"):
        assert c["streaming"][key] == pytest.approx(c["dense"][key], rel=1e-9, abs=0)
    with pytest.raises(ValueError, match="attention"):
        model.local_constant(1, x, attention="sparse")
    with pytest.raises(ValueError, match="attention"):
        model.certify(0, 1e-3, x=x, scope="block", attention="sparse")


def test_model_scopes_on_either_state(minilm):
    """`Model.scope_local_constant(attention=...)` and `Model.certify(scope="block", attention=...)`
    on MiniLM block 1 (docs/streaming.md#blocks-and-models): the streaming chain gives the dense
    values, and the dicts say which ran."""
    model = lipattn.Model(minilm)
    x = np.random.default_rng(4).standard_normal((40, model.hidden_size))
    r = {a: model.scope_local_constant("block", x, layer=1, tol=1e-10, attention=a)
         for a in ("dense", "streaming", "auto")}
    assert {a: v["attention"] for a, v in r.items()} == {"dense": "dense", "streaming": "streaming",
                                                          "auto": "dense"}
    assert r["streaming"]["sigma"] == pytest.approx(r["dense"]["sigma"], rel=1e-9, abs=0)
    kw = dict(x=x, scope="block", upper_steps=30, interval_steps=10, attack_starts=1, attack_steps=2,
              tol=1e-8)
    c = {a: model.certify(1, 1e-3, attention=a, **kw) for a in ("dense", "streaming")}
    assert c["dense"]["attention"] == "dense" and c["streaming"]["attention"] == "streaming"
    for key in ("certified", "attained", "output_change"):
        assert c["streaming"][key] == pytest.approx(c["dense"][key], rel=1e-9, abs=0)
    with pytest.raises(ValueError, match="attention"):
        model.scope_local_constant("block", x, layer=1, attention="sparse")


def test_rotary_local_constant_on_either_state(tmp_path):
    """`RotaryLayer.local_constant(attention=...)`, as `Model.local_constant`'s: on a tiny Llama
    (grouped-query heads) the streaming state gives the dense value, for the sublayer and for one
    head's contribution, and the result says which ran."""
    import tiny_llama

    tiny_llama.write(tmp_path)
    model = lipattn.Model(tmp_path)
    x = np.random.default_rng(5).standard_normal((20, tiny_llama.D))
    for head in (None, 1):
        rl = model.attention_layer(0, head=head)
        r = {a: rl.local_constant(x, tol=1e-10, attention=a) for a in ("dense", "streaming", "auto")}
        assert {a: v.to_dict()["attention"] for a, v in r.items()} == {"dense": "dense", "streaming": "streaming",
                                                                        "auto": "dense"}
        assert r["streaming"].sigma == pytest.approx(r["dense"].sigma, rel=1e-9, abs=0)
        m = model.local_constant(0, x, head=head, tol=1e-10, attention="streaming")
        assert m.sigma == r["streaming"].sigma
    with pytest.raises(ValueError, match=r"\battention\b.*sparse"):
        model.attention_layer(0).local_constant(x, attention="sparse")
