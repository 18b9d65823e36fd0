"""Reports written atomically, tokenising that stops at --max-tokens, and the messages of the
cases #16 listed as unclear: each is checked on the command as a user runs it."""
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from cli import run

FAST = ["--ns", 8, "--windows", 1, "--layers", 0, "--no-heads", "--no-adversarial", "--quiet"]


def analyze(bin_, minilm, out, *extra):
    return run(bin_, "analyze", minilm, "--out", out, *FAST, *extra)


def listing(d):
    return sorted(os.listdir(d))


def test_second_run_replaces_the_report_whole(lipattn_bin, minilm, tmp_path):
    out = tmp_path / "rep"
    r = analyze(lipattn_bin, minilm, out)
    assert r.returncode == 0, r.stderr
    first = listing(out)
    assert "report.json" in first and ".lipattn-output" in first
    (out / "stale.txt").write_text("from an earlier run")
    r = analyze(lipattn_bin, minilm, out, "--json")
    assert r.returncode == 0, r.stderr
    assert listing(out) == first, "a stale file survived, or the new report differs in files"
    assert json.loads((out / "report.json").read_text())["ns"] == json.loads(r.stdout)["ns"]
    # Nothing but the report is left beside it: no temporary, no lock, no old copy.
    assert listing(tmp_path) == ["rep"]


