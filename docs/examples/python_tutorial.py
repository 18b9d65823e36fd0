"""Local constant ||J(X)||_2 of MiniLM layer 0 against the sequence length n, from Python.

Two kinds of input, as in docs/reproductions.md: windows of real text (the hidden state entering
layer 0, i.e. the embeddings after their LayerNorm) and random LayerNorm-like rows. Each value is
attained at its input (a lower bound on the Lipschitz constant over any domain holding it).
Writes local_vs_n.csv, and local_vs_n.png when matplotlib is installed.

    python3 docs/examples/python_tutorial.py --model DIR [--out OUT_DIR] [--sizes 8 16 32 64 128]
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
    ap.add_argument("--model", required=True, help="Hugging Face directory (e.g. all-MiniLM-L6-v2)")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--out", default=".")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

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

    os.makedirs(a.out, exist_ok=True)
    csv_path = os.path.join(a.out, "local_vs_n.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("wrote", csv_path)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: CSV only")
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind, marker in [("text", "o"), ("random", "s")]:
        pts = [(r["n"], r["sigma"]) for r in rows if r["kind"] == kind]
        ax.plot(*zip(*pts), marker=marker, label=f"{kind} inputs")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length n")
    ax.set_ylabel(r"attained $\|J(X)\|_2$")
    ax.set_title(f"{os.path.basename(os.path.normpath(a.model))} layer {a.layer}: local constant")
    ax.legend()
    fig.tight_layout()
    png = os.path.join(a.out, "local_vs_n.png")
    fig.savefig(png, dpi=150)
    print("wrote", png)


if __name__ == "__main__":
    main()
