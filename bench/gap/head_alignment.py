"""How far one MiniLM layer's heads line up, five ways: what B1-joint's sum over heads could
still give up (#18 item 4, docs/analysis.md#gap-decomposition, "How far the heads line up").

All five are quantities of the weights alone, in units where R = 1 (the score biases c_h left
out), beside max_h m_h a_h (one head's softmax factor: m_h = ||W_O^h W_V^h||_2,
a_h = ||A_h||_2, beta_h(x) = A_h x the score's gradient in the key):

1. Lemma J. B1-joint's softmax factor is lambda_max(sum_h w_h A_h^T A_h)^{1/2}
   (sum_h m_h^2 / w_h)^{1/2} for any w > 0 (w_h = 1 / a_h^2, then 300 exponentiated-gradient
   steps); it relaxes sup_{|x| = 1} sum_h m_h |A_h x|, which projected ascent from 52 starts
   bounds from below. If the two meet, no sharper treatment of the shared query helps.
2. A Frobenius form over the keys (not shipped): |T3|_F <= R sqrt(n / 2)
   (sum_h s_h^2 m_h^2)^{1/2} N(s) |dX|_F with N(s)^2 = sup_{|x| = |y| = 1} sum_h
   (y^T A_h x)^2 / s_h^2, valid for any s > 0. N(s) lies between a higher-order power iteration
   (lower) and the smaller of two flattenings, lambda_max(sum_h A_h A_h^T / s_h^2)^{1/2} and the
   same with A_h^T A_h (upper).
3. One key pair shared by all heads: its rows move by [sum_h (y^T A_h x) M_h] z; the multilinear
   sup of u^T [sum_h (y^T A_h x) M_h] v over unit x, y, u, v (alternating maximisation from 20
   starts) bounds what any such input gives before its constraints (ties, margins, the ball).
4. The same four-way form read as a matrix: (u, y) against (v, x), it is the Kronecker sum
   sum_h M_h (x) A_h, whose spectral norm bounds the four-way form from above (a certified
   bound once computed with a certified eigenvalue bound; here power iteration, 60 steps, a
   lower estimate of that norm).
5. A form over keys that couples each head's output and score sides (not shipped): with
   K_ij = sum_h P^h_ij M_h (x_j - xbar^h_i) beta_h(x_i)^T the coefficient of dx_j in query row
   i's softmax term, ||K_ij|| <= R Psi(s) (sum_h s_h^2 (w^h_ij)^2)^{1/2} with
   Psi(s)^2 = lambda_max(sum_h (M_h M_h^T) (x) (A_h A_h^T) / s_h^2) (Cauchy-Schwarz over heads,
   then each head's score at its own worst query), so the factor is
   (lambda_max sum_h s_h^2)^{1/2}: by power iteration (an estimate) and by the block Gershgorin
   bound max_h sum_g ||P_h^T P_g|| ||F_h^T F_g|| / (s_h s_g) (certified up to rounding;
   M_h M_h^T = P_h P_h^T, A_h A_h^T = F_h F_h^T), for s_h = m_h a_h.

Usage: PYTHONPATH=.build/py python3 bench/gap/head_alignment.py [LAYER ...] (default 0 3);
about two minutes a layer on two cores.
"""
import math
import sys

import torch

from minilm_sublayer import D, H, Sublayer

torch.set_num_threads(2)


def top_eig(m):
    return torch.linalg.eigvalsh(m)[-1].item()


def lemma_j(A, m, a):
    G = [A[h].T @ A[h] for h in range(H)]

    def factor(w):
        return torch.sqrt(torch.linalg.eigvalsh(sum(w[h] * G[h] for h in range(H)))[-1] * (m**2 / w).sum())

    lw = torch.log(1 / a**2)
    first = best = factor(torch.exp(lw)).item()
    for _ in range(300):
        v = lw.clone().requires_grad_(True)
        val = factor(torch.exp(v))
        val.backward()
        lw = (lw - 0.3 * v.grad / (v.grad.norm() + 1e-30)).detach()
        best = min(best, val.item())
    sup = 0.0
    starts = [torch.randn(D) for _ in range(40)] + [torch.linalg.svd(A[h])[2][0] for h in range(H)]
    for x in starts:
        x = x / x.norm()
        for _ in range(400):
            xx = x.clone().requires_grad_(True)
            (m * (A @ xx).norm(dim=1)).sum().backward()
            g = xx.grad - xx.grad.dot(x) * x
            x = x + 0.05 * g / (g.norm() + 1e-30)
            x = x / x.norm()
        sup = max(sup, (m * (A @ x).norm(dim=1)).sum().item())
    return first, best, sup