def test_unwritable_place_fails_before_any_work(lipattn_bin, minilm, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    start = time.monotonic()
    r = run(lipattn_bin, "analyze", minilm, "--out", tmp_path / "file" / "rep", "--quiet")
    assert r.returncode == 2 and "file" in r.stderr and "panicked" not in r.stderr, r.stderr
    assert time.monotonic() - start < 5, "the analysis ran before the output was checked"


def test_held_lock_gives_a_clear_error(lipattn_bin, minilm, tmp_path):
    (tmp_path / "rep.lock").write_text(f"{os.getpid()}\n")
    r = analyze(lipattn_bin, minilm, tmp_path / "rep")
    assert r.returncode == 2, r.stderr
    assert "rep.lock" in r.stderr and f"pid {os.getpid()}" in r.stderr, r.stderr
    assert not (tmp_path / "rep").exists()
    # A lock whose process is gone is stale and taken over.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "rep.lock").write_text(f"{dead.pid}\n")
    r = analyze(lipattn_bin, minilm, tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert listing(tmp_path) == ["rep"]


def test_directory_of_other_files_is_never_replaced(lipattn_bin, minilm, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    r = analyze(lipattn_bin, minilm, tmp_path)
    assert r.returncode == 2 and "did not write" in r.stderr, r.stderr
    assert listing(tmp_path) == ["mine.txt"]


def test_interrupted_run_leaves_nothing(lipattn_bin, minilm, tmp_path):
    p = subprocess.Popen([lipattn_bin, "analyze", minilm, "--out", str(tmp_path / "rep"), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / f"rep.tmp-{p.pid}").exists():
        assert time.monotonic() < deadline and p.poll() is None, "no staging directory appeared"
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGINT and "interrupted" in err, (p.returncode, err)
    assert listing(tmp_path) == []


def test_failed_run_leaves_no_output_file(lipattn_bin, minilm, tmp_path):
    np.save(tmp_path / "x.npy", np.full((3, 384), np.nan))
    r = run(lipattn_bin, "forward", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "x.npy",
            "--out", tmp_path / "y.npy")
    assert r.returncode == 2, r.stderr
    assert listing(tmp_path) == ["x.npy"]


def test_max_tokens_tokenises_only_what_it_keeps(lipattn_bin, minilm, tmp_path):
    rng = np.random.default_rng(0)
    words = np.array(["the", "licence", "program", "free", "you", "copyright,", "of", "and"])
    text = " ".join(rng.choice(words, 1_000_000))
    (tmp_path / "big.txt").write_text(text)
    (tmp_path / "small.txt").write_text(text[:2000])
    start = time.monotonic()
    r = run(lipattn_bin, "hidden", "--model", minilm, "--text", tmp_path / "big.txt", "--layer", 0,
            "--max-tokens", 64, "--out", tmp_path / "h.npy", "--ids-out", tmp_path / "ids.npy")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - start < 10
    big = np.load(tmp_path / "ids.npy")
    r = run(lipattn_bin, "hidden", "--model", minilm, "--text", tmp_path / "small.txt", "--layer", 0,
            "--max-tokens", 64, "--out", tmp_path / "h.npy", "--ids-out", tmp_path / "ids.npy")
    assert r.returncode == 0, r.stderr
    assert len(big) == 64 and (big == np.load(tmp_path / "ids.npy")).all()
    r = run(lipattn_bin, "hidden", "--model", minilm, "--text", tmp_path / "small.txt", "--layer", 0,
            "--max-tokens", 2, "--out", tmp_path / "h.npy")
    assert r.returncode == 2 and "max_tokens must be at least 3" in r.stderr, r.stderr


@pytest.mark.parametrize("args,needle", [
    (["flow", "--t", -1], "final time must be finite and nonnegative, got -1"),
    (["invert", "--n", 4, "--token-scale", -2], "-2"),
])
def test_negative_numbers_reach_the_range_checks(lipattn_bin, args, needle):
    r = run(lipattn_bin, *args)
    assert r.returncode == 2 and needle in r.stderr and "-- -" not in r.stderr, r.stderr


def test_synthetic_layer_options_conflict_with_a_model(lipattn_bin, minilm):
    r = run(lipattn_bin, "invert", "--model", minilm, "--layer", 0, "--d", 8)
    assert r.returncode != 0 and "cannot be used with" in r.stderr and "--d" in r.stderr, r.stderr


def test_huge_weights_normalise(lipattn_bin, tmp_path):
    np.save(tmp_path / "a.npy", np.array([0.0, 1.0, 2.0]))
    # Summed, the weights overflow to infinity; rescaled they are (1/2, 1/4, 1/4) like wb's.
    np.save(tmp_path / "wa.npy", np.array([1e308, 5e307, 5e307]))
    np.save(tmp_path / "wb.npy", np.array([2.0, 1.0, 1.0]))
    r = run(lipattn_bin, "transport", tmp_path / "a.npy", tmp_path / "a.npy", "--wa", tmp_path / "wa.npy",
            "--wb", tmp_path / "wb.npy", "--normalise", "--json")
    assert r.returncode == 0, r.stderr
    assert abs(json.loads(r.stdout)["cost"]) < 1e-12


def test_too_small_n_says_why(lipattn_bin, minilm, tmp_path):
    r = run(lipattn_bin, "analyze", minilm, "--out", tmp_path / "rep", "--ns", "2,8", "--windows", 1,
            "--layers", 0, "--no-heads", "--no-adversarial", "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    notes = json.loads(r.stdout)["notes"]
    assert any("n = [2] holds no more than the model's 2 special tokens" in n for n in notes), notes
    assert not any("too short" in n for n in notes), notes


LONG_NUMBER = re.compile(r"\d{18,}")


@pytest.mark.parametrize("args,needle", [
    # A value the user gave is echoed with its own digits, never as a 301-digit decimal.
    (["invert", "--n", 4, "--d", 4, "--c", 1e300], "got 1e300"),
    # (clap takes `-1e-300` for a flag: a negative exponent needs the `=` form.)
    (["invert", "--n", 4, "--d", 4, "--c=-1e-300"], "got -1e-300"),
    (["fixed-point", "--n", 4, "--d", 4, "--contract", 1e300], "got 1e300"),
    # A computed one is rounded to 6 significant digits in the same style.
    (["flow", "--n", 4, "--d", 4, "--t", 1e300, "--integrator", "rk4", "--dt", 1.5],
     "final time 1e300 / time step 1.5 = 6.66667e299 steps"),
    (["flow", "--n", 4, "--d", 4, "--t", 1e300, "--integrator", "rk4", "--dt", 1e-300],
     "= inf steps"),
])
def test_numbers_in_messages_are_compact(lipattn_bin, args, needle):
    r = run(lipattn_bin, *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert not LONG_NUMBER.search(r.stderr), r.stderr


def test_weight_sums_keep_the_digits_that_matter(lipattn_bin, tmp_path):
    """A sum off 1 by 3e-8 (the tolerance is 1e-9) is printed with every digit, so the message
    never reads 'sum to 1, not 1'."""
    np.save(tmp_path / "a.npy", np.array([0.0, 1.0]))
    np.save(tmp_path / "w.npy", np.array([0.5, 0.5 + 3e-8]))
    r = run(lipattn_bin, "transport", tmp_path / "a.npy", tmp_path / "a.npy", "--wa", tmp_path / "w.npy")
    assert r.returncode == 2 and "sum to 1.00000003," in r.stderr, r.stderr


def file_cases(tmp, minilm):
    """(arguments, the path the error must name) for every way a command reads or writes a file:
    missing, a directory where a file is expected, and a place under a plain file."""
    (tmp / "plain").write_text("a file, not a directory")
    np.save(tmp / "a.npy", np.array([0.0, 1.0]))
    missing, a_dir, under_file = tmp / "missing.npy", tmp, tmp / "plain" / "x.npy"
    cases = [
        (["transport", missing, tmp / "a.npy"], missing),
        (["transport", tmp / "a.npy", a_dir], a_dir),
        (["transport", tmp / "a.npy", tmp / "a.npy", "--wb", missing], missing),
        (["transport", tmp / "a.npy", tmp / "a.npy", "--cost", missing], missing),
        (["transport", tmp / "a.npy", tmp / "a.npy", "--plan", under_file], under_file),
        (["invert", "--n", 4, "--d", 4, "--tokens", missing], missing),
        (["invert", "--n", 4, "--d", 4, "--save", under_file], under_file),
        (["fixed-point", "--n", 4, "--d", 4, "--plot", tmp / "plain" / "p"], tmp / "plain" / "p"),
        (["flow", "--n", 4, "--d", 4, "--tokens", a_dir], a_dir),
        (["local", "--model", tmp / "no-model", "--layer", 0, "--tokens", tmp / "a.npy"], tmp / "no-model"),
    ]
    if minilm:
        cases += [
            (["forward", "--model", minilm, "--layer", 0, "--tokens", missing, "--out", tmp / "o.npy"], missing),
            (["forward", "--model", minilm, "--layer", 0, "--tokens", tmp / "a.npy", "--out", under_file],
             under_file),
            (["hidden", "--model", minilm, "--text", tmp / "missing.txt", "--layer", 0, "--out", tmp / "h.npy"],
             tmp / "missing.txt"),
            (["analyze", minilm, "--text", a_dir, "--out", tmp / "rep", "--quiet"], a_dir),
            (["analyze", minilm, "--out", tmp / "plain" / "rep", "--quiet"], tmp / "plain" / "rep"),
        ]
    return cases


def test_every_file_error_names_the_file(lipattn_bin, tmp_path):
    minilm = os.environ.get("LIPATTN_MINILM")
    minilm = minilm if minilm and os.path.exists(os.path.join(minilm, "model.safetensors")) else None
    for args, path in file_cases(tmp_path, minilm):
        r = run(lipattn_bin, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert str(path) in r.stderr and "panicked" not in r.stderr, (args, r.stderr)


@pytest.mark.parametrize("kernel,domain", [("dot", "ball"), ("l2", "all")])
def test_invert_answers_about_the_kernel_asked_for(lipattn_bin, kernel, domain):
    """The issue saw `invert --kernel dot` answer about the L2 kernel: the operator line, the
    certificate's domain (dot-product attention has no global constant, so a ball) and the
    JSON say which kernel was analysed."""
    res = subprocess.run([lipattn_bin, "invert", "--kernel", kernel], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert f"{kernel} self-attention" in first, first
    other = "l2" if kernel == "dot" else "dot"
    assert f"{other} self-attention" not in res.stdout
    reports = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
    assert reports and all(r["domain"]["kind"] == domain for r in reports), reports
