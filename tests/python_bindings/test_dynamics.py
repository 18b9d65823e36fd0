"""The dynamics from Python equal `lipattn invert`, `fixed-point` and `flow` on the same seeded
synthetic layers and tokens; bad input of every kind is a ValueError, divergence a
NoConvergenceError, never a panic."""
import json

import lipattn
import numpy as np
import pytest
from cli import run

SOLVERS = ["picard", "anderson", "broyden"]


def cli_json(bin_, *args):
    r = run(bin_, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def strip(d, *extra):
    return {k: v for k, v in d.items() if k not in ("seconds", "x", "states") + extra}


def synthetic(d, heads, kernel, seed, n):
    """The CLI's --d/--heads/--kernel/--seed/--n layer and tokens."""
    return lipattn.random_layer(d, heads, kernel=kernel, bias=0.1, seed=seed), lipattn.random_tokens(n, d, seed=seed + 1)


@pytest.mark.parametrize("kernel", ["l2", "dot"])
def test_invert_equals_cli(lipattn_bin, kernel):
    ref = cli_json(lipattn_bin, "invert", "--d", 8, "--heads", 2, "--kernel", kernel, "--seed", 3, "--n", 6, "--c", 0.8,
                   "--logdet", "--logdet-series", "--probes", 4)
    layer, x = synthetic(8, 2, kernel, 3, 6)
    block = lipattn.InvertibleBlock.for_tokens(layer, x, 0.8)
    assert block.certified_lipschitz == ref["certified_lipschitz"] <= 0.8
    assert block.scale == ref["scale"] and block.n == ref["n"] and block.d == ref["d"]
    assert block.certificate["domain"] == ref["domain"]
    assert block.certificate["source"] == ref["certified_lipschitz_source"]
    # One operator in both frontends: the same layer, scale and domain, named the same way.
    assert block.operator == ref["operator"]
    assert block.operator["domain"] == ref["domain"] and block.operator["scale"] == ref["scale"]
    y = block.forward(x)
    for name, entry in zip(SOLVERS, ref["solvers"]):
        got = block.inverse(y, solver=name, x_true=x)
        assert strip(got) == strip(entry), name
        assert got["x"].shape == (6, 8)
        assert np.linalg.norm(got["x"] - x) == got["reconstruction_error"] <= got["error_bound"]
        # The solver measures |y - g(x) - x|, residual() |x + g(x) - y|: equal up to rounding.
        np.testing.assert_allclose(block.residual(got["x"], y), got["residual"], rtol=1e-4, atol=1e-15)
    assert block.logdet(x) == ref["logdet"]["exact"]
    assert block.logdet(x, method="series", probes=4, seed=3) == ref["logdet"]["series"]
    np.testing.assert_allclose(block.g.local_constant(x).sigma, ref["attained_local_lipschitz"], rtol=1e-12)


def test_inverse_of_explicit_block_matches_numpy():
    layer, x = synthetic(6, 2, "l2", 9, 5)
    block = lipattn.InvertibleBlock(layer, 5, 0.5)
    y = block.forward(x)
    np.testing.assert_allclose(y, x + block.g.forward(x), rtol=0, atol=1e-14)
    got = block.inverse(y, solver="picard", atol=1e-12)
    assert got["status"] == "converged" and got["solver"] == "picard"
    assert got["iterations"] <= got["a_priori_iterations"]
    assert len(got["abs_trace"]) == got["iterations"] + 1 and got["abs_trace"][-1] <= 1e-12
    np.testing.assert_allclose(got["x"], x, atol=1e-11)
    dot = lipattn.InvertibleBlock(lipattn.random_layer(6, 2, kernel="dot", seed=1), 5, 0.5, radius=4.0)
    assert dot.certificate["domain"] == {"kind": "ball", "radius": 4.0}


FIXED_POINT_CASES = [
    (["--kernel", "l2", "--contract", 0.6], dict(contract=0.6), "l2"),
    (["--kernel", "dot", "--contract", 0.5, "--variant", "damped", "--beta", 0.7], dict(contract=0.5, variant="damped", beta=0.7), "dot"),
    (["--kernel", "l2", "--contract", 0.5, "--variant", "injected"], dict(contract=0.5, variant="injected"), "l2"),
    (["--kernel", "dot", "--contract", 0.5, "--space", "measure"], dict(contract=0.5, space="measure"), "dot"),
]


@pytest.mark.parametrize("cli_args,kwargs,kernel", FIXED_POINT_CASES)
def test_fixed_point_equals_cli(lipattn_bin, cli_args, kwargs, kernel):
    ref = cli_json(lipattn_bin, "fixed-point", "--d", 6, "--heads", 2, "--seed", 5, "--n", 5, *cli_args)
    layer, x = synthetic(6, 2, kernel, 5, 5)
    first = None
    for name, entry in zip(SOLVERS, ref["solvers"]):
        got = lipattn.fixed_point(layer, x, solver=name, **kwargs)
        for k in ["operator", "space", "variant", "metric", "dtype", "n", "d", "scale", "certified_contraction",
                  "layer_certificate", "notes"]:
            assert got[k] == ref[k], k
        assert strip(got, "operator", "space", "variant", "metric", "dtype", "n", "d", "scale",
                     "certified_contraction", "layer_certificate", "notes") == strip(entry, "distance_to_first"), name
        assert got["x"].shape == (5, 6)
        if first is None:
            first = got["x"]
        else:
            np.testing.assert_allclose(np.linalg.norm(got["x"] - first), entry["distance_to_first"], rtol=1e-12)
    assert ref["certified_contraction"] is not None and ref["certified_contraction"] <= kwargs["contract"]


def test_fixed_point_is_a_fixed_point():
    layer, x = synthetic(6, 2, "l2", 5, 5)
    got = lipattn.fixed_point(layer, x, contract=0.5, atol=1e-12)
    scaled = lipattn.InvertibleBlock(layer, 5, 0.5).g  # same direction, other scale: only shapes shared
    assert scaled.d_in == 6
    f = lipattn.AttentionLayer(**{k: v * (got["scale"] if k in ("wo", "bo") else 1.0) for k, v in layer.weights().items()},
                               heads=layer.heads, kernel="l2")
    assert np.linalg.norm(f.forward(got["x"]) - got["x"]) <= 1e-11
    assert got["error_bound"] is not None and got["residual"] <= 1e-12


def test_divergence_raises_no_convergence_error():
    layer, x = synthetic(6, 2, "l2", 5, 5)
    with pytest.raises(lipattn.NoConvergenceError, match="no convergence") as e:
        lipattn.fixed_point(layer, x, solver="picard", max_iter=2)
    err = e.value
    assert isinstance(err, RuntimeError)
    assert err.solver == "picard" and "iteration limit" in err.reason and err.steps == 2
    assert len(err.residuals) == 3 and err.best_residual == min(err.residuals) and 0 <= err.best_step <= 2
    big = lipattn.AttentionLayer(**{k: v * (40.0 if k == "wo" else 1.0) for k, v in layer.weights().items()},
                                 heads=layer.heads, kernel="l2")
    with pytest.raises(lipattn.NoConvergenceError, match="diverging|non-finite|iteration limit"):
        lipattn.fixed_point(big, x, solver="picard", max_iter=200)


@pytest.mark.parametrize("cli_args,kwargs", [
    (["--kernel", "dot", "--d", 3, "--heads", 1, "--t", 2, "--dt", 0.1, "--gronwall", 0.05],
     dict(t=2.0, dt=0.1, gronwall=0.05)),
    (["--kernel", "dot", "--d", 4, "--heads", 2, "--t", 1.5, "--integrator", "dopri", "--project", "none", "--record", 0.25],
     dict(t=1.5, integrator="dopri", projection="none", record=0.25)),
    (["--kernel", "l2", "--d", 4, "--heads", 2, "--t", 1, "--integrator", "dopri-fixed", "--project", "layernorm", "--dt", 0.05],
     dict(t=1.0, integrator="dopri-fixed", projection="layernorm", dt=0.05)),
])
def test_flow_equals_cli(lipattn_bin, tmp_path, cli_args, kwargs):
    kernel = cli_args[1]
    d, heads = cli_args[3], cli_args[5]
    layer, x = synthetic(d, heads, kernel, 2, 8)
    np.save(tmp_path / "x.npy", x)
    ref = cli_json(lipattn_bin, "flow", "--seed", 2, "--tokens", tmp_path / "x.npy", *cli_args)
    got = lipattn.flow(layer, x, seed=2, **kwargs)
    ref = {k: v for k, v in ref.items() if k not in ("command", "layer", "mean_field")}
    assert strip(got) == ref
    states = got["states"]
    assert states.shape == (len(got["times"]), 8, d)
    assert [lipattn.clustering(s) for s in states] == got["clustering"]
    if kwargs.get("projection", "sphere") == "sphere":
        np.testing.assert_allclose(np.linalg.norm(states[-1], axis=1), 1.0, atol=1e-12)
    if "gronwall" in kwargs:
        g = got["gronwall"]
        assert not g["violated"] and all(m <= b for m, b in zip(g["measured"], g["bound"]))


def test_identity_flow_and_mean_field_equal_cli(lipattn_bin):
    args = ["--identity", "--d", 3, "--n", 12, "--seed", 4, "--beta", 2, "--t", 1, "--dt", 0.1,
            "--mean-field", "4,8", "--mean-field-reference", 16, "--mean-field-replicates", 2]
    ref = cli_json(lipattn_bin, "flow", *args)
    layer = lipattn.identity_layer(3, 2.0)
    x0 = lipattn.sphere_sample(12, 3, seed=5)
    got = lipattn.flow(layer, x0, t=1.0, dt=0.1)
    assert got["times"] == ref["times"] and got["clustering"] == ref["clustering"] and got["steps"] == ref["steps"]
    mf = lipattn.mean_field(layer, [4, 8], reference=16, replicates=2, seed=4 + 11, t=1.0, dt=0.1)
    assert mf == ref["mean_field"]


# ---- bad inputs ----

L2, X = synthetic(6, 2, "l2", 1, 5)
DOT = lipattn.random_layer(6, 2, kernel="dot", seed=1)
BLOCK = lipattn.InvertibleBlock(L2, 5, 0.9)
Y = BLOCK.forward(X)


def nan_at(a, i):
    a = np.array(a, dtype=float)
    a.flat[i] = np.nan
    return a


BAD = [
    (lambda: lipattn.InvertibleBlock(L2, 5, 1.0), "contraction constant c"),
    (lambda: lipattn.InvertibleBlock(L2, 5, 1.5), "contraction constant c"),
    (lambda: lipattn.InvertibleBlock(L2, 5, 0.0), "contraction constant c"),
    (lambda: lipattn.InvertibleBlock(L2, 5, float("nan")), "contraction constant c"),
    (lambda: lipattn.InvertibleBlock(L2, 0, 0.9), "n must be at least 1"),
    (lambda: lipattn.InvertibleBlock(L2, 5, 0.9, radius=2.0), "give no radius"),
    (lambda: lipattn.InvertibleBlock(DOT, 5, 0.9), "give a radius"),
    (lambda: lipattn.InvertibleBlock.for_tokens(L2, X, 0.9, radius=2.0), "radius does not apply: this tied L2 layer.s W_V = U W_Q is exact"),
    (lambda: lipattn.InvertibleBlock.for_tokens(DOT, nan_at(X, 3), 0.9), "NaN"),
    (lambda: BLOCK.forward(nan_at(X, 0)), "NaN"),
    (lambda: BLOCK.forward(np.zeros((5, 4))), "width"),
    (lambda: BLOCK.forward(np.zeros(6)), "2-D"),
    (lambda: BLOCK.residual(X, np.zeros((5, 4))), "shape"),
    (lambda: BLOCK.inverse(nan_at(Y, 7)), "NaN"),
    (lambda: BLOCK.inverse(Y[:4]), "shape"),
    (lambda: BLOCK.inverse(Y, atol=0.0), "atol"),
    (lambda: BLOCK.inverse(Y, atol=-1e-3), "atol"),
    (lambda: BLOCK.inverse(Y, atol=float("nan")), "atol"),
    (lambda: BLOCK.inverse(Y, solver="newton"), "unknown solver"),
    (lambda: BLOCK.inverse(Y, anderson_memory=0), "memory"),
    (lambda: BLOCK.inverse(Y, anderson_mixing=1.5), "mixing"),
    (lambda: BLOCK.inverse(Y, solver="broyden", broyden_memory=0), "memory"),
    (lambda: BLOCK.inverse(Y, x_true=X[:3]), "x_true"),
    (lambda: BLOCK.logdet(X, method="series", probes=1), "probes"),
    (lambda: BLOCK.logdet(X, method="series", truncation_tol=0.0), "truncation tolerance"),
    (lambda: BLOCK.logdet(X, method="cholesky"), "unknown log-determinant"),
    (lambda: BLOCK.logdet(nan_at(X, 2)), "NaN"),
    (lambda: lipattn.fixed_point(L2, nan_at(X, 1)), "NaN"),
    (lambda: lipattn.fixed_point(DOT, nan_at(X, 1)), "NaN"),
    (lambda: lipattn.fixed_point(L2, np.zeros((5, 4))), "shape|width"),
    (lambda: lipattn.fixed_point(L2, X, atol=0.0), "atol"),
    (lambda: lipattn.fixed_point(L2, X, rtol=-1.0), "rtol"),
    (lambda: lipattn.fixed_point(L2, X, variant="damped", beta=0.0), "beta"),
    (lambda: lipattn.fixed_point(L2, X, variant="sideways"), "unknown variant"),
    (lambda: lipattn.fixed_point(L2, X, space="hilbert"), "unknown space"),
    (lambda: lipattn.fixed_point(L2, X, contract=1.0), "contract must lie in"),
    (lambda: lipattn.fixed_point(L2, X, radius=-1.0), "radius"),
    (lambda: lipattn.fixed_point(DOT, X, space="measure", variant="damped"), "variant 'plain'"),
    (lambda: lipattn.fixed_point(DOT, X, space="measure", weights=np.full(5, 0.3)), "sum to"),
    (lambda: lipattn.fixed_point(DOT, X, space="measure", weights=np.full(4, 0.25)), "weights: expected 5 entries"),
    (lambda: lipattn.fixed_point(L2, X, weights=np.full(5, 0.2)), "space 'measure' only"),
    (lambda: lipattn.fixed_point(L2, X, variant="injected", input=np.zeros((4, 6))), "injected input U"),
    (lambda: lipattn.fixed_point(L2, X, input=X), "variant 'injected' only"),
    (lambda: lipattn.flow(DOT, X, dt=0.0), "time step dt"),
    (lambda: lipattn.flow(DOT, X, dt=-0.1), "time step dt"),
    (lambda: lipattn.flow(DOT, X, t=-1.0), "final time"),
    (lambda: lipattn.flow(DOT, X, t=float("inf")), "final time"),
    (lambda: lipattn.flow(DOT, X, record=0.0), "record interval"),
    (lambda: lipattn.flow(DOT, X, integrator="dopri", rtol=0.0), "rtol"),
    (lambda: lipattn.flow(DOT, X, integrator="euler"), "unknown integrator"),
    (lambda: lipattn.flow(DOT, X, projection="torus"), "unknown projection"),
    (lambda: lipattn.flow(DOT, X, max_steps=0), "max_steps"),
    (lambda: lipattn.flow(DOT, nan_at(X, 5)), "NaN"),
    (lambda: lipattn.flow(DOT, np.zeros((5, 4))), "width"),
    (lambda: lipattn.flow(DOT, np.zeros((0, 6))), "empty"),
    (lambda: lipattn.flow(DOT, X, gronwall=0.0), "perturbation size"),
    (lambda: lipattn.flow(DOT, X, gronwall=np.ones((5, 4))), "shape|width"),
    (lambda: lipattn.flow(L2, X, t=0.5, gronwall=0.1), "no certified Gronwall constant"),
    (lambda: lipattn.flow(DOT, X, weights=np.full(5, 0.3)), "sum to"),
    (lambda: lipattn.flow(DOT, X, cluster_threshold=-1.0), "cluster_threshold"),
    (lambda: lipattn.mean_field(DOT, [4], reference=8), "mean field"),
    (lambda: lipattn.mean_field(DOT, [4, 16], reference=8), "mean field"),
    (lambda: lipattn.mean_field(DOT, [2, 4], reference=8, replicates=0), "replicates"),
    (lambda: lipattn.random_layer(0, 2), "at least 1"),
    (lambda: lipattn.random_layer(4, 2, kernel="cosine"), "unknown kernel"),
    (lambda: lipattn.random_layer(4, 2, bias=-1.0), "bias"),
    (lambda: lipattn.random_tokens(0, 3), "at least 1"),
    (lambda: lipattn.random_tokens(3, 3, scale=0.0), "scale"),
    (lambda: lipattn.identity_layer(3, beta=-1.0), "beta"),
    (lambda: lipattn.sphere_sample(0, 3), "at least 1"),
    (lambda: lipattn.clustering(nan_at(X, 0)), "NaN"),
]


@pytest.mark.parametrize("call,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_dynamics_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_non_square_layer_is_rejected():
    rng = np.random.default_rng(0)
    w = dict(wq=rng.standard_normal((4, 3)), bq=np.zeros(4), wk=rng.standard_normal((4, 3)), bk=np.zeros(4),
             wv=rng.standard_normal((4, 3)), bv=np.zeros(4), wo=rng.standard_normal((5, 4)), bo=np.zeros(5))
    layer = lipattn.AttentionLayer(**w, heads=2)
    x = rng.standard_normal((4, 3))
    for call in [lambda: lipattn.InvertibleBlock(layer, 4, 0.5, radius=2.0), lambda: lipattn.fixed_point(layer, x),
                 lambda: lipattn.flow(layer, x, t=0.1)]:
        with pytest.raises(ValueError, match="output width"):
            call()


# ---- the operator each result certifies ----

@pytest.mark.parametrize("kernel,kind", [("l2", "all"), ("dot", "ball")])
def test_dynamics_results_name_their_operator(kernel, kind):
    layer, x = synthetic(6, 2, kernel, 5, 5)
    inv = lipattn.invert(layer, x, c=0.8)
    op = inv["operator"]
    assert op["domain"]["kind"] == kind and op["domain"] == inv["domain"]
    assert (op["mask"], op["n"], op["metric"], op["kernel"]) == ("none", 5, "Frobenius norm", kernel)
    assert op["scale"] == inv["scale"] and op["layer"].startswith("random layer (d 6, 2 heads")
    assert "scaled by s = " in op["description"]
    fp = lipattn.fixed_point(layer, x, contract=0.5)["operator"]
    assert fp["domain"]["kind"] == kind and fp["n"] == 5 and fp["metric"] == "Frobenius norm"
    if kernel == "dot":
        m = lipattn.fixed_point(layer, x, space="measure", contract=0.5)["operator"]
        assert m["domain"]["kind"] == "ball" and m["n"] is None and m["metric"] == "W1 distance"
        assert m["map"].startswith("measure map")


def test_flow_names_its_operator_only_with_a_certified_bound():
    layer = lipattn.identity_layer(3, 1.0)
    x0 = lipattn.sphere_sample(8, 3, seed=1)
    assert lipattn.flow(layer, x0, t=0.5, dt=0.1)["operator"] is None
    got = lipattn.flow(layer, x0, t=0.5, dt=0.1, gronwall=0.01)
    op = got["operator"]
    assert op["domain"] == {"kind": "ball", "radius": got["gronwall"]["radius"]}
    assert op["map"].startswith("flow") and op["metric"] == "W1 distance"
    assert op["layer"] == "identity layer Q = K = V = I (d 3, beta 1)"
