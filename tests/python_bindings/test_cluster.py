"""lipattn.cluster on a real local Ray cluster (not a mock): the merged report equals the
single-machine one value for value (and the CSVs and plots byte for byte), a worker killed
mid-task is retried and the report is still complete and identical, a broken checkpoint among
good ones fails only its own report, and a restarted sweep recomputes nothing checkpointed.
MiniLM, layers 0 and 1, n in {8, 16}, one window: four (layer, n) tasks per checkpoint."""

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

if os.environ.get("CI"):
    import ray  # scripts/test.sh installs it (scripts/deps.sh: ensure_ray): never skipped in CI
else:
    ray = pytest.importorskip("ray")

import lipattn  # noqa: E402
from lipattn import cluster  # noqa: E402

GRID = dict(ns=[8, 16], windows=1, layers=[0, 1])
CLI_GRID = ["--ns", "8,16", "--windows", "1", "--layers", "0,1"]


def one_thread():
    """The environment of a single-machine run with lipattn on one thread, as each task runs by
    default (the last bits of some values depend on the thread count: docs/cluster.md#equality)."""
    return dict(os.environ, RAYON_NUM_THREADS="1")


def comparable(report):
    """The report without what may differ between runs: the wall time and the run estimate, and
    with the checkpoint's path (the report's `model`, also in each operator's description) as
    <model>. Every number is kept, compared exactly."""
    r = dict(report)
    r.pop("seconds")
    r.pop("estimate", None)
    return json.loads(json.dumps(r).replace(json.dumps(r["model"])[1:-1], "<model>"))


def load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def reference(minilm, tmp_path_factory):
    """The single-machine analysis of the grid (`Model.analyze`, in a process of one lipattn
    thread)."""
    out = tmp_path_factory.mktemp("reference") / "report.json"
    code = (
        "import json, sys, lipattn; "
        f"r = lipattn.Model(sys.argv[1]).analyze(**{GRID!r}); "
        "json.dump(r, open(sys.argv[2], 'w'))"
    )
    subprocess.run([sys.executable, "-c", code, minilm, str(out)], check=True, env=one_thread())
    return comparable(load(out))


