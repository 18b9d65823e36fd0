"""Every numeric option of every command under boundary values (#16 item 8).

Each option is given 0, -1, NaN, inf, -inf, 1e308, -1e308, 1e-308, 2^32, 2^64 - 1, 2^64, a
fraction, an empty string, and the values next to its own limits, on top of a small fast
invocation of its command (a tiny BERT checkpoint written here, or a synthetic layer). Then pairs of
options (`test_pairs_of_numeric_options`). Every run
must end in exit 0 with a valid result (JSON that parses, finite arrays) or exit 2 with a
message on stderr: never a panic, a signal, an allocation failure, or a run past TIMEOUT, under
an address-space cap and a memory budget. `test_every_numeric_option_is_fuzzed` parses each
command's --help, so a numeric option added to a command without a line here fails the suite.
"""
import collections
import concurrent.futures
import json
import os
import re
import resource
import subprocess
import time

import numpy as np
import pytest

import tiny_bert
from tiny_bert import D, WORDS

CAP = 4 << 30
BUDGET = "512M"
TIMEOUT = 20
WORKERS = 2

# The values every numeric option gets.
COMMON = ["0", "-1", "1", "0.5", "nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e-308",
          "4294967296", "18446744073709551615", "18446744073709551616", ""]

# Values next to each option's own limits (documented in --help, docs/commands.md and the
# library's checks); the key is the option, or (command, option) where commands differ.
LIMITS = {
    "--layer": ["2", "3"],  # the model has 2 layers; hidden accepts 2 (the final output)
    "--head": ["2"],  # 2 heads
    "--heads": ["3", "4", "5", "8"],  # with --d 4: heads must divide d
    "--d": ["2", "3", "65536", "100000000"],
    "--n": ["2", "3", "100000", "1000000000"],
    "--ns": ["2", "16", "17", "2,16", "4,4", ",", "4,,8", "3,-1"],
    "--layers": ["0,1", "1,0", "2", "0,0", ",", "0,,1"],
    "--windows": ["2", "1000000"],
    "--max-tokens": ["2", "3", "4"],  # BERT: the 2 special tokens plus 1 is the least
    "--upper-failure-probability": ["1", "1e-300", "5e-324", "0.999999999999"],
    "--upper-steps": ["2", "1000000"],
    "--interval-steps": ["2", "1000000"],
    "--delta": ["1e-300", "5e-324", "1e300"],
    "--cosine": ["1", "0.999999999999", "1e-300", "5e-324"],
    "--epsilon": ["1e-300", "5e-324", "1e300"],
    "--failure-probability": ["1", "1e-300", "5e-324", "0.999999999999"],
    "--attack-starts": ["2", "1000001", "1000000000"],
    "--attack-steps": ["2", "1000001", "1000000000"],
    "--radius": ["1e-300", "1e300", "5e-324"],
    "--c": ["1", "0.999999999999", "0.9999999999999999", "1e-300", "1.0000001"],
    "--contract": ["1", "0.999999999999", "1e-300", "1.0000001"],
    "--beta": ["1", "1.0000001", "1e-300", "1e300"],
    "--anderson-mixing": ["1", "1.0000001", "1e-300"],
    "--anderson-memory": ["2", "1000000"],
    "--broyden-memory": ["2", "1000000"],
    "--anderson-reg": ["1e-300", "1e300"],
    "--p": ["0.999999", "2", "3", "1e-300"],
    "--eps": ["1e-300", "1e-3", "1e300"],
    "--tol": ["1e-300", "1e-17", "1e300"],
    "--atol": ["1e-300", "1e300"],
    "--rtol": ["1e-300", "1e300"],
    "--max-iter": ["2", "1000000"],
    "--max-basis": ["2", "3", "1000000"],
    "--max-steps": ["2", "4", "5"],  # --t 0.5 --dt 0.1 needs 5 steps
    "--t": ["1e-300", "1e300", "10", "10.1"],  # with --max-steps 100 and --dt 0.1
    "--dt": ["1e-300", "1e-9", "1e300"],
    "--h0": ["1e-300", "1e300"],
    "--record": ["1e-300", "1e-9", "0.25", "1e300"],
    "--layernorm-eps": ["1e-300", "1e300"],
    "--cluster-threshold": ["2", "1e-300", "1e300"],
    "--gronwall": ["1e-300", "1e300"],
    "--mean-field": ["2", "4,8", ",", "1000000000"],
    "--mean-field-reference": ["2", "1000000000"],
    "--mean-field-replicates": ["2", "1000000000"],
    "--probes": ["2", "1000001", "1000000000"],
    "--truncation-tol": ["1e-300", "1e300"],
    "--token-scale": ["1e-300", "1e300"],
    "--bias": ["1e-300", "1e300"],
    "--starts": ["2", "1000001", "1000000000"],
    "--steps": ["2", "1000000000"],
    "--atoms": ["2", "1000000000"],
    "--seed": ["9223372036854775808"],
    "--max-memory": ["1", "1K", "64M", "1G", "16E", "1e30", "0.5K", "18446744073709551615", "12Q", "8 G"],
}

