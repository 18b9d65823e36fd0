"""Transport from Python equals POT."""
import lipattn
import numpy as np
import ot
import pytest


def clouds(seed, n=12, m=9, d=3):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((m, d)) + 0.5
    wa, wb = rng.uniform(0.1, 1, n), rng.uniform(0.1, 1, m)
    return a, b, wa / wa.sum(), wb / wb.sum()


@pytest.mark.parametrize("p", [1, 2])
def test_exact_equals_emd2(p):
    a, b, wa, wb = clouds(p)
    t = lipattn.transport(lipattn.Measure(a, wa), lipattn.Measure(b, wb), p=p)
    C = ot.dist(a, b, metric="euclidean" if p == 1 else "sqeuclidean")
    np.testing.assert_allclose(t.cost, ot.emd2(wa, wb, C), rtol=1e-12)
    np.testing.assert_allclose(t.distance, t.cost ** (1 / p), rtol=1e-14)
    np.testing.assert_allclose(np.sum(t.plan * C), t.cost, rtol=1e-12)
    np.testing.assert_allclose(t.plan.sum(axis=1), wa, atol=1e-15)
    np.testing.assert_allclose(t.plan.sum(axis=0), wb, atol=1e-15)
    c = t.certificate
    assert abs(c["gap"]) <= 1e-12 * t.cost and c["infeasibility"] <= 1e-12
    u, v = t.potentials
    assert np.all(u[:, None] + v[None, :] <= C + 1e-12)
    np.testing.assert_allclose(wa @ u + wb @ v, t.cost, rtol=1e-12)
    rows, cols, mass = t.plan_sparse
    dense = np.zeros_like(C)
    dense[rows, cols] = mass
    np.testing.assert_array_equal(dense, t.plan)


def test_user_cost_and_arrays_with_weights():
    a, b, wa, wb = clouds(5)
    C = np.random.default_rng(9).uniform(-1, 2, (12, 9))
    t = lipattn.transport(a, b, wa=wa, wb=wb, cost=C)
    assert t.p is None
    np.testing.assert_allclose(t.cost, ot.emd2(wa, wb, C), rtol=1e-12)
    t2 = lipattn.transport(a, b, wa=wa * 3, wb=wb * 3, normalise=True, p=1)
    np.testing.assert_allclose(t2.cost, ot.emd2(wa, wb, ot.dist(a, b, metric="euclidean")), rtol=1e-12)
    np.testing.assert_allclose(lipattn.ground_cost(a, b, 2), ot.dist(a, b), rtol=1e-12, atol=1e-14)


def test_sinkhorn_equals_pot():
    a, b, wa, wb = clouds(6)
    C = ot.dist(a, b)
    t = lipattn.transport(a, b, wa=wa, wb=wb, p=2, method="sinkhorn", eps=0.5)
    assert t.converged and t.certificate is None
    P = ot.sinkhorn(wa, wb, C, 0.5, stopThr=1e-12, numItermax=100000)
    np.testing.assert_allclose(t.plan, P, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(t.cost, np.sum(P * C), rtol=1e-7)
    f, g = t.potentials
    np.testing.assert_allclose(t.plan, np.exp((f[:, None] + g[None, :] - C) / 0.5), rtol=1e-12)


def test_unconverged_sinkhorn_raises_unless_accepted():
    a, b, wa, wb = clouds(6)
    with pytest.raises(lipattn.NoConvergenceError, match="accept_unconverged"):
        lipattn.transport(a, b, wa=wa, wb=wb, method="sinkhorn", eps=0.05, max_iter=2)
    t = lipattn.transport(a, b, wa=wa, wb=wb, method="sinkhorn", eps=0.05, max_iter=2,
                          accept_unconverged=True)
    assert not t.converged and t.to_dict()["converged"] is False
    row = t.plan.sum(axis=1)
    assert abs(np.abs(row - wa).sum() - t.to_dict()["marginal_error"]) <= 1e-12


def test_sorted_equals_wasserstein_1d():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal(20), rng.standard_normal(15) * 2
    for p in [1.0, 1.5, 3.0]:
        t = lipattn.transport(a, b, p=p, method="sorted")
        np.testing.assert_allclose(t.cost, ot.wasserstein_1d(a, b, p=p), rtol=1e-12)
