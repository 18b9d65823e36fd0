"""Local constants ||J(X)||_2 against the sequence length n, from Python.

1. MiniLM layer 0 on windows of real text (the hidden state entering layer 0, i.e. the
   embeddings after their LayerNorm) and on random LayerNorm-like rows: local_vs_n.csv/.png.
2. Figure (a) of docs/reproductions.md, the mean-field saturation: one head in R^2 with
   A = V = I at the adversarial input, R in {2, 3, 4}, n = 2 .. 4096: saturation.csv/.png, with
   the peaks printed for comparison with the table there (1.869 at n = 8, 4.138 at n = 32,
   12.96 at n = 128).

Each value is attained at its input (a lower bound on the Lipschitz constant over any domain
holding it). PNGs need matplotlib; without it the CSVs are written alone.

    python3 docs/examples/python_tutorial.py [--model DIR] [--out OUT_DIR] [--sizes 8 16 32 64 128]
"""
import argparse
import csv
import os

import numpy as np

import lipattn

TEXT = (
    "Attention maps a sequence of tokens to another sequence of tokens, each output a weighted "
    "average of values with weights given by a softmax of scores. Read as an operator on "
    "probability measures, its smoothness can be bounded from above by certified constants and "
    "from below by inputs that attain large local constants. Real text sits far from the worst "
    "case: its hidden states spread over many directions, and the softmax rarely saturates. "
)


def layer_norm_like(rng, n, d):
    x = rng.standard_normal((n, d))
    x -= x.mean(axis=1, keepdims=True)
    return x / x.std(axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Hugging Face directory (e.g. all-MiniLM-L6-v2); part 1 is skipped without it")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--out", default=".")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-n", type=int, default=4096, help="largest n of the saturation figure")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.model:
        minilm(a)
    saturation(a)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("wrote", path)


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: CSV only")
        return None
    return plt


def saturation(a):
    # W_Q = W_K = 2^(1/4) I makes A = W_Q^T W_K / sqrt(dk) = I with dk = 2; W_V = W_O = I.
    q, eye, zero = 2 ** 0.25 * np.eye(2), np.eye(2), np.zeros(2)
    layer = lipattn.AttentionLayer(q, zero, q, zero, eye, zero, eye, zero, heads=1)
    rows = []
    for radius in [2.0, 3.0, 4.0]:
        n = 2
        while n <= a.max_n:
            x = layer.adversarial_input(0, n, radius)
            r = layer.local_constant(x, tol=1e-8)
            rows.append(dict(R=radius, n=n, sigma=r.sigma, iterations=r.iterations))
            n *= 2
        peak = max((r for r in rows if r["R"] == radius), key=lambda r: r["sigma"])
        print(f"R = {radius:g}: peak ||J(X)||_2 = {peak['sigma']:.4f} at n = {peak['n']}, n* = e^(R^2/4) = {np.exp(radius**2 / 4):.3g}")
    write_csv(os.path.join(a.out, "saturation.csv"), rows)
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for radius in [2.0, 3.0, 4.0]:
        pts = [(r["n"], r["sigma"]) for r in rows if r["R"] == radius]
        ax.plot(*zip(*pts), marker="o", ms=3, label=f"R = {radius:g}")
        ax.axvline(np.exp(radius**2 / 4), ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n")
    ax.set_ylabel(r"attained $\|J(X)\|_2$")
    ax.set_title("mean-field saturation, A = V = I in R^2")
    ax.legend()
    fig.tight_layout()
    png = os.path.join(a.out, "saturation.png")
    fig.savefig(png, dpi=150)
    print("wrote", png)


def minilm(a):
    model = lipattn.Model(a.model)
    layer = model.attention_layer(a.layer)
    n_max = max(a.sizes)
    # Enough text for the longest window; the model's own tokenizer, special tokens included.
    text = TEXT * (1 + n_max // 60)
    hidden = model.hidden_states(text, layer=a.layer, max_tokens=n_max)
    rng = np.random.default_rng(a.seed)

    rows = []
    for n in a.sizes:
        for kind, x in [("text", hidden[:n]), ("random", layer_norm_like(rng, n, model.hidden_size))]:
            r = layer.local_constant(x, tol=1e-6)
            rows.append(dict(kind=kind, n=n, sigma=r.sigma, rel_error=r.rel_error, iterations=r.iterations,
                             radius=r.radius, seconds=r.seconds))
            print(f"{kind:>6} n={n:4d}  ||J(X)||_2 >= {r.sigma:.6e}  ({r.iterations} Lanczos steps, {r.seconds:.3f} s)")

    # The same layer through the whole-model analysis (`lipattn analyze`): the certified bound
    # beside the largest attained value, on the embedded GPL-3 text and the adversarial input.
    report = model.analyze(ns=[min(a.sizes)], windows=1, layers=[a.layer], heads=False)
    (point,) = report["operators"][0]["points"]
    print(f"analyze, n={point['n']}: certified <= {point['certified']['frobenius']:.4e}, "
          f"text max {point['text_max']:.4e}, adversarial {point['adversarial']:.4e}, gap {point['gap']:.3g}")

    write_csv(os.path.join(a.out, "local_vs_n.csv"), rows)
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind, marker in [("text", "o"), ("random", "s")]:
        pts = [(r["n"], r["sigma"]) for r in rows if r["kind"] == kind]
        ax.plot(*zip(*pts), marker=marker, label=f"{kind} inputs")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length n")
    ax.set_ylabel(r"attained $\|J(X)\|_2$")
    ax.set_title(f"{model.model_type} checkpoint, layer {a.layer}: local constant")
    ax.legend()
    fig.tight_layout()
    png = os.path.join(a.out, "local_vs_n.png")
    fig.savefig(png, dpi=150)
    print("wrote", png)


if __name__ == "__main__":
    main()
