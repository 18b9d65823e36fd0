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