def test_command_local_cluster_equals_single_machine(tmp_path, minilm, lipattn_bin, reference):
    """`python -m lipattn.cluster analyze --local 2`, one Ray task per (layer, n), writes what
    `lipattn analyze` writes: the same report.json values, the same CSVs and plots, byte for
    byte. (The other tests run one Ray task per layer, its two n sharing the layer's setup.)"""
    single = tmp_path / "single"
    subprocess.run(
        [lipattn_bin, "analyze", minilm, "--out", str(single), "--quiet", *CLI_GRID],
        check=True,
        capture_output=True,
        env=one_thread(),
    )
    out = tmp_path / "sweep"
    env = dict(os.environ, LIPATTN_BIN=lipattn_bin)
    done = subprocess.run(
        [sys.executable, "-m", "lipattn.cluster", "analyze", minilm, "--local", "2", "--ns-per-task", "1"]
        + ["--out", str(out), *CLI_GRID],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # progress over all tasks
    assert "[4/4]" in done.stderr, done.stderr
    summary = load(out / "sweep.json")
    (m,) = summary["models"]
    assert (m["status"], m["tasks"], m["computed"], m["reused"]) == ("ok", 4, 4, 0)
    report_dir = out / m["name"] / "report"
    merged = comparable(load(report_dir / "report.json"))
    assert merged == comparable(load(single / "report.json"))
    assert merged == reference
    names = sorted(p.name for p in single.iterdir())
    assert names == sorted(p.name for p in report_dir.iterdir())
    assert {"operators.csv", "points.csv", "layer0.svg", "layer1.png", "exponents.svg"} <= set(names)
    for name in names:
        if name != "report.json":
            assert (single / name).read_bytes() == (report_dir / name).read_bytes(), name
    assert len(list((out / m["name"] / "tasks").glob("*.json"))) == 4


def test_command_passes_attention_and_corpus(tmp_path, minilm, lipattn_bin):
    """`--attention` and `--corpus` reach every task and the CLI that renders the report: the
    sweep's report is `lipattn analyze`'s with the same options; `--text` beside `--corpus` is
    refused before any cluster starts, as the CLI refuses it."""
    grid = ["--ns", "8", "--windows", "1", "--layers", "0", "--no-heads", "--no-adversarial",
            "--attention", "streaming", "--corpus", "licences"]
    single = tmp_path / "single"
    subprocess.run([lipattn_bin, "analyze", minilm, "--out", str(single), "--quiet", *grid],
                   check=True, capture_output=True, env=one_thread())
    out = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "lipattn.cluster", "analyze", minilm, "--local", "1", "--out", str(out), *grid],
        env=dict(os.environ, LIPATTN_BIN=lipattn_bin), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = load(out / "sweep.json")
    (m,) = summary["models"]
    assert m["status"] == "ok" and m["rendered_by"] == lipattn_bin, m
    assert summary["options"]["attention"] == "streaming" and summary["text"] == "embedded corpus 'licences'"
    merged = comparable(load(out / m["name"] / "report" / "report.json"))
    assert merged == comparable(load(single / "report.json"))
    assert "licences" in merged["text_source"]
    assert {p["attention"] for o in merged["operators"] for p in o["points"]} == {"streaming"}

    text = tmp_path / "text.txt"
    text.write_text("a text")
    with pytest.raises(SystemExit):
        cluster._parser().parse_args(["analyze", minilm, "--text", str(text), "--corpus", "licences"])


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of two worker CPUs for the module's sweeps."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_killed_worker_then_resume(tmp_path, minilm, ray_cluster, reference):
    """The first task kills its worker process; Ray retries it and the report is complete and
    identical. A restart after a lost task recomputes that task only, and then nothing."""
    out = tmp_path / "sweep"
    marker = tmp_path / "crashed"
    s = cluster.sweep([minilm], str(out), _crash_once=str(marker), quiet=True, **GRID)
    assert marker.exists(), "no worker was killed"
    (m,) = s["models"]
    assert (m["status"], m["computed"], m["reused"]) == ("ok", 4, 0), m
    report = out / m["name"] / "report" / "report.json"
    assert comparable(load(report)) == reference

    tasks = out / m["name"] / "tasks"
    files = sorted(tasks.glob("*.json"))
    assert len(files) == 4
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    files[2].unlink()  # as if the sweep had died before this task finished
    s = cluster.sweep([minilm], str(out), quiet=True, **GRID)
    (m,) = s["models"]
    assert (m["status"], m["computed"], m["reused"]) == ("ok", 1, 3), m
    for f in sorted(tasks.glob("*.json")):
        if f.name != files[2].name:
            assert f.stat().st_mtime_ns == stamps[f.name], f"{f.name} was recomputed"
    assert comparable(load(report)) == reference

    s = cluster.sweep([minilm], str(out), quiet=True, **GRID)
    (m,) = s["models"]
    assert (m["status"], m["computed"], m["reused"]) == ("ok", 0, 4), m
    assert comparable(load(report)) == reference

    # Other options must not reuse these tasks.
    s = cluster.sweep([minilm], str(out), quiet=True, ns=[8], windows=1, layers=[0, 1])
    (m,) = s["models"]
    assert m["status"] == "failed" and "another sweep" in m["message"], m


