"""Several heads at one transition: the attained side of #18 item 4 (docs/analysis.md#gap-decomposition).

Inputs of the form X = [k1, k2, q, ..., q] (n - 2 identical queries, two keys) on one MiniLM
attention sublayer (no residual, no LayerNorm), every token in the ball of radius R (the layer's
B6 radius). With the queries fixed and only the keys moving, the softmax part of the change of
the sublayer's output on each query row is L (dk1, dk2), where

    L = [sum_h p1_h M_h (k1 - xbar_h) beta_h^T,  sum_h p2_h M_h (k2 - xbar_h) beta_h^T],

M_h = W_O^h W_V^h, beta_h = W_K^h^T (W_Q^h q + b_Q^h) / sqrt(dk), p_h the query's attention on
the keys and xbar_h its attention-weighted mean. With the (small) value part sum_h p_jh M_h dk_j
it is the block of J(X) from the keys to the query rows, so up to that part
||J(X)||_2 >= sqrt(n - 2) ||L||_2 (the script reports ||J(X)||_2 itself): a head at
a transition (p1 = p2 = 1/2) contributes, and several heads at once add if their output
directions M_h (k1 - k2) and their beta_h line up. This script maximises sqrt(n - 2) ||L||_2 over
(q, k1, k2) by projected gradient ascent with the scores' temperature raised to 1 (at low
temperature every head's row is diffuse, so every head has a gradient), from the starts MODE
names (below), then measures ||J(X)||_2 of the full sublayer at the result by power iteration
(torch.func, `Sublayer.sigma`), the honest attained value, and compares it with single-head
transition values.

Usage: PYTHONPATH=.build/py python3 bench/gap/multihead.py LAYER N STARTS SEED K [MODE]
with K keys (n - K queries) and MODE one of
- `random` (default): STARTS random (q, keys), temperature raised from 0.02 to 1 in 15 stages;
- a list of temperatures such as `1.0` or `0.3,0.5,0.7,0.85,1.0`: start s is head (s mod 12)'s
  transition start (docs/background.md#transition-starts, K - 2 further keys random), climbed at
  those temperatures;
- `pairs:A/B/C`: for each pair of the listed heads, their two transition starts merged (the mean
  of the queries pushed to the sphere, both key pairs, K = 4), climbed at 0.3 ... 1.
Each line prints the surrogate, sigma and the heads whose query row puts more than 5% on two or
more keys. 12 starts take about 1 to 2 minutes on one core at n = 16. Results:
docs/analysis.md#gap-decomposition ("Several heads at one transition").
"""
import math
import sys

import torch

from minilm_sublayer import DK, D, H, Sublayer

torch.set_num_threads(1)
LAYER, N, STARTS, SEED, K = (int(a) for a in sys.argv[1:6])
S = Sublayer(LAYER)
Wq, bq, Wk, Wv, Wo, R = S.Wq, S.bq, S.Wk, S.Wv, S.Wo, S.R
M = torch.stack([Wo[:, h * DK:(h + 1) * DK] @ Wv[h * DK:(h + 1) * DK] for h in range(H)])  # H x D x D
WqH = Wq.view(H, DK, D)
bqH = bq.view(H, DK)
WkH = Wk.view(H, DK, D)
f = S.f
sigma = S.sigma


def surrogate(q, ks, tau):
    """sqrt(n - K) ||L||_2 with every score multiplied by tau; also the heads' key shares."""
    qh = torch.einsum("hkd,d->hk", WqH, q) + bqH  # H x DK
    beta = torch.einsum("hk,hkd->hd", qh, WkH) / math.sqrt(DK)  # H x D
    keys = torch.cat([ks, q[None]])  # the queries' own score, n - K times
    s = tau * (beta @ keys.T)  # H x (K + 1)
    s = s + torch.tensor([0.0] * K + [math.log(N - K)])
    P = torch.softmax(s, -1)
    xbar = P @ keys  # H x D
    blocks = []
    for j in range(K):
        c = torch.einsum("hod,hd->ho", M, ks[j] - xbar) * P[:, j:j + 1]  # H x D
        blocks.append(c.T @ beta)
    L = torch.cat(blocks, 1)
    return math.sqrt(N - K) * torch.linalg.matrix_norm(L, ord=2), P


def project(v):
    return v * (R / v.norm(dim=-1, keepdim=True)).clamp(max=1.0)