# Per command: its numeric options (every one is fuzzed) and its other options that take a value
# (paths and names), so that the --help check knows every option.
NUMERIC = {
    "analyze": ["--ns", "--windows", "--layers", "--tol", "--max-memory"],
    "forward": ["--layer", "--max-memory"],
    "hidden": ["--layer", "--max-tokens", "--max-memory"],
    "transport": ["--p", "--eps", "--tol", "--max-iter", "--max-memory"],
    "local": ["--layer", "--head", "--tol", "--max-iter", "--max-basis", "--seed", "--max-tokens", "--upper-failure-probability",
              "--upper-steps", "--max-memory"],
    "lipschitz": ["--layer", "--head", "--radius", "--n", "--starts", "--steps", "--atoms", "--seed",
                  "--max-memory"],
    "certify": ["--layer", "--max-tokens", "--epsilon", "--failure-probability", "--upper-steps",
                "--interval-steps", "--attack-starts", "--attack-steps", "--tol", "--seed", "--max-memory"],
    "robustness": ["--layer", "--max-tokens", "--delta", "--cosine", "--failure-probability", "--upper-steps",
                   "--interval-steps", "--attack-starts", "--attack-steps", "--seed", "--max-memory"],
    "reproduce": ["--max-memory"],
    "invert": ["--layer", "--d", "--heads", "--bias", "--seed", "--n", "--token-scale", "--c", "--radius",
               "--atol", "--anderson-memory", "--anderson-reg", "--anderson-mixing", "--broyden-memory",
               "--max-iter", "--probes", "--truncation-tol", "--max-memory"],
    "fixed-point": ["--layer", "--d", "--heads", "--bias", "--seed", "--n", "--token-scale", "--beta",
                    "--contract", "--radius", "--atol", "--anderson-memory", "--anderson-reg",
                    "--anderson-mixing", "--broyden-memory", "--rtol", "--max-iter", "--max-memory"],
    "flow": ["--layer", "--d", "--heads", "--bias", "--seed", "--n", "--token-scale", "--beta", "--t", "--dt",
             "--rtol", "--atol", "--h0", "--record", "--max-steps", "--layernorm-eps", "--cluster-threshold",
             "--gronwall", "--mean-field", "--mean-field-reference", "--mean-field-replicates", "--max-memory"],
}
OTHER = {
    "analyze": ["--text", "--out", "--attention", "--corpus", "--from-tasks"],
    "forward": ["--model", "--tokens", "--weights", "--kernel", "--out"],
    "hidden": ["--model", "--text", "--out", "--ids-out"],
    "transport": ["--wa", "--wb", "--cost", "--method", "--plan"],
    "local": ["--model", "--tokens", "--text", "--scope", "--pool", "--method", "--dtype", "--attention",
              "--save-vector"],
    "lipschitz": ["--model", "--kernel", "--mask", "--save-input", "--save-pair"],
    "certify": ["--model", "--tokens", "--text", "--scope", "--pool", "--ball", "--attention", "--intervals",
                "--save-attained"],
    "robustness": ["--model", "--tokens", "--text", "--scope", "--pool", "--ball", "--attention", "--intervals",
                   "--save-attack"],
    "reproduce": ["--out", "--model"],
    "invert": ["--model", "--kernel", "--tokens", "--solver", "--save", "--plot"],
    "fixed-point": ["--model", "--kernel", "--tokens", "--space", "--variant", "--solver", "--save", "--plot"],
    "flow": ["--model", "--kernel", "--tokens", "--project", "--integrator", "--save", "--plot"],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-cli")
    (d / "bert").mkdir()
    tiny_bert.write(d / "bert")
    rng = np.random.default_rng(1)
    np.save(d / "x.npy", rng.standard_normal((4, D)))
    np.save(d / "a.npy", rng.standard_normal((5, 2)))
    np.save(d / "b.npy", rng.standard_normal((4, 2)))
    (d / "text.txt").write_text(" ".join(rng.choice(WORDS, 60)))
    return d


def base(cmd, f, run):
    """The small, fast invocation of `cmd` each value is tried on: (positional args, options)."""
    m = str(f / "bert")
    out = str(run)
    model = {"--model": m, "--layer": "0"}
    synthetic = {"--d": "4", "--heads": "2", "--n": "3"}
    return {
        "analyze": ([m], {"--ns": "4", "--windows": "1", "--layers": "0", "--no-adversarial": None,
                          "--no-heads": None, "--quiet": None, "--json": None, "--text": str(f / "text.txt"),
                          "--out": out}),
        "forward": ([], {**model, "--tokens": str(f / "x.npy"), "--out": out + ".npy"}),
        "hidden": ([], {**model, "--text": str(f / "text.txt"), "--max-tokens": "8", "--out": out + ".npy"}),
        "transport": ([str(f / "a.npy"), str(f / "b.npy")], {"--json": None}),
        "local": ([], {**model, "--tokens": str(f / "x.npy"), "--json": None}),
        "lipschitz": ([], {**model, "--radius": "2", "--n": "3", "--starts": "1", "--steps": "2", "--atoms": "3",
                           "--json": None}),
        "certify": ([], {**model, "--tokens": str(f / "x.npy"), "--epsilon": "0.1", "--upper-steps": "20",
                         "--attack-starts": "1", "--attack-steps": "3", "--json": None}),
        "robustness": ([], {**model, "--scope": "block", "--tokens": str(f / "x.npy"), "--delta": "0.1",
                            "--upper-steps": "20", "--interval-steps": "10", "--attack-starts": "1",
                            "--attack-steps": "3", "--json": None}),
        "reproduce": ([], {"--out": out, "--quick": None, "--json": None}),
        "invert": ([], {**synthetic, "--max-iter": "100", "--json": None}),
        "fixed-point": ([], {**synthetic, "--contract": "0.5", "--max-iter": "100", "--json": None}),
        "flow": ([], {"--d": "3", "--heads": "1", "--n": "4", "--t": "0.5", "--dt": "0.1", "--record": "0.25",
                      "--json": None}),
    }[cmd]


# Options that only act with others: they are fuzzed where they act.
CONTEXT = {
    ("transport", "--eps"): {"--method": "sinkhorn"},
    ("local", "--upper-steps"): {"--upper-failure-probability": "1e-3"},
    ("certify", "--interval-steps"): {"--scope": "block"},
    ("transport", "--tol"): {"--method": "sinkhorn", "--eps": "0.1"},
    ("transport", "--max-iter"): {"--method": "sinkhorn", "--eps": "0.1", "--accept-unconverged": None},
    ("invert", "--probes"): {"--logdet": None, "--logdet-series": None},
    ("invert", "--truncation-tol"): {"--logdet": None, "--logdet-series": None},
    ("invert", "--radius"): {"--kernel": "dot"},
    ("fixed-point", "--radius"): {"--kernel": "dot"},
    ("fixed-point", "--beta"): {"--variant": "damped"},
    ("flow", "--h0"): {"--integrator": "dopri"},
    ("flow", "--rtol"): {"--integrator": "dopri"},
    ("flow", "--atol"): {"--integrator": "dopri"},
    ("flow", "--layernorm-eps"): {"--project": "layernorm"},
    ("flow", "--beta"): {"--identity": None},
    ("flow", "--t"): {"--max-steps": "100"},
    ("flow", "--mean-field-reference"): {"--mean-field": "4,8"},
    ("flow", "--mean-field-replicates"): {"--mean-field": "4,8"},
}
DYNAMICS = ("invert", "fixed-point", "flow")


def invocation(bin_, cmd, chosen, f, run):
    """The command line of `cmd`'s base invocation with the options `chosen` ({option: value})
    set, each with the options it acts with (CONTEXT)."""
    pos, opts = base(cmd, f, run)
    opts = dict(opts)
    for opt in chosen:
        opts.update(CONTEXT.get((cmd, opt), {}))
    if cmd in DYNAMICS and "--layer" in chosen:
        # A checkpoint layer instead of the synthetic one (the options conflict).
        for k in ("--d", "--heads"):
            opts.pop(k, None)
        opts["--model"] = str(f / "bert")
    if cmd == "robustness" and "--cosine" in chosen:
        # A similarity floor compares pooled embeddings of the whole model (conflicts with --delta).
        for k in ("--delta", "--layer"):
            opts.pop(k, None)
        opts.update({"--scope": "model", "--pool": "mean"})
    if cmd in ("local", "certify", "robustness") and "--max-tokens" in chosen:
        # The model's own input on a text instead of given tokens (the options conflict).
        opts.pop("--tokens")
        opts["--text"] = str(f / "text.txt")
    opts.update(chosen)
    if "--max-memory" not in chosen:
        opts["--max-memory"] = BUDGET
    args = [bin_, cmd, *pos]
    for k, v in opts.items():
        # `--opt=value`: a value such as -inf or an empty string reaches the option's parser.
        args.append(k if v is None else f"{k}={v}")
    return args


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


def check(args, outfile):
    """None if the run ended cleanly, else what went wrong."""
    t0 = time.monotonic()
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        return f"still running after {TIMEOUT} s", TIMEOUT
    took = time.monotonic() - t0
    err = res.stderr
    if res.returncode < 0:
        return f"killed by signal {-res.returncode}: {err[-500:]}", took
    for bad in ("panicked", "RUST_BACKTRACE", "memory allocation of"):
        if bad in err:
            return f"stderr says {bad!r}: {err[-800:]}", took
    if res.returncode == 0:
        if "--json" in args:
            try:
                json.loads(res.stdout)
            except ValueError as e:
                return f"exit 0 but the JSON does not parse ({e}): {res.stdout[:300]}", took
        if outfile and os.path.exists(outfile):
            a = np.load(outfile)
            if not np.all(np.isfinite(a)):
                return f"exit 0 but {outfile} holds non-finite values", took
        return None, took
    if res.returncode != 2:
        return f"exit {res.returncode}: {err[-500:]}", took
    if not err.strip():
        return "exit 2 without a message", took
    return None, took


def test_every_numeric_option_is_fuzzed(lipattn_bin):
    top = subprocess.run([lipattn_bin, "--help"], capture_output=True, text=True).stdout
    commands = re.findall(r"^  ([a-z-]+)\s", top.split("Commands:")[1].split("Options:")[0], re.M)
    assert set(commands) - {"help"} == set(NUMERIC), commands
    for cmd in NUMERIC:
        help_ = subprocess.run([lipattn_bin, cmd, "--help"], capture_output=True, text=True).stdout
        with_value = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+) <", help_, re.M))
        listed = set(NUMERIC[cmd]) | set(OTHER[cmd])
        assert with_value == listed, (cmd, "not listed:", with_value - listed, "gone:", listed - with_value)
        for opt in NUMERIC[cmd]:
            assert opt in LIMITS or opt in ("--tol", "--seed"), (cmd, opt, "has no limit values")


