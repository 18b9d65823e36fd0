"""lipattn transport (the release CLI) against POT: ot.emd2 for exact transport, ot.sinkhorn2 for
entropic transport, on random instances with n, m up to 2000 and d in {1, 2, 16, 384}."""

import json
import os
import subprocess

import numpy as np
import ot
import pytest

BIN = os.environ["LIPATTN_BIN"]


def run_cli(tmp_path, x, y, *extra, wa=None, wb=None, expect_ok=True):
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", y)
    args = [BIN, "transport", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--json", *extra]
    if wa is not None:
        np.save(tmp_path / "wa.npy", wa)
        args += ["--wa", str(tmp_path / "wa.npy")]
    if wb is not None:
        np.save(tmp_path / "wb.npy", wb)
        args += ["--wb", str(tmp_path / "wb.npy")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if not expect_ok:
        return out
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def cost_matrix(x, y, p):
    """||x_i - y_j||^p accurately: coordinate differences for small d, Gram matrix for large d
    (no near-duplicate pairs among Gaussian samples in d = 384, so no cancellation)."""
    if x.shape[1] <= 16:
        sq = np.concatenate([((x[s : s + 200, None, :] - y[None, :, :]) ** 2).sum(-1) for s in range(0, len(x), 200)])
    else:
        sq = np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T, 0.0)
    return np.sqrt(sq) if p == 1 else sq


def weights(rng, n, uniform):
    if uniform:
        return None, np.full(n, 1.0 / n)
    w = rng.uniform(0.01, 1.0, n)
    w /= w.sum()
    return w, w


CASES = [
    # n, m, d, p, uniform
    (5, 7, 2, 1, False),
    (300, 50, 16, 2, False),
    (2000, 1700, 1, 1, False),
    (1500, 2000, 2, 2, True),
    (800, 600, 16, 1, False),
    (1000, 1200, 384, 2, False),
    (2000, 2000, 384, 1, True),
]


@pytest.mark.parametrize("n,m,d,p,uniform", CASES)
def test_exact_matches_emd2(tmp_path, n, m, d, p, uniform):
    rng = np.random.default_rng(1000 * n + 10 * d + p)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((m, d)) + 0.5
    wa_file, a = weights(rng, n, uniform)
    wb_file, b = weights(rng, m, uniform)
    res = run_cli(tmp_path, x, y, "--p", str(p), wa=wa_file, wb=wb_file)
    M = cost_matrix(x, y, p)
    ref = ot.emd2(a, b, M, numItermax=10_000_000)
    rel = abs(res["cost"] - ref) / abs(ref)
    assert rel <= 1e-9, (res["cost"], ref, rel)
    assert res["relative_gap"] <= 1e-9, res
    assert res["infeasibility"] <= 1e-9 * M.max(), res
    assert res["marginal_error"] <= 1e-12, res
    assert abs(res["distance"] - res["cost"] ** (1.0 / p)) <= 1e-12 * res["distance"]
    for key in ("cost", "distance", "gap", "infeasibility", "iterations", "seconds"):
        assert key in res


def test_sorted_matches_emd2_and_wasserstein_1d(tmp_path):
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal(2000), rng.exponential(size=1500)
    wa = rng.uniform(0.1, 1, 2000)
    wa /= wa.sum()
    b = np.full(1500, 1 / 1500)
    for p in (1, 2):
        res = run_cli(tmp_path, x, y, "--method", "sorted", "--p", str(p), wa=wa)
        ref = ot.emd2(wa, b, cost_matrix(x[:, None], y[:, None], p), numItermax=10_000_000)
        assert abs(res["cost"] - ref) <= 1e-9 * ref, (res["cost"], ref)
        assert res["relative_gap"] <= 1e-9
    res = run_cli(tmp_path, x, y, "--method", "sorted", "--p", "1.5", wa=wa)
    ref = ot.wasserstein_1d(x, y, wa, b, p=1.5)  # POT returns the cost, not its root
    assert abs(res["cost"] - ref) <= 1e-9 * ref, (res["cost"], ref)


def test_user_cost_matrix(tmp_path):
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((400, 3)), rng.standard_normal((300, 3))
    C = rng.uniform(-1, 1, (400, 300))
    np.save(tmp_path / "C.npy", C)
    res = run_cli(tmp_path, x, y, "--cost", str(tmp_path / "C.npy"))
    ref = ot.emd2(np.full(400, 1 / 400), np.full(300, 1 / 300), C, numItermax=10_000_000)
    assert abs(res["cost"] - ref) <= 1e-9 * abs(ref)
    assert res["relative_gap"] <= 1e-9


@pytest.mark.parametrize("p,eps", [(2, 0.05), (1, 0.02)])
def test_sinkhorn_matches_sinkhorn2(tmp_path, p, eps):
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((200, 2)), rng.standard_normal((120, 2)) + 0.3
    wa, a = weights(rng, 200, False)
    res = run_cli(tmp_path, x, y, "--method", "sinkhorn", "--p", str(p), "--eps", str(eps), "--tol", "1e-12",
                  "--max-iter", "200000", wa=wa)
    assert res["converged"] and res["marginal_error"] <= 1e-12, res
    b = np.full(120, 1 / 120)
    ref = ot.sinkhorn2(a, b, cost_matrix(x, y, p), eps, method="sinkhorn_log", stopThr=1e-12, numItermax=200_000)
    assert abs(res["cost"] - float(ref)) <= 1e-7 * float(ref), (res["cost"], float(ref))


def test_unconverged_sinkhorn_fails_unless_accepted(tmp_path):
    """A run stopped by --max-iter once printed a distance and exited 0; now it is an error
    naming the flags, and with --accept-unconverged the result is flagged in JSON and summary."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((20, 2)), rng.standard_normal((15, 2))
    for extra in (["--max-iter", "1"], ["--eps", "1e-12", "--max-iter", "50"]):
        eps = [] if "--eps" in extra else ["--eps", "0.05"]
        res = run_cli(tmp_path, x, y, "--method", "sinkhorn", *eps, *extra, expect_ok=False)
        assert res.returncode != 0 and res.stdout == "", res
        assert "no convergence" in res.stderr and "--accept-unconverged" in res.stderr, res.stderr
        assert "panicked" not in res.stderr
    res = run_cli(tmp_path, x, y, "--method", "sinkhorn", "--eps", "0.05", "--max-iter", "2",
                  "--accept-unconverged")
    assert res["converged"] is False and res["marginal_error"] > 1e-9 and res["iterations"] == 2
    args = [BIN, "transport", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--method", "sinkhorn",
            "--eps", "0.05", "--max-iter", "2", "--accept-unconverged"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "NOT CONVERGED" in out.stdout, out


def test_bad_input_is_a_clear_error(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 3))
    cases = [
        ((np.where(np.arange(30).reshape(10, 3) == 4, np.nan, x), x), {}, [], "NaN"),
        ((x, x[:, :2]), {}, [], "dimension"),
        ((x, x), {"wa": np.full(10, 0.2)}, [], "sum"),
        ((x, x), {"wa": np.r_[-0.1, np.full(9, 1.1 / 9)]}, [], "positive"),
        ((x, x), {}, ["--p", "3"], "not supported"),
        ((np.zeros((0, 3)), x), {}, [], "empty"),
        ((x, x), {}, ["--method", "sinkhorn"], "--eps"),
        ((x, x), {}, ["--method", "sorted"], "d = 1"),
    ]
    for (a, b), w, extra, msg in cases:
        out = run_cli(tmp_path, a, b, *extra, **w, expect_ok=False)
        assert out.returncode != 0 and "panicked" not in out.stderr, out.stderr
        assert msg in out.stderr, (msg, out.stderr)
    # The normalising flag accepts unnormalised weights.
    res = run_cli(tmp_path, x, x, "--normalise", wa=np.full(10, 0.2))
    assert res["cost"] == 0.0