def frobenius_form(A, m, s):
    As = A / s[:, None, None]
    upper = math.sqrt(min(top_eig(sum(As[h] @ As[h].T for h in range(H))),
                          top_eig(sum(As[h].T @ As[h] for h in range(H)))))
    lower = 0.0
    for st in range(H + 10):
        if st < H:
            u, _, vt = torch.linalg.svd(As[st])
            x, y = vt[0], u[:, 0]
        else:
            x, y = torch.randn(D), torch.randn(D)
        x, y = x / x.norm(), y / y.norm()
        for _ in range(200):
            t = torch.einsum("i,hij,j->h", y, As, x)
            x = torch.einsum("h,i,hij->j", t, y, As)
            x = x / x.norm()
            t = torch.einsum("i,hij,j->h", y, As, x)
            y = torch.einsum("h,hij,j->i", t, As, x)
            y = y / y.norm()
        lower = max(lower, torch.einsum("i,hij,j->h", y, As, x).norm().item())
    w = math.sqrt(((s * m) ** 2).sum().item())
    return lower * w, upper * w


def kronecker(A, M):
    torch.manual_seed(0)
    X = torch.randn(D, D)
    X /= X.norm()
    for _ in range(60):
        Y = sum(M[h] @ X @ A[h].T for h in range(H))
        Z = sum(M[h].T @ Y @ A[h] for h in range(H))
        X = Z / Z.norm()
    return Z.norm().sqrt().item()


def coupled(A, M, s):
    Q = [M[h] @ M[h].T for h in range(H)]
    G = [A[h] @ A[h].T for h in range(H)]
    torch.manual_seed(0)
    X = torch.rand(D, D)
    X /= X.norm()
    for _ in range(40):
        Z = sum(Q[h] @ X @ G[h] / s[h] ** 2 for h in range(H))
        lam = (X * Z).sum().item()
        X = Z / Z.norm()
    P = [M[h] @ torch.linalg.qr(M[h].T)[0] for h in range(H)]
    F = [A[h] @ torch.linalg.qr(A[h].T)[0] for h in range(H)]
    gersh = max(sum(torch.linalg.matrix_norm(P[h].T @ P[g], 2).item() * torch.linalg.matrix_norm(F[h].T @ F[g], 2).item()
                    / (s[h] * s[g]).item() for g in range(H)) for h in range(H))
    w = (s**2).sum().item()
    return math.sqrt(lam * w), math.sqrt(gersh * w)


def shared_pair(A, M):
    best = 0.0
    for st in range(H + 8):
        if st < H:
            ua, _, va = torch.linalg.svd(A[st])
            um, _, vm = torch.linalg.svd(M[st])
            x, y, u, v = va[0], ua[:, 0], um[:, 0], vm[0]
        else:
            x, y, u, v = (torch.randn(D) for _ in range(4))
        x, y, u, v = (t / t.norm() for t in (x, y, u, v))
        for _ in range(300):
            s = torch.einsum("i,hij,j->h", u, M, v)
            x = torch.einsum("h,i,hij->j", s, y, A)
            x = x / x.norm()
            y = torch.einsum("h,hij,j->i", s, A, x)
            y = y / y.norm()
            t = torch.einsum("i,hij,j->h", y, A, x)
            u = torch.einsum("h,hij,j->i", t, M, v)
            u = u / u.norm()
            v = torch.einsum("h,i,hij->j", t, u, M)
            v = v / v.norm()
        t = torch.einsum("i,hij,j->h", y, A, x)
        best = max(best, (t * torch.einsum("i,hij,j->h", u, M, v)).sum().item())
    return best


for layer in [int(a) for a in sys.argv[1:]] or [0, 3]:
    torch.manual_seed(0)
    A, _, M = Sublayer(layer).head_maps()
    m = torch.stack([torch.linalg.matrix_norm(M[h], 2) for h in range(H)])
    a = torch.stack([torch.linalg.matrix_norm(A[h], 2) for h in range(H)])
    one = (m * a).max().item()
    first, best, sup = lemma_j(A, m, a)
    print(f"layer {layer}: one head max_h m_h a_h = {one:.2f}; sum_h m_h a_h = {(m * a).sum().item():.2f}", flush=True)
    print(f"  1. Lemma J: w = 1/a^2 {first:.2f}, chosen w {best:.2f}; sup_x sum_h m_h |A_h x| >= {sup:.2f}", flush=True)
    for name, s in (("s = 1", torch.ones(H)), ("s = a", a), ("s = 1/m", 1 / m)):
        lo, up = frobenius_form(A, m, s)
        print(f"  2. Frobenius form, {name}: between {lo:.2f} and {up:.2f}", flush=True)
    print(f"  3. one shared pair: sup >= {shared_pair(A, M):.2f}", flush=True)
    print(f"  4. ||sum_h M_h (x) A_h||_2 >= {kronecker(A, M):.2f}", flush=True)
    est, cert = coupled(A, M, m * a)
    print(f"  5. coupled form, s = m a: {est:.2f} (power iteration), {cert:.2f} (block Gershgorin)", flush=True)