def test_numeric_options_at_their_bounds(lipattn_bin, files, tmp_path):
    jobs = []
    for cmd, opts in NUMERIC.items():
        for opt in opts:
            for value in COMMON + LIMITS.get(opt, []):
                run = tmp_path / f"run{len(jobs)}"
                args = invocation(lipattn_bin, cmd, {opt: value}, files, run)
                outfile = str(run) + ".npy" if cmd in ("forward", "hidden") else None
                jobs.append((cmd, opt, value, args, outfile))
    run_all(jobs, "one option at a time")


def run_all(jobs, what):
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda j: check(j[3], j[4]), jobs))
    wall = time.monotonic() - t0
    tally = collections.Counter(cmd for cmd, *_ in jobs)
    slow = sorted(((t, j[0], j[1], j[2]) for (_, t), j in zip(results, jobs)), reverse=True)[:5]
    print(f"\nfuzz CLI, {what}: {len(jobs)} runs in {wall:.1f} s; per command {dict(tally)}; slowest {slow}")
    failures = [f"{cmd} {opt}={value!r}: {why}\n    {' '.join(args)}"
                for (cmd, opt, value, args, _), (why, _) in zip(jobs, results) if why]
    assert not failures, f"{len(failures)} of {len(jobs)} runs failed:\n" + "\n".join(failures[:40])


