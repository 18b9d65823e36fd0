"""Oversized requests (#16): each is a clean error naming the sizes and the budget, before any
allocation, within seconds; never an abort, a panic or a hang. Run under an address-space cap so
that a request that did try to allocate fails fast instead of swapping."""
import json
import resource
import subprocess

import pytest

CAP = 6 << 30


def run_capped(bin_, *args, timeout=60):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))
    return subprocess.run([bin_, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


def clean_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "panicked" not in res.stderr and "memory allocation" not in res.stderr, res.stderr
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


@pytest.mark.parametrize("args,needles", [
    (["invert", "--n", 10**9], ["random tokens", "--n", "budget"]),
    (["invert", "--d", 10**5], ["random layer of width d = 100000", "budget"]),
    (["invert", "--n", 10**5, "--max-memory", "1G"], ["score matrices", "budget of 1.074 GB",
                                                        "--max-memory"]),
    (["flow", "--t", 1e9], ["steps, above max_steps"]),
    (["flow", "--dt", 1e-12], ["steps, above max_steps"]),
    (["flow", "--record", 1e-9], ["final time / record interval", "budget"]),
    (["invert", "--c", 1.5, "--max-memory", "12Q"], ["unknown size suffix"]),
])
def test_oversized_requests_stop_cleanly(lipattn_bin, args, needles):
    clean_error(run_capped(lipattn_bin, *args), *needles)


def test_oversized_model_requests_stop_cleanly(lipattn_bin, minilm, tmp_path):
    for extra, needles in [(["--n", 10**9, "--atoms", 4], ["(--n)", "budget"]),
                           (["--n", 8, "--atoms", 10**9], ["(--atoms)", "budget"])]:
        res = run_capped(lipattn_bin, "lipschitz", "--model", minilm, "--layer", 0, "--radius", 1,
                         *extra)
        clean_error(res, *needles)
    # A config.json claiming 10^9 layers over six layers of weights.
    import os
    minilm = os.path.abspath(minilm)
    cfg = json.load(open(os.path.join(minilm, "config.json")))
    cfg["num_hidden_layers"] = 10**9
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    os.symlink(os.path.join(minilm, "model.safetensors"), tmp_path / "m" / "model.safetensors")
    os.symlink(os.path.join(minilm, "tokenizer.json"), tmp_path / "m" / "tokenizer.json")
    res = run_capped(lipattn_bin, "analyze", tmp_path / "m", "--ns", 8, "--windows", 1,
                     "--out", tmp_path / "out")
    clean_error(res, "1000000000 layers", "layers 0..6")


def test_transport_beyond_the_budget(lipattn_bin, tmp_path):
    import numpy as np
    x = np.zeros((3000, 1))
    np.save(tmp_path / "x.npy", x)
    res = run_capped(lipattn_bin, "transport", tmp_path / "x.npy", tmp_path / "x.npy",
                     "--max-memory", "64M")
    clean_error(res, "between 3000 and 3000 atoms", "budget of 67.109 MB")


@pytest.mark.parametrize("args,needles", [
    # 20,000 x 20,000 atoms: a 3.2 GB cost matrix alone, under a 2 GiB address space.
    (["transport", "X", "X", "--max-memory", "1T"], ["between 20000 and 20000 atoms"]),
    (["invert", "--n", 30000, "--max-memory", "1T"], ["score matrices"]),
])
def test_within_the_budget_but_refused_by_the_system(lipattn_bin, tmp_path, args, needles):
    """A budget set above what the process may map: the memory the estimate counts is reserved
    before the work, so the system's refusal is a clean error, not the abort of a failed
    allocation (which this transport case was: "memory allocation of 3200000000 bytes failed")."""
    import numpy as np
    np.save(tmp_path / "x.npy", np.zeros((20000, 2)))
    args = [tmp_path / "x.npy" if a == "X" else a for a in args]

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    res = subprocess.run([lipattn_bin, *map(str, args)], capture_output=True, text=True,
                         timeout=60, preexec_fn=limit)
    clean_error(res, *needles, "which the system refused to allocate now")