def ascend(q, ks, stages, steps, lr):
    """Projected ascent with backtracking at each temperature (a step is kept only if it gains)."""
    for tau in stages:
        step = lr
        for _ in range(steps):
            vs = [t.clone().requires_grad_(True) for t in (q, ks)]
            val, _ = surrogate(*vs, tau)
            val.backward()
            for _ in range(12):
                cand = [project(t + step * R * t.grad / (t.grad.norm(dim=-1, keepdim=True) + 1e-30)).detach() for t in vs]
                with torch.no_grad():
                    new, _ = surrogate(*cand, tau)
                if new > val:
                    q, ks = cand
                    step *= 1.5
                    break
                step *= 0.5
            else:
                break
    return q, ks


def single_head_start(h):
    """The transition start of head h (docs/background.md#transition-starts), first K - 2 extra keys random."""
    A = WkH[h].T @ WqH[h] / math.sqrt(DK)  # beta(q) = A q + c
    c = WkH[h].T @ bqH[h] / math.sqrt(DK)
    u, _, vt = torch.linalg.svd(A)
    q = R * vt[0]
    if (A @ -q + c).norm() > (A @ q + c).norm():
        q = -q
    for _ in range(200):  # ascent on |beta|^2 - (beta.q + log(64) + 4)_+^2 / R^2 on the sphere
        qq = q.clone().requires_grad_(True)
        b = A @ qq + c
        obj = b.dot(b) - torch.clamp(b.dot(qq) + math.log(64) + 4, min=0) ** 2 / R**2
        obj.backward()
        gq = qq.grad - qq.grad.dot(q) * q / R**2
        q = (q + 0.02 * R * gq / (gq.norm() + 1e-30))
        q = q * R / q.norm()
    b = A @ q + c
    bn = b / b.norm()
    Pm = torch.eye(D) - torch.outer(bn, bn)
    ev, evec = torch.linalg.eigh(Pm @ M[h].T @ M[h] @ Pm)
    v = evec[:, -1]
    alpha = max(0.0, ((b.dot(q) + math.log(N) + 4) / (R * b.norm())).item())
    alpha = min(alpha, 1.0)
    k1 = R * (alpha * bn + math.sqrt(1 - alpha**2) * v)
    k2 = R * (alpha * bn - math.sqrt(1 - alpha**2) * v)
    extra = [project(torch.randn(D) * R) for _ in range(K - 2)]
    return q, torch.stack([k1, k2] + extra)


torch.manual_seed(SEED)
best = None
def report(name, q, ks):
    global best
    val, P = surrogate(q, ks, 1.0)
    X = torch.cat([ks, q[None].expand(N - K, D)])
    s = sigma(X)
    heads = [h for h in range(H) if (P[h, :K] > 0.05).sum() >= 2]
    print(f"{name}: surrogate {val.item():.1f}, sigma {s:.1f}, heads with 2+ keys above 5% {heads}", flush=True)
    if best is None or s > best[0]:
        best = (s, X)


MODE = sys.argv[6] if len(sys.argv) > 6 else "random"
for start in range(STARTS):
    if MODE.startswith("pairs"):
        # Two heads' transition starts merged: the queries' mean, both key pairs (K = 4).
        top = [int(h) for h in MODE.split(":")[1].split("/")]
        pairs = [(a, b) for i, a in enumerate(top) for b in top[i + 1:]]
        if start >= len(pairs):
            break
        a, b = pairs[start]
        qa, ka = single_head_start(a)
        qb, kb = single_head_start(b)
        q, ks = project((qa + qb) * 10.0), torch.cat([ka[:2], kb[:2]])
        report(f"heads {a}, {b} merged", q, ks)
        stages = [0.3, 0.5, 0.7, 0.85, 1.0]
    elif MODE == "random":
        q, ks = project(torch.randn(D) * R), project(torch.randn(K, D) * R)
        stages = [0.02 * 1.35 ** i for i in range(14)] + [1.0]
    else:
        q, ks = single_head_start(start % H)
        report(f"head {start % H} transition start", q, ks)
        stages = [float(t) for t in MODE.split(",")]
    q, ks = ascend(q, ks, [min(t, 1.0) for t in stages], 40, 0.01)
    report(f"start {start}", q, ks)
print(f"best sigma {best[0]:.1f}")
torch.save(best[1], f"/tmp/multihead_L{LAYER}_n{N}_s{SEED}.pt")
