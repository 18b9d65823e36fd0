"""Model.analyze is `lipattn analyze --json` from Python: same report, same error messages."""
import json
import threading
import time

import lipattn
import pytest
from cli import run

SMALL = dict(ns=(8, 32), windows=1, layers=[0])
CLI_SMALL = ["--ns", "8,32", "--windows", 1, "--layers", 0]


@pytest.fixture(scope="module")
def model(minilm):
    return lipattn.Model(minilm)


def without_seconds(report):
    """Without the wall time and the run's estimate (its calibration is timed)."""
    report = dict(report)
    del report["seconds"]
    assert report.pop("estimate")["kind"] == "estimate"
    return report


def test_analyze_equals_cli(lipattn_bin, minilm, model, tmp_path):
    r = run(lipattn_bin, "analyze", minilm, *CLI_SMALL, "--json", "--quiet", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    ref = json.loads(r.stdout)
    got = model.analyze(**SMALL)
    assert isinstance(got, dict) and set(got) == set(ref)
    assert isinstance(got["seconds"], float) and got["seconds"] > 0
    assert without_seconds(got) == without_seconds(ref)
    # The configuration really is the requested one (not a default that happens to match).
    assert got["ns"] == [8, 32] and got["windows"] == 1 and {o["layer"] for o in got["operators"]} == {0}
    assert len(got["operators"]) == 1 + got["heads"]
    assert got["text_source"] == "GPL-3 licence text (embedded default)"
    assert all(len(p["text"]) == 1 for o in got["operators"] for p in o["points"])


def test_analyze_options_and_caller_text(model):
    got = model.analyze("The quick brown fox jumps over the lazy dog. " * 8, ns=[8], windows=1, layers=[1],
                        heads=False, adversarial=False, tol=1e-3)
    assert got["text_source"] == "text given by the caller"
    assert got["lanczos_tol"] == 1e-3
    (op,) = got["operators"]
    assert op["layer"] == 1 and op["head"] is None
    (p,) = op["points"]
    assert p["adversarial"] is None and p["transition"] is None and p["text_max"] > 0
    assert p["certified"]["frobenius"] >= p["text_max"]


@pytest.mark.parametrize("kwargs,cli_args,message", [
    (dict(ns=[1]), ["--ns", 1], "sequence length 1 is below 2"),
    (dict(ns=[8, 4096]), ["--ns", "8,4096"], "sequence length 4096 exceeds the model's position table: max_position_embeddings = 512"),
    (dict(layers=[0, 99]), ["--layers", "0,99"], "layer 99 out of range"),
    (dict(windows=0), ["--windows", 0], "windows must be at least 1"),
])
def test_bad_requests_raise_the_library_message(lipattn_bin, minilm, model, tmp_path, kwargs, cli_args, message):
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=message) as e:
        model.analyze(**args)
    r = run(lipattn_bin, "analyze", minilm, *CLI_SMALL, *cli_args, "--json", "--quiet", "--out", tmp_path)
    assert r.returncode != 0
    assert str(e.value) in r.stderr


@pytest.mark.parametrize("kwargs,message", [
    (dict(ns=[]), "empty"),
    (dict(layers=[]), "empty"),
    (dict(tol=0.0), "tol must be positive"),
    (dict(tol=float("nan")), "tol must be positive"),
])
def test_bad_options_raise_value_error(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.analyze(**{**SMALL, **kwargs})


def test_analyze_releases_the_gil(model):
    done = threading.Event()
    ticks = []

    def work():
        model.analyze(ns=[8, 64], windows=1, layers=[0])
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.005)
    t.join()
    assert len(ticks) >= 5