# Pairs chosen because each value is harmless alone and the pair is not: a tolerance no solver
# reaches under a large iteration cap, a tiny step under a large step cap, sizes that fit one
# at a time.
HARD_PAIRS = {
    "transport": [{"--tol": "1e-300", "--max-iter": "1000000"}, {"--eps": "1e-300", "--max-iter": "1000000"},
                  {"--p": "2", "--eps": "1e-300"}],
    "invert": [{"--atol": "1e-300", "--max-iter": "1000000"}, {"--c": "0.999999999999", "--max-iter": "1000000"},
               {"--n": "100000", "--d": "65536"}, {"--probes": "1000000", "--truncation-tol": "1e-300"}],
    "fixed-point": [{"--atol": "1e-300", "--max-iter": "1000000"},
                    {"--contract": "0.999999999999", "--max-iter": "1000000"},
                    {"--rtol": "1e-300", "--atol": "1e-300"}],
    "flow": [{"--dt": "1e-300", "--max-steps": "1000000"}, {"--t": "1e300", "--max-steps": "18446744073709551615"},
             {"--record": "1e-300", "--t": "1e-300"}, {"--rtol": "1e-300", "--atol": "1e-300"}],
    "lipschitz": [{"--starts": "1000000", "--steps": "1000000"}, {"--n": "100000", "--atoms": "100000"}],
    "local": [{"--tol": "1e-300", "--max-iter": "1000000"}],
    "analyze": [{"--ns": "16", "--windows": "1000000"}, {"--tol": "1e-300", "--ns": "2,16"}],
}
PAIRS_PER_COMMAND = 100