def nan_in_layer1(minilm, dest):
    """MiniLM with layer 1's W_Q all NaN: it opens, its layer-0 tasks run, its layer-1 tasks
    raise."""
    os.makedirs(dest)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(minilm, name), dest)
    b = bytearray(open(os.path.join(minilm, "model.safetensors"), "rb").read())
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    s, e = header["encoder.layer.1.attention.self.query.weight"]["data_offsets"]
    b[8 + n + s : 8 + n + e] = np.full((e - s) // 4, np.nan, dtype=np.float32).tobytes()
    with open(os.path.join(dest, "model.safetensors"), "wb") as f:
        f.write(b)


def test_broken_checkpoints_fail_only_their_reports(tmp_path, minilm, ray_cluster, reference):
    """--models over a glob: two good checkpoints get their reports and the comparison; one
    whose layer-1 tasks raise, and one whose file is truncated, fail with their messages."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    os.symlink(os.path.abspath(minilm), ckpts / "a_good")
    os.symlink(os.path.abspath(minilm), ckpts / "b_good")
    nan_in_layer1(minilm, str(ckpts / "c_nan_layer1"))
    (ckpts / "d_truncated").mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(minilm, name), ckpts / "d_truncated")
    (ckpts / "d_truncated" / "model.safetensors").write_bytes(open(os.path.join(minilm, "model.safetensors"), "rb").read(100000))

    out = tmp_path / "sweep"
    s = cluster.sweep(cluster.expand_models(str(ckpts / "*")), str(out), quiet=True, **GRID)
    by = {m["name"]: m for m in s["models"]}
    assert list(by) == ["a_good", "b_good", "c_nan_layer1", "d_truncated"]
    for name in ("a_good", "b_good"):
        assert by[name]["status"] == "ok", by[name]
        assert comparable(load(out / name / "report" / "report.json")) == reference
    c = by["c_nan_layer1"]
    assert c["status"] == "failed" and "layer 1" in c["message"] and "NaN" in c["message"], c
    assert not (out / "c_nan_layer1" / "report").exists()
    d = by["d_truncated"]
    assert d["status"] == "failed" and "safetensors" in d["message"], d
    assert load(out / "sweep.json") == s

    rows = (out / "comparison.csv").read_text().splitlines()
    assert rows[0].startswith("model,layer,radius,n,certified_frobenius")
    assert [r.split(",")[:2] for r in rows[1:]] == [["a_good", "0"], ["a_good", "1"], ["b_good", "0"], ["b_good", "1"]]
    sub = {o["layer"]: o for o in reference["operators"] if o["head"] is None}
    header = rows[0].split(",")
    a0 = dict(zip(header, rows[1].split(",")))
    assert float(a0["text_exponent"]) == sub[0]["fit_text"]["exponent"]
    assert float(a0["gap"]) == sub[0]["points"][-1]["gap"]
    md = (out / "comparison.md").read_text()
    assert "c_nan_layer1: failed" in md and "d_truncated: failed" in md
    assert (out / "comparison.svg").read_text().count("<polyline") >= 4


# --- certification sweeps: `python -m lipattn.cluster certify`, `cluster.certify_sweep` ---------

CERT_TEXT = (
    "Attention layers mix the tokens of a sequence by weights that depend on the tokens themselves, "
    "so their Lipschitz constants grow with the length of the input and with the spread of the "
    "scores. A local certificate bounds the slope of the map on a small ball around one input: it "
    "holds for every perturbation within the radius, unlike an attack, which only finds one. The "
    "certificates here are cut into windows of a text and computed one task at a time on a cluster."
)
# MiniLM, layers 0 and 1, two windows of n = 8 tokens, two radii: eight certificates a model
# (one random start of the ascent besides X, to keep the test short).
CERT_GRID = dict(max_tokens=8, windows=2, layers=[0, 1], epsilon=[1e-4, 1e-3], scope="attention", attack_starts=1)
CERT_CLI_GRID = ["--n", "8", "--windows", "2", "--layers", "0,1", "--epsilon", "1e-4,1e-3"]
CERT_CLI_GRID += ["--scope", "attention", "--attack-starts", "1"]


@pytest.fixture(scope="module")
def certify_reference(minilm, tmp_path_factory):
    """Direct `Model.certify` calls on the grid's windows (words [w*24, (w+1)*24) of CERT_TEXT),
    in a process of one lipattn thread, in the order layer, window, epsilon: {(layer, window,
    epsilon): dict}."""
    d = tmp_path_factory.mktemp("certify_reference")
    out = d / "reference.pkl"
    code = """
import pickle, sys, lipattn
text, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
words = text.split()
m = lipattn.Model(path)
ref = {}
for layer in (0, 1):
    for w in (0, 1):
        window = " ".join(words[w * 24 : (w + 1) * 24])
        for eps in (1e-4, 1e-3):
            ref[(layer, w, eps)] = m.certify(layer, eps, text=window, max_tokens=8, scope="attention", attack_starts=1)
pickle.dump(ref, open(out, "wb"))
"""
    subprocess.run([sys.executable, "-c", code, CERT_TEXT, os.path.abspath(minilm), str(out)], check=True, env=one_thread())
    import pickle

    with open(out, "rb") as f:
        return pickle.load(f)


def same_certificate(got, want, path_as=None):
    """Value for value, except the wall time; arrays bit for bit. `path_as`: (path in `got`, the
    path `want` was computed with)."""
    assert set(got) == set(want)
    for k in want:
        if k == "seconds":
            continue
        a, b = got[k], want[k]
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), k
        elif k == "description" and path_as is not None:
            assert a.replace(*path_as) == b, k
        else:
            assert a == b, k


def test_certify_command_equals_direct_calls_and_resumes(tmp_path, minilm, ray_cluster, certify_reference):
    """`python -m lipattn.cluster certify --address` (the module's running cluster): one Ray task
    per (layer, window, epsilon), each certificate equal to a direct `Model.certify` call with
    the same arguments; certificates.json in the order layer, window, epsilon, the CSV and the
    median table. A resumed sweep recomputes only the lost task, then nothing."""
    text = tmp_path / "text.txt"
    text.write_text(CERT_TEXT)
    out = tmp_path / "sweep"
    model = os.path.abspath(minilm)
    done = subprocess.run(
        [sys.executable, "-m", "lipattn.cluster", "certify", model, "--text", str(text), *CERT_CLI_GRID]
        + ["--address", ray.get_runtime_context().gcs_address, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "[8/8]" in done.stderr, done.stderr
    summary = load(out / "sweep.json")
    (m,) = summary["models"]
    assert (m["status"], m["tasks"], m["computed"], m["reused"]) == ("ok", 8, 8, 0), m
    assert summary["windows"] == [{"window": 0, "words": [0, 24]}, {"window": 1, "words": [24, 48]}]

    records = load(out / "certificates.json")
    keys = [(r["certificate"]["layer"], r["window"], r["certificate"]["epsilon"]) for r in records]
    assert keys == list(certify_reference)  # model, layer, window, epsilon
    for r, key in zip(records, keys):
        assert r["model"] == m["name"]
        same_certificate(cluster.load_certificate_arrays(out / m["name"], r["certificate"]), certify_reference[key])

    rows = (out / "certificates.csv").read_text().splitlines()
    header = rows[0].split(",")
    for col in ("scope", "layer", "window", "n", "epsilon", "certified", "certified_kind", "failure_probability"):
        assert col in header
    for col in ("attained", "ratio", "output_change", "seconds"):
        assert col in header
    assert len(rows) == 9
    for line, key in zip(rows[1:], keys):
        row = dict(zip(header, line.split(",")))
        want = certify_reference[key]
        assert (int(row["layer"]), int(row["window"]), float(row["epsilon"])) == key
        assert (row["scope"], int(row["n"]), row["certified_kind"]) == ("attention", 8, want["certified_kind"])
        # The domain of every number: the attention scope has no chain, so no interval set.
        assert (row["norm"], row["dtype"], row["intervals"]) == (want["norm"], want["dtype"], ""), row
        for col in ("certified", "failure_probability", "attained", "ratio", "output_change"):
            assert float(row[col]) == want[col], col
    md = (out / "certificates.md").read_text().splitlines()
    first = certify_reference[keys[0]]
    assert f"Scope attention, pool {first['pool']}, {first['ball']} balls" in md[0], md[0]
    assert f"{first['norm']} norm of the Jacobian, {first['dtype']}." in md[0], md[0]
    assert md[2].startswith("| model | layer | epsilon | median certified/attained |")
    table = md[4:]
    assert len(table) == 4  # (layer, epsilon)
    ratio = np.median([certify_reference[(1, w, 1e-3)]["ratio"] for w in (0, 1)])
    assert table[3].startswith(f"| {m['name']} | 1 | 0.001 | {ratio:.3g} |"), table

    tasks = out / m["name"] / "tasks"
    files = sorted(tasks.glob("*.json"))
    assert len(files) == 8 and len(list(tasks.glob("*.npy"))) == 16
    stamps = {f.name: f.stat().st_mtime_ns for f in tasks.iterdir()}
    lost = 5
    stem = cluster.certificate_stem(*keys[lost])
    (tasks / f"{stem}.json").unlink()  # as if the sweep had died before this task finished
    s = cluster.certify_sweep([model], str(out), text=CERT_TEXT, quiet=True, **CERT_GRID)
    (m,) = s["models"]
    assert (m["status"], m["computed"], m["reused"]) == ("ok", 1, 7), m
    stamps = {k: v for k, v in stamps.items() if not k.startswith(stem + ".")}
    assert {f.name: f.stat().st_mtime_ns for f in tasks.iterdir() if not f.name.startswith(stem + ".")} == stamps
    s = cluster.certify_sweep([model], str(out), text=CERT_TEXT, quiet=True, **CERT_GRID)
    (m,) = s["models"]
    assert (m["status"], m["computed"], m["reused"]) == ("ok", 0, 8), m
    assert {f.name: f.stat().st_mtime_ns for f in tasks.iterdir() if not f.name.startswith(stem + ".")} == stamps
    again = load(out / "certificates.json")
    assert [r for i, r in enumerate(again) if i != lost] == [r for i, r in enumerate(records) if i != lost]
    for r, key in zip(again, keys):
        same_certificate(cluster.load_certificate_arrays(out / m["name"], r["certificate"]), certify_reference[key])

    # Other options must not reuse these certificates.
    s = cluster.certify_sweep([model], str(out), text=CERT_TEXT, quiet=True, **dict(CERT_GRID, epsilon=[1e-2]))
    (m,) = s["models"]
    assert m["status"] == "failed" and "another sweep" in m["message"], m


def test_certify_broken_checkpoints_fail_only_their_models(tmp_path, minilm, ray_cluster, certify_reference):
    """--models over a glob: the good checkpoint's certificates equal the direct calls; one whose
    layer-1 certificates raise, and one whose file is truncated, fail with their messages in
    sweep.json and certificates.md, and appear nowhere in certificates.json."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    os.symlink(os.path.abspath(minilm), ckpts / "a_good")
    nan_in_layer1(minilm, str(ckpts / "c_nan_layer1"))
    (ckpts / "d_truncated").mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(minilm, name), ckpts / "d_truncated")
    (ckpts / "d_truncated" / "model.safetensors").write_bytes(open(os.path.join(minilm, "model.safetensors"), "rb").read(100000))

    out = tmp_path / "sweep"
    grid = dict(CERT_GRID, windows=1, epsilon=[1e-4])
    s = cluster.certify_sweep(cluster.expand_models(str(ckpts / "*")), str(out), text=CERT_TEXT, quiet=True, **grid)
    by = {m["name"]: m for m in s["models"]}
    assert list(by) == ["a_good", "c_nan_layer1", "d_truncated"]
    assert (by["a_good"]["status"], by["a_good"]["computed"]) == ("ok", 2), by["a_good"]
    c = by["c_nan_layer1"]
    assert c["status"] == "failed" and "layer 1" in c["message"] and "NaN" in c["message"], c
    d = by["d_truncated"]
    assert d["status"] == "failed" and "safetensors" in d["message"], d
    assert load(out / "sweep.json") == s

    records = load(out / "certificates.json")
    assert [(r["model"], r["certificate"]["layer"], r["window"]) for r in records] == [("a_good", 0, 0), ("a_good", 1, 0)]
    path_as = (str(ckpts / "a_good"), os.path.abspath(minilm))
    for r in records:
        key = (r["certificate"]["layer"], 0, 1e-4)
        same_certificate(cluster.load_certificate_arrays(out / "a_good", r["certificate"]), certify_reference[key], path_as)
    assert len((out / "certificates.csv").read_text().splitlines()) == 3
    md = (out / "certificates.md").read_text()
    assert "c_nan_layer1: failed" in md and "d_truncated: failed" in md


def test_certify_refuses_a_short_text_and_layers_with_scope_model(tmp_path, ray_cluster):
    with pytest.raises(ValueError, match="words"):
        cluster.certify_sweep(["x"], str(tmp_path), text="too short", max_tokens=8, epsilon=1e-3)
    with pytest.raises(ValueError, match="no layers"):
        cluster.certify_sweep(["x"], str(tmp_path), text=CERT_TEXT, max_tokens=8, epsilon=1e-3, scope="model", layers=[0])
