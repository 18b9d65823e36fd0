"""`lipattn invert`, `fixed-point` and `flow`: the JSON they print, checked against NumPy where an
independent check exists (the reconstructed tokens against the input tokens), and their errors."""
import json
import os

import numpy as np
import pytest

from cli import run, layer_norm_like


def ok_json(res):
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("kernel", ["l2", "dot"])
def test_invert_reconstructs_the_given_tokens(lipattn_bin, tmp_path, kernel):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 8))
    np.save(tmp_path / "x.npy", x)
    out = ok_json(run(lipattn_bin, "invert", "--kernel", kernel, "--d", 8, "--heads", 2, "--tokens",
                      tmp_path / "x.npy", "--save", tmp_path / "rec.npy", "--plot", tmp_path / "fig",
                      "--json"))
    for key in ["certified_lipschitz", "iterations", "residual", "reconstruction_error", "error_bound",
                "domain", "norm", "dtype", "n"]:
        assert key in out, key
    assert out["certified_lipschitz"] <= 0.9
    assert out["norm"] == "frobenius" and out["dtype"] == "f64" and out["n"] == 12
    assert out["domain"]["kind"] == ("all" if kernel == "l2" else "ball")
    rec = np.load(tmp_path / "rec.npy")
    err = np.linalg.norm(rec - x)
    assert err <= 1e-10
    assert abs(err - out["reconstruction_error"]) <= 1e-12
    assert out["reconstruction_error"] <= out["error_bound"]
    assert out["attained_local_lipschitz"] <= out["certified_lipschitz"]
    for s in out["solvers"]:
        assert s["status"] == "converged" and s["residual"] <= 1e-10
    picard = out["solvers"][0]
    assert picard["solver"] == "picard" and picard["iterations"] <= picard["a_priori_iterations"]
    assert (tmp_path / "fig" / "invert_residuals.svg").exists()
    assert (tmp_path / "fig" / "invert_residuals.png").exists()


def test_invert_logdet_exact_and_series(lipattn_bin):
    out = ok_json(run(lipattn_bin, "invert", "--n", 6, "--d", 4, "--logdet", "--logdet-series",
                      "--probes", 32, "--json"))
    ld = out["logdet"]
    err = abs(ld["series"]["estimate"] - ld["exact"]["logabsdet"])
    assert err <= ld["series"]["truncation_bound"] + 4 * ld["series"]["std_error"]
    assert ld["exact"]["sign"] == 1.0


