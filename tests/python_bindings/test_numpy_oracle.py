"""Forward, JVP and VJP against NumPy, in both dtypes and for arrays of any layout."""
import lipattn
import numpy as np
import pytest
from safetensors_np import attention


def weights(rng, d=6, heads=2, dk=3, dv=4, d_out=5):
    g = lambda *s: rng.standard_normal(s) * 0.5
    return dict(wq=g(heads * dk, d), bq=g(heads * dk), wk=g(heads * dk, d), bk=g(heads * dk),
                wv=g(heads * dv, d), bv=g(heads * dv), wo=g(d_out, heads * dv), bo=g(d_out))


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    w = weights(rng)
    return rng, w, lipattn.AttentionLayer(**w, heads=2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_equals_numpy(setup, causal, weighted):
    rng, w, layer = setup
    x = rng.standard_normal((9, 6))
    cw = None
    if weighted:
        cw = rng.uniform(0.1, 1, 9)
        cw /= cw.sum()
    ref = attention(x, w["wq"], w["bq"], w["wk"], w["bk"], w["wv"], w["bv"], w["wo"], w["bo"], 2, cw, causal)
    np.testing.assert_allclose(layer.forward(x, weights=cw, causal=causal), ref, rtol=1e-12, atol=1e-13)
    y32 = layer.forward(x.astype(np.float32), weights=cw, causal=causal)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref, rtol=1e-4, atol=1e-5)


def test_layouts_and_array_likes_agree(setup):
    rng, w, layer = setup
    base = rng.standard_normal((8, 12))
    x = np.ascontiguousarray(base[:, ::2])
    ref = layer.forward(x)
    for variant in [np.asfortranarray(x), base[:, ::2], x[::-1][::-1], x.tolist()]:
        np.testing.assert_array_equal(layer.forward(variant), ref)
    np.testing.assert_array_equal(layer.forward(np.rint(x * 4).astype(np.int64)), layer.forward(np.rint(x * 4)))

    class TensorLike:
        """What a CPU torch tensor offers numpy (tensor.numpy() or __array__)."""

        def __array__(self, dtype=None, copy=None):
            return x

    np.testing.assert_array_equal(layer.forward(TensorLike()), ref)


def test_layer_from_arrays_matches_weights_dict(setup):
    _, w, layer = setup
    got = layer.weights()
    for k, v in w.items():
        np.testing.assert_array_equal(got[k], v)
    assert (layer.heads, layer.dk, layer.dv, layer.d_in, layer.d_out, layer.kernel) == (2, 3, 4, 6, 5, "dot")


def fd_jacobian(layer, x, causal, eps=1e-6):
    n, d = x.shape
    cols = []
    for k in range(n * d):
        e = np.zeros(n * d)
        e[k] = eps
        e = e.reshape(n, d)
        cols.append(((layer.forward(x + e, causal=causal) - layer.forward(x - e, causal=causal)) / (2 * eps)).ravel())
    return np.array(cols).T


@pytest.mark.parametrize("kernel", ["dot", "l2"])
@pytest.mark.parametrize("causal", [False, True])
def test_jvp_vjp_against_finite_differences(setup, kernel, causal):
    rng, w, _ = setup
    layer = lipattn.AttentionLayer(**w, heads=2, kernel=kernel)
    x = rng.standard_normal((5, 6))
    lin = layer.linearize(x, causal=causal)
    assert (lin.n, lin.d_in, lin.d_out, lin.causal, lin.dtype) == (5, 6, 5, causal, "float64")
    np.testing.assert_array_equal(lin.output, layer.forward(x, causal=causal))
    J = fd_jacobian(layer, x, causal)
    for _ in range(3):  # one linearisation, many products
        g, ybar = rng.standard_normal((5, 6)), rng.standard_normal((5, 5))
        np.testing.assert_allclose(lin.jvp(g).ravel(), J @ g.ravel(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(lin.vjp(ybar).ravel(), J.T @ ybar.ravel(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(layer.jvp(x, g, causal=causal), lin.jvp(g))
    np.testing.assert_array_equal(layer.vjp(x, ybar, causal=causal), lin.vjp(ybar))
    sigma = np.linalg.norm(J, 2)
    np.testing.assert_allclose(lin.top_singular(tol=1e-10).sigma, sigma, rtol=1e-6)
    np.testing.assert_allclose(layer.local_constant(x, causal=causal, tol=1e-10).sigma, sigma, rtol=1e-6)


def test_float32_linearization(setup):
    rng, _, layer = setup
    x = rng.standard_normal((6, 6))
    l32, l64 = layer.linearize(x.astype(np.float32)), layer.linearize(x)
    g = rng.standard_normal((6, 6))
    assert l32.dtype == "float32" and l32.jvp(g).dtype == np.float32
    np.testing.assert_allclose(l32.jvp(g), l64.jvp(g), rtol=1e-3, atol=1e-4)
    r = layer.local_constant(x.astype(np.float32))
    assert r.dtype == "f32" and r.vector.dtype == np.float32
    np.testing.assert_allclose(r.sigma, layer.local_constant(x).sigma, rtol=1e-4)


def test_local_constant_fields(setup):
    rng, _, layer = setup
    x = rng.standard_normal((7, 6))
    r = layer.local_constant(x, tol=1e-9)
    assert r.converged and r.iterations == len(r.history) and r.seconds > 0
    assert r.vector.shape == (7, 6) and r.left.shape == (7, 5)
    np.testing.assert_allclose(np.linalg.norm(r.vector), 1, rtol=1e-12)
    # sigma is attained by the returned vector.
    np.testing.assert_allclose(np.linalg.norm(layer.jvp(x, r.vector)), r.sigma, rtol=1e-10)
    np.testing.assert_allclose(r.radius, np.linalg.norm(x, axis=1).max())
    assert float(r) == r.sigma


def test_measures_and_attention_on_measures(setup):
    rng, w, layer = setup
    x = rng.standard_normal((4, 6))
    wts = np.array([0.1, 0.2, 0.3, 0.4])
    mu = lipattn.Measure(x, wts)
    f = layer.self_attention(mu)
    np.testing.assert_allclose(f.points, layer.forward(x, weights=wts), rtol=1e-14)
    np.testing.assert_array_equal(f.weights, wts)
    nu = lipattn.Measure.uniform(rng.standard_normal((3, 6)))
    np.testing.assert_allclose(layer.cross_attention(mu, nu).points, layer.gamma(x, nu.points), rtol=1e-14)
    m = lipattn.Measure.normalised(np.vstack([x[:1], x[:1], x[1:2]]), [1, 1, 2])
    np.testing.assert_allclose(m.weights, [0.25, 0.25, 0.5])
    merged = m.merge_duplicates()
    assert len(merged) == 2 and merged.dim == 6
    np.testing.assert_allclose(merged.weights, [0.5, 0.5])
    p = layer.probabilities(1, x)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-14)
    assert layer.scores(0, x).shape == (4, 4)
    jq = layer.query_jacobian(x[0], mu)
    assert jq.shape == (5, 6)