def test_ctrl_c_interrupts_analyze(model):
    import _thread

    job = dict(ns=(8, 64), windows=1, layers=[0])
    start = time.perf_counter()
    model.analyze(**job)
    full = time.perf_counter() - start
    assert full > 0.5, "the analysis is too short to show an interruption"
    # What a Ctrl-C does: trip the main thread's SIGINT handler.
    timer = threading.Timer(0.1, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        model.analyze(**job)
    elapsed = time.perf_counter() - start
    timer.cancel()
    assert elapsed < full / 2, (elapsed, full)
    # The abandoned analysis finishes in the background; let it, so later timings are not skewed.
    time.sleep(full)


def same_values(a, b, path="report"):
    """`a` equals `b` key for key, floats to 1e-8 relative (dense and streaming states round
    differently), except what says how the local constants ran: each point's `attention`."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k != "attention":
                same_values(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same_values(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-8, abs=1e-300), path
    else:
        assert a == b, path


def points(report):
    return [p for o in report["operators"] for p in o["points"]]


def test_analyze_streaming_equals_dense(model):
    """`attention=` is `lipattn analyze --attention`: the streaming state gives the dense values,
    and every point says which state ran."""
    job = dict(ns=(8, 32), windows=1, layers=[0], tol=1e-10)
    r = {a: without_seconds(model.analyze(attention=a, **job)) for a in ("dense", "streaming", "auto")}
    for a in ("dense", "streaming"):
        assert {p["attention"] for p in points(r[a])} == {a}
    # At n = 32 the dense state fits any budget.
    assert {p["attention"] for p in points(r["auto"])} == {"dense"}
    same_values(r["streaming"], r["dense"])
    assert r["auto"] == r["dense"]


def test_analyze_corpus_equals_cli(lipattn_bin, minilm, model, tmp_path):
    """`corpus=` is `lipattn analyze --corpus`: the same report, the licences text named."""
    job = dict(ns=[8], windows=1, layers=[0], heads=False, adversarial=False)
    got = model.analyze(corpus="licences", **job)
    assert "embedded corpus 'licences'" in got["text_source"]
    assert got["text_tokens"] > 30_000
    r = run(lipattn_bin, "analyze", minilm, "--corpus", "licences", "--ns", 8, "--windows", 1, "--layers", 0,
            "--no-heads", "--no-adversarial", "--json", "--quiet", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert without_seconds(got) == without_seconds(json.loads(r.stdout))
    assert model.analyze(corpus="licenses", **job)["text_source"] == got["text_source"]


def test_task_cut_takes_attention_and_corpus(model):
    """The task methods take the same options, and their merge is `analyze`'s report."""
    opts = dict(ns=[8, 16], windows=1, layers=[0], heads=False, attention="streaming", corpus="licences")
    tasks = model.analysis_tasks(**opts)
    assert tasks == [(0, 8), (0, 16)]
    results = [model.analysis_task(layer, n, **opts) for layer, n in tasks]
    def values(texts):
        return [{k: v for k, v in json.loads(t).items() if k != "seconds"} for t in texts]

    assert values(model.analysis_layer_tasks(0, [8, 16], **opts)) == values(results)
    merged = model.merge_analysis(results, **opts)
    want = model.analyze(**opts)
    for report in (merged, want):
        report.pop("seconds")
        report.pop("estimate", None)
    assert merged == want
    assert {p["attention"] for p in points(merged)} == {"streaming"}
    assert "licences" in merged["text_source"]


@pytest.mark.parametrize("call", ["analyze", "analysis_tasks", "analysis_task", "analysis_layer_tasks",
                                  "merge_analysis"])
def test_bad_attention_or_corpus_is_a_value_error_naming_it(model, call):
    args = {"analyze": (), "analysis_tasks": (), "analysis_task": (0, 8), "analysis_layer_tasks": (0, [8]),
            "merge_analysis": ([],)}[call]
    fn = getattr(model, call)
    with pytest.raises(ValueError, match=r"\battention\b.*sparse"):
        fn(*args, attention="sparse", **SMALL)
    with pytest.raises(ValueError, match=r"\bcorpus\b.*bible"):
        fn(*args, corpus="bible", **SMALL)
    if call != "analysis_tasks":
        # A text beside a corpus: one of them would be ignored (the CLI's --text conflicts with --corpus).
        with pytest.raises(ValueError, match=r"text and corpus 'licences'"):
            fn(*args, "some text", corpus="licences", **SMALL)