def test_invert_refuses_bad_input(lipattn_bin, tmp_path):
    for c in ["1.0", "1.5", "0", "-0.5", "nan"]:
        res = run(lipattn_bin, "invert", f"--c={c}", "--json")
        assert res.returncode != 0 and "(0, 1)" in res.stderr, res.stderr
        assert "panicked" not in res.stderr
    res = run(lipattn_bin, "invert", "--atol", "0", "--json")
    assert res.returncode != 0 and "atol" in res.stderr
    x = np.ones((4, 8))
    x[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    res = run(lipattn_bin, "invert", "--d", 8, "--tokens", tmp_path / "nan.npy", "--json")
    assert res.returncode != 0 and "NaN" in res.stderr and "panicked" not in res.stderr
    np.save(tmp_path / "wide.npy", np.ones((4, 5)))
    res = run(lipattn_bin, "invert", "--d", 8, "--tokens", tmp_path / "wide.npy", "--json")
    assert res.returncode != 0 and "width" in res.stderr


def test_contraction_close_to_one_neither_hangs_nor_lies(lipattn_bin):
    """c = 1 - 1e-9 once spun forever in the a-priori step count (an i32 power wrapped around);
    now the count is exact (the smallest k with c^k r0 <= atol) and the run takes a moment. Within
    1e-12 of 1 the request is refused with the reason."""
    import subprocess
    c = 0.999999999
    for cmd, flag, key in [("invert", "--c", "a_priori_iterations"),
                           ("fixed-point", "--contract", "a_priori_steps")]:
        res = subprocess.run([lipattn_bin, cmd, f"{flag}={c}", "--json"], capture_output=True,
                             text=True, timeout=60)
        out = ok_json(res)
        picard = out["solvers"][0]
        assert picard["solver"] == "picard" and picard["status"] == "converged"
        k = picard[key]
        # ln(atol / r0) / ln(c) is about 2e10 for these sizes: far past 2^31.
        assert k is not None and k > 2**31, picard
        lipschitz = out.get("certified_lipschitz", out.get("certified_contraction"))
        assert lipschitz <= c
        res = subprocess.run([lipattn_bin, cmd, f"{flag}=0.9999999999999", "--json"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode != 0 and flag in res.stderr and "within 1e-12 of 1" in res.stderr
        assert "panicked" not in res.stderr


def test_invert_on_a_real_layer(lipattn_bin, minilm, tmp_path):
    x = layer_norm_like(np.random.default_rng(1), 8, 384)
    np.save(tmp_path / "x.npy", x)
    out = ok_json(run(lipattn_bin, "invert", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "x.npy",
                      "--solver", "anderson", "--json"))
    assert out["domain"]["kind"] == "ball" and out["domain"]["radius"] >= np.linalg.norm(x, axis=1).max()
    assert out["reconstruction_error"] <= 1e-10 <= 1e-10 + out["error_bound"]
    assert out["certified_lipschitz"] <= 0.9


@pytest.mark.parametrize("space,kernel", [("tokens", "l2"), ("tokens", "dot"), ("measure", "dot")])
def test_fixed_point_solvers_agree(lipattn_bin, tmp_path, space, kernel):
    out = ok_json(run(lipattn_bin, "fixed-point", "--space", space, "--kernel", kernel, "--d", 6, "--n", 10,
                      "--contract", 0.8, "--plot", tmp_path, "--json"))
    assert out["certified_contraction"] <= 0.8
    assert out["metric"] == ("w1" if space == "measure" else "frobenius")
    runs = out["solvers"]
    assert [r["solver"] for r in runs] == ["picard", "anderson", "broyden"]
    for r in runs:
        assert r["status"] == "converged"
        assert r["residual"] <= 1e-10
        assert len(r["abs_trace"]) == len(r["rel_trace"]) == r["evaluations"]
        if r["error_bound"] is not None:
            assert r["error_bound"] >= r["residual"]
    for r in runs[1:]:
        assert r["distance_to_first"] <= 1e-8
    assert (tmp_path / "fixed_point_residuals.png").exists()


def test_fixed_point_failure_is_reported_not_returned(lipattn_bin, tmp_path):
    res = run(lipattn_bin, "fixed-point", "--d", 8, "--n", 8, "--solver", "picard", "--max-iter", 2,
              "--save", tmp_path / "x.npy", "--json")
    assert res.returncode != 0
    out = json.loads(res.stdout)
    assert out["solvers"][0]["status"] == "no_convergence"
    assert "x" not in out["solvers"][0]
    assert not (tmp_path / "x.npy").exists()


def test_flow_clusters_and_respects_gronwall(lipattn_bin, tmp_path):
    out = ok_json(run(lipattn_bin, "flow", "--identity", "--beta", 1, "--n", 64, "--d", 3, "--t", 15,
                      "--project", "sphere", "--gronwall", 0.01, "--plot", tmp_path, "--json"))
    mc = [c["mean_cosine"] for c in out["clustering"]]
    assert mc[0] < 0.2 and mc[-1] > 0.99
    assert all(b >= a - 1e-9 for a, b in zip(mc, mc[1:]))
    g = out["gronwall"]
    assert not g["violated"]
    for m, b in zip(g["measured"], g["bound"]):
        assert b is None or m <= b  # JSON carries an overflowing bound as null
    for stem in ["flow_clustering", "flow_tokens", "flow_gronwall"]:
        assert (tmp_path / f"{stem}.svg").exists() and (tmp_path / f"{stem}.png").exists()


def test_flow_refuses_bad_steps(lipattn_bin):
    res = run(lipattn_bin, "flow", "--identity", "--dt", "0", "--json")
    assert res.returncode != 0 and "dt" in res.stderr and "panicked" not in res.stderr


@pytest.mark.parametrize("kernel,kind", [("l2", "all"), ("dot", "ball")])
def test_dynamics_name_the_operator_they_certify(lipattn_bin, kernel, kind):
    """Synthetic tied L2 layers are exact by construction, so certified on all of R^(n x d); the
    dot product only on a ball."""
    common = ["--kernel", kernel, "--d", 6, "--n", 5, "--seed", 2]
    inv = ok_json(run(lipattn_bin, "invert", *common, "--json"))
    op = inv["operator"]
    assert op["domain"]["kind"] == kind and op["domain"] == inv["domain"]
    assert (op["kernel"], op["mask"], op["n"], op["metric"]) == (kernel, "none", 5, "Frobenius norm")
    assert op["scale"] == inv["scale"] and op["layer"] == f"random layer (d 6, 2 heads, {kernel}, bias 0.1, seed 2)"
    fp = ok_json(run(lipattn_bin, "fixed-point", *common, "--contract", 0.5, "--json"))["operator"]
    assert fp["domain"]["kind"] == kind and fp["n"] == 5 and fp["scale"] != 1
    if kernel == "dot":
        m = ok_json(run(lipattn_bin, "fixed-point", *common, "--contract", 0.5, "--space", "measure", "--json"))
        assert m["operator"]["domain"]["kind"] == "ball" and m["operator"]["n"] is None
        assert m["operator"]["metric"] == "W1 distance"
    # The text output says it in a line of its own.
    for cmd, extra in [("invert", []), ("fixed-point", ["--contract", 0.5])]:
        r = run(lipattn_bin, cmd, *common, *extra)
        assert r.returncode == 0, r.stderr
        line = next(l for l in r.stdout.splitlines() if l.startswith("operator: "))
        assert "random layer" in line and ("all of R^d" if kind == "all" else "B_R (R = ") in line, line


def test_flow_names_the_operator_of_its_gronwall_bound(lipattn_bin):
    base = ["flow", "--identity", "--n", 8, "--d", 3, "--t", 0.5]
    assert ok_json(run(lipattn_bin, *base, "--json"))["operator"] is None
    out = ok_json(run(lipattn_bin, *base, "--gronwall", 0.01, "--json"))
    assert out["operator"]["domain"] == {"kind": "ball", "radius": out["gronwall"]["radius"]}
    r = run(lipattn_bin, *base, "--gronwall", 0.01)
    assert r.returncode == 0 and "operator: identity layer" in r.stdout, r.stderr