def test_pairs_of_numeric_options(lipattn_bin, files, tmp_path):
    """Options vary together: the pairs above, and seeded random pairs of the values of the
    test before (each option's boundary and limit values) for every command."""
    import random

    rng = random.Random(16)
    jobs = []

    def add(cmd, chosen):
        run = tmp_path / f"run{len(jobs)}"
        args = invocation(lipattn_bin, cmd, chosen, files, run)
        outfile = str(run) + ".npy" if cmd in ("forward", "hidden") else None
        jobs.append((cmd, " ".join(chosen), " ".join(chosen.values()), args, outfile))

    for cmd, opts in NUMERIC.items():
        for chosen in HARD_PAIRS.get(cmd, []):
            add(cmd, chosen)
        values = [(o, v) for o in opts if o != "--max-memory" for v in COMMON + LIMITS.get(o, [])]
        for _ in range(PAIRS_PER_COMMAND if len(opts) > 2 else 0):
            (o1, v1), (o2, v2) = rng.sample(values, 2)
            if o1 != o2:
                add(cmd, {o1: v1, o2: v2})
    run_all(jobs, "pairs")


# What the fuzzing found, as plain tests of the reproducers (each ran until killed, or misread
# its input, before the fix).
@pytest.mark.parametrize("args,needle", [
    (["lipschitz", "--layer", "0", "--radius", "2", "--n", "3", "--starts", "18446744073709551615"],
     "--starts must be at most 1000000"),
    (["lipschitz", "--layer", "0", "--radius", "2", "--n", "3", "--steps", "1000001"],
     "--steps must be at most 1000000"),
    (["invert", "--d", "4", "--n", "3", "--logdet", "--logdet-series", "--probes", "1000000000"],
     "--probes must be at most 1000000"),
    (["flow", "--d", "3", "--n", "4", "--t", "0.5", "--mean-field", "4,8", "--mean-field-replicates",
      "4294967296"], "replicates must be at most 1000000"),
    (["flow", "--d", "3", "--n", "4", "--token-scale", "1e308"], "--token-scale = 1e308 makes the random tokens overflow"),
    # Found by the pairs: each count within its cap, their product running for days.
    (["lipschitz", "--layer", "0", "--radius", "2", "--n", "3", "--starts", "1000000", "--steps", "1000000"],
     "--starts = 1000000 times --steps = 1000000: 1e12 evaluations in all, above the cap of 1e8"),
    (["invert", "--d", "4", "--n", "3", "--logdet", "--logdet-series", "--probes", "1000000",
      "--truncation-tol", "1e-300"], "--probes = 1000000 times the series terms --truncation-tol asks for"),
])
def test_found_by_fuzzing(lipattn_bin, files, args, needle):
    if args[0] == "lipschitz":
        args = [*args, "--model", str(files / "bert")]
    t0 = time.monotonic()
    res = subprocess.run([lipattn_bin, *args], capture_output=True, text=True, timeout=TIMEOUT,
                         preexec_fn=limit_memory)
    assert res.returncode == 2 and needle in res.stderr, (res.returncode, res.stderr)
    assert time.monotonic() - t0 < 5


def test_empty_minilm_variable_is_unset(lipattn_bin, tmp_path):
    """LIPATTN_MINILM= was read as the path "" (": model directory not found")."""
    res = subprocess.run([lipattn_bin, "reproduce", "--out", tmp_path / "r", "--quick", "--json"],
                         capture_output=True, text=True, env={**os.environ, "LIPATTN_MINILM": ""})
    assert res.returncode == 0, res.stderr
    assert "LIPATTN_MINILM unset" in json.loads(res.stdout)["minilm_ratios"]["skipped"]
