"""Several heads at one query, each on its own pair of keys: the attained side of #18 item 4
(docs/analysis.md#gap-decomposition, "Several heads, each on its own keys").

One MiniLM attention sublayer (no residual, no LayerNorm), every token in the ball of radius R
(the layer's B6 radius). For a set S of k heads the input is X = [a_h, b_h for h in S; x, ..., x]
(2k keys, N = n - 2k identical queries x), built so that every head of S is at a transition on
its own pair:

- beta_h = A_h x + c_h is the gradient of head h's score in the key. With U the dual basis of the
  betas of S (beta_g . u_h = [g = h]), the midpoint of head h's pair is y_h = t_h u_h: head h
  scores it t_h, every other head of S scores it 0. t_h = max(beta_h . x + log N, log 2k) + 5,
  so the pair outscores the N queries and the other pairs by e^5 or more in head h.
- the half-offset z_h is orthogonal to every beta of S (both keys of the pair tie in head h and
  score like the midpoint in the others), of length sqrt(R^2 - |y_h|^2) (both keys on the
  sphere), and points along P_perp M_h^T e, e the top left singular vector of
  [|beta_h| M_h z_h]_h (alternating maximisation, 30 rounds).

With p = 1/2 on the pair, head h moves each query row by M_h z_h beta_h^T (dk_a - dk_b) / 2, so
the keys-to-queries block of J(X) has norm sqrt(N / 2) ||[|beta_h| M_h z_h]_h||_2: heads on
different keys add in quadrature, and only along a common output direction. The query x is
climbed on the sphere to maximise that prediction (gradient through the construction, with
backtracking). The script reports the prediction and ||J(X)||_2 of the whole sublayer by power
iteration (the honest attained value).

Usage: PYTHONPATH=.build/py python3 bench/gap/allheads.py LAYER N (HEADS | greedy [STEPS])
HEADS a comma-separated list (e.g. 0,1,2), or `greedy`: S grows one head at a time, each time
the head whose addition (query re-climbed) predicts most, for STEPS heads (default 6). One greedy
step takes about 50 s on two cores at n = 64. Results: docs/analysis.md#gap-decomposition.
"""
import math
import sys

import torch

from minilm_sublayer import D, H, Sublayer

torch.set_num_threads(2)
LAYER, N = int(sys.argv[1]), int(sys.argv[2])
S = Sublayer(LAYER)
R = S.R
A, C, M = S.head_maps()


def build(heads, x, rounds=30):
    """(X, predicted ||J(X)||_2) for the heads' pairs at query x (differentiable in x)."""
    k = len(heads)
    nq = N - 2 * k
    B = torch.stack([A[h] @ x + C[h] for h in heads])  # k x D
    U = torch.linalg.solve(B @ B.T, B).T  # D x k, B U = I
    t = torch.clamp(B @ x + math.log(nq), min=math.log(2 * k)) + 5.0
    Y = U * t
    Q, _ = torch.linalg.qr(B.T)
    perp = torch.eye(D) - Q @ Q.T
    r = torch.sqrt(torch.clamp(R**2 - (Y**2).sum(0), min=0))
    bn = B.norm(dim=1)
    e = torch.randn(D, generator=torch.Generator().manual_seed(1))
    for _ in range(rounds):
        Z = torch.stack([perp @ (M[h].T @ e) for h in heads], 1)
        Z = Z / Z.norm(dim=0, keepdim=True) * r
        cols = torch.stack([bn[i] * M[h] @ Z[:, i] for i, h in enumerate(heads)], 1)
        u, s, _ = torch.linalg.svd(cols, full_matrices=False)
        e = u[:, 0].detach()
    keys = []
    for i in range(k):
        keys += [Y[:, i] + Z[:, i], Y[:, i] - Z[:, i]]
    X = torch.cat([torch.stack(keys), x[None].expand(nq, D)])
    return X, math.sqrt(nq / 2) * s[0]


def first_query(heads, steps=300):
    """Ascent on sum_h g_h |beta_h(x)|^2 (g_h = ||M_h||^2) on the sphere, with a penalty on the
    query's own scores, from the top eigenvector of sum_h g_h A_h^T A_h."""
    g = torch.tensor([torch.linalg.matrix_norm(M[h], 2).item() ** 2 for h in heads])
    x = R * torch.linalg.eigh(sum(g[i] * A[h].T @ A[h] for i, h in enumerate(heads)))[1][:, -1]
    for _ in range(steps):
        xx = x.clone().requires_grad_(True)
        b = torch.stack([A[h] @ xx + C[h] for h in heads])
        own = torch.clamp((b * xx).sum(1) + math.log(N), min=0)
        ((g * (b * b).sum(1)).sum() - (g * own**2).sum() / R**2).backward()
        gq = xx.grad - xx.grad.dot(x) * x / R**2
        x = x + 0.02 * R * gq / (gq.norm() + 1e-30)
        x = x * R / x.norm()
    return x


def climb(heads, x, steps):
    """Projected ascent of the prediction in x, a step kept only if it gains."""
    lr = 0.05
    with torch.no_grad():
        cur = build(heads, x)[1].item()
    for _ in range(steps):
        xx = x.clone().requires_grad_(True)
        build(heads, xx, rounds=10)[1].backward()
        gq = xx.grad - xx.grad.dot(x) * x / R**2
        for _ in range(10):
            cand = x + lr * R * gq / (gq.norm() + 1e-30)
            cand = (cand * R / cand.norm()).detach()
            with torch.no_grad():
                new = build(heads, cand)[1].item()
            if new > cur:
                x, cur = cand, new
                lr *= 1.3
                break
            lr *= 0.5
        else:
            break
    return x, cur


def report(heads, x):
    with torch.no_grad():
        X, pred = build(heads, x)
    assert X.norm(dim=1).max() <= R * (1 + 1e-12)
    print(f"heads {heads}: predicted {pred.item():.1f}, sigma {S.sigma(X):.1f}", flush=True)


if sys.argv[3] == "greedy":
    chosen = []
    for _ in range(int(sys.argv[4]) if len(sys.argv) > 4 else 6):
        best = None
        for h in (h for h in range(H) if h not in chosen):
            x, cur = climb(chosen + [h], first_query(chosen + [h]), 80)
            if best is None or cur > best[0]:
                best = (cur, h, x)
        chosen.append(best[1])
        report(chosen, best[2])
else:
    heads = [int(h) for h in sys.argv[3].split(",")]
    report(heads, climb(heads, first_query(heads), 150)[0])
