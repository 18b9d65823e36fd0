"""`lipattn lipschitz --json` on the real MiniLM: certified beside attained, never below it."""
import json
from cli import run



def lipschitz(bin_, model, *extra):
    out = run(bin_, "lipschitz", "--model", model, "--layer", 0, "--n", 8, "--starts", 1, "--steps", 3,
              "--atoms", 4, "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_head_and_layer(lipattn_bin, minilm):
    for extra in (["--head", 0, "--radius", 1.0], ["--radius", 0.5]):
        r = lipschitz(lipattn_bin, minilm, *extra)
        c, a = r["certified"], r["attained"]
        assert r["domain"]["radius"] == extra[-1] and r["domain"]["n"] == 8 and r["domain"]["dtype"] == "f64"
        op = r["operator"]
        assert (op["mask"], op["model_mask"], op["n"], op["radius"], op["overrides"]) == ("none", "none", 8, extra[-1], [])
        assert "BERT layer 0 self-attention" in op["description"] and ("head 0" in op["layer"]) == ("--head" in extra)
        assert c["frobenius"] is not None and c["w1"] is not None
        assert 0 < a["frobenius"] <= c["frobenius"]
        assert 0 < a["w1"] <= c["w1"]
        # The W1 search starts from pairs built from each head's weights (12 heads for the layer).
        assert a["w1_pair"]["structured_starts"] > 0
        assert abs(r["ratio"]["frobenius"] - c["frobenius"] / a["frobenius"]) <= 1e-12 * r["ratio"]["frobenius"]
        names = {b["name"] for b in r["bounds"]}
        assert {"B1+B4-sum", "B1-tight-sum", "B2", "anchor-castin-mathmd"} <= names
        assert all(not b["certified"] for b in r["bounds"] if b["name"].startswith("anchor"))
        assert c["anchor"] is not None


def test_attaining_inputs_are_saved(tmp_path, lipattn_bin, minilm):
    """The inputs behind both attained values are written and reproduce them."""
    import numpy as np

    r = lipschitz(lipattn_bin, minilm, "--head", 0, "--radius", 1.0, "--save-input", tmp_path / "x.npy",
                  "--save-pair", tmp_path / "pair")
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (8, 384) and np.linalg.norm(x, axis=1).max() <= 1.0 + 1e-12
    for name in ("mu_points", "mu_weights", "nu_points", "nu_weights"):
        a = np.load(tmp_path / "pair" / f"w1_{name}.npy")
        assert np.all(np.isfinite(a))
    mu_w = np.load(tmp_path / "pair" / "w1_mu_weights.npy")
    assert abs(mu_w.sum() - 1) < 1e-9
    # The attained W1 ratio is reproduced by `lipattn transport` on the saved pair's inputs.
    out = run(lipattn_bin, "transport", tmp_path / "pair" / "w1_mu_points.npy", tmp_path / "pair" / "w1_nu_points.npy",
              "--wa", tmp_path / "pair" / "w1_mu_weights.npy", "--wb", tmp_path / "pair" / "w1_nu_weights.npy",
              "--p", 1, "--json")
    assert out.returncode == 0, out.stderr
    assert abs(json.loads(out.stdout)["distance"] - r["attained"]["w1_pair"]["w1_in"]) <= 1e-9 * r["attained"]["w1_pair"]["w1_in"]


def test_large_radius_reports_overflow(lipattn_bin, minilm):
    r = lipschitz(lipattn_bin, minilm, "--head", 0, "--radius", 40.0)
    assert r["certified"]["w1"] is None
    assert any("f64 range" in n for n in r["notes"])
    assert r["certified"]["frobenius"] >= r["attained"]["frobenius"]


def test_l2_kernel_is_certified_on_the_ball_only(lipattn_bin, minilm):
    r = lipschitz(lipattn_bin, minilm, "--head", 0, "--radius", 1.0, "--kernel", "l2")
    # MiniLM's W_V does not factor through W_Q: B5 on all of R^(n x d) does not apply, B5-ball
    # (the projection on W_Q's row space plus a term for the remainder) holds on the ball, and
    # the notes say so; no W1 constant exists for L2.
    assert r["certified"]["w1"] is None
    assert [b["name"] for b in r["bounds"]] == ["B5-ball"]
    assert r["certified"]["frobenius"] >= r["attained"]["frobenius"] > 0
    assert any("B5-ball holds on (B_R)^n, R = 1, n = 8" in n for n in r["notes"])
    assert "l2 kernel, not the model's dot kernel" in r["operator"]["description"]
    # Structured starts encode the dot kernel's mechanisms; none are built for L2.
    assert r["attained"]["w1_pair"]["structured_starts"] == 0


def test_bad_arguments(lipattn_bin, minilm):
    for args, needle in [
        (["--radius", -1, "--n", 4], "radius"),
        (["--radius", 1, "--n", 0], "n"),
        (["--radius", 1, "--n", 4, "--head", 12], "head 12"),
    ]:
        out = run(lipattn_bin, "lipschitz", "--model", minilm, "--layer", 0, *args)
        assert out.returncode != 0 and "panicked" not in out.stderr
        assert needle in out.stderr, out.stderr
