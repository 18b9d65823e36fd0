"""Radius continuation for the attained side of #18 item 4 (docs/analysis.md#gap-decomposition).

Projected gradient ascent on ||J(X)||_2 of one MiniLM attention sublayer (no residual, no
LayerNorm), X in (B_r)^n, with r raised from 0.2 R to R (R = the layer's B6 radius) in steps,
each stage starting from the previous stage's input pushed to the new sphere: at small r every
softmax row is diffuse and the gradient exists, and the ascent carries the input to a transition
as r grows. sigma by power iteration on torch.func's JVP/VJP; the ascent direction is the gradient
of u^T J(X) v at the current top singular pair, normalised per row. Then, per head, the head's own
norm at the final X and its part of J v along the sublayer's top vector.

Usage: PYTHONPATH=.build/py python3 bench/gap/continuation.py LAYER SEED [N]
(torch from .build/py: bench/jvp_vjp/install_torch.sh). Seeds 2 and 3 on layer 3 at n = 16 took
about 15 minutes each on one core.
"""
import sys

import torch

from minilm_sublayer import D, DK, H, Sublayer

torch.set_num_threads(1)
LAYER, SEED = int(sys.argv[1]), int(sys.argv[2])
N = int(sys.argv[3]) if len(sys.argv) > 3 else 16
S = Sublayer(LAYER)
R_FULL, f = S.R, S.f


def sigma(X, iters, v=None):
    v = torch.randn_like(X) if v is None else v
    v = v / v.norm()
    for _ in range(iters):
        _, jv = torch.func.jvp(f, (X,), (v,))
        w = torch.func.vjp(f, X)[1](jv)[0]
        v = w / w.norm()
    _, jv = torch.func.jvp(f, (X,), (v,))
    return jv.norm().item(), v, jv / jv.norm()


def project(X, r):
    return X * (r / X.norm(dim=1, keepdim=True).clamp(min=r))


def ascend(X, r, steps, lr):
    s, v, u = sigma(X, 60)
    best = (s, X.clone())
    for _ in range(steps):
        Xr = X.clone().requires_grad_(True)
        (torch.func.jvp(f, (Xr,), (v,))[1] * u).sum().backward()
        gX = Xr.grad
        X = project(X + lr * r * gX / (gX.norm(dim=1, keepdim=True) + 1e-30), r)
        s, v, u = sigma(X, 8, v)
        if s > best[0]:
            best = (s, X.clone())
    return best


torch.manual_seed(SEED)
X = torch.randn(N, D)
for frac in [0.2 + 0.05 * i for i in range(17)]:
    r = frac * R_FULL
    s, X = ascend(project(X * 1e3, r), r, 80, 0.02)
    print(f"radius {r:.2f}: sigma {s:.1f}", flush=True)
for lr in [0.01, 0.005, 0.0025]:
    s, X = ascend(X, R_FULL, 200, lr)
    print(f"at R = {R_FULL:.4f}, step {lr}: sigma {s:.1f}", flush=True)
s, v, _ = sigma(X, 100)
print(f"final sigma {s:.1f} (n = {N}, layer {LAYER}, seed {SEED})")
for h in range(H):
    S.head_mask = torch.zeros(H * DK)
    S.head_mask[h * DK:(h + 1) * DK] = 1.0
    own = sigma(X, 60)[0]
    along = torch.func.jvp(f, (X,), (v,))[1].norm().item()
    print(f"head {h}: own norm {own:.1f}, along the sublayer's top vector {along:.1f}")
