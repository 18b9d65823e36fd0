"""Sweeps of ``lipattn analyze`` and ``lipattn certify`` on a Ray cluster: ``python -m
lipattn.cluster analyze|certify ...`` or ``lipattn-cluster analyze|certify ...``
(``pip install lipattn[ray]``).

The analysis of each checkpoint is cut into its (layer, n) tasks (``Model.analysis_tasks``), each
run as a Ray task (``Model.analysis_task``, GIL released) on a worker that keeps every checkpoint
it has loaded; each finished task is checkpointed to the output directory (temporary file, then
rename), and the results are merged (``Model.merge_analysis``) into the report a single
``lipattn analyze`` run writes, value for value. A restarted sweep reuses the checkpointed tasks.
A worker killed mid-task has its task retried by Ray (``max_retries``); an exception in a task (a
broken checkpoint) fails that model's report only, with its message in ``sweep.json``.

Layout of ``--out DIR``::

    DIR/sweep.json                 per model: status, message, tasks run and reused, seconds
    DIR/comparison.csv, .md, .svg  per model and layer: exponents and gaps (sublayer, largest n)
    DIR/<model>/options.json       what the checkpointed tasks were computed with
    DIR/<model>/tasks/             one JSON result per (layer, n) task
    DIR/<model>/report/            report.json (+ CSVs and plots when the lipattn CLI is found)

``certify`` (``certify_sweep``) runs ``Model.certify`` as one Ray task per (model, layer, window,
epsilon) on windows of a text, with the same workers, checkpoints, resume and faults; it writes
``DIR/certificates.json`` (records in the order model, layer, window, epsilon),
``certificates.csv``, ``certificates.md`` (medians over the windows), ``sweep.json`` and
``DIR/<model>/tasks/`` (each certificate's JSON and its arrays as .npy files).

docs/cluster.md in the repository describes the cut, the faults and measured scaling.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

# What each task and the merge read: the options of `lipattn analyze` that the Python analysis
# takes (`Model.analyze`'s keywords), with their defaults (None: the library's default).
OPTION_KEYS = ("ns", "windows", "layers", "heads", "adversarial", "tol", "attention", "corpus")


def _ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - the tests install Ray
        raise ImportError("lipattn.cluster needs Ray: pip install 'lipattn[ray]'") from e
    return ray


# Per worker process: the checkpoints it has opened, so that each is loaded once per worker.
_MODELS: dict = {}


def _model(path):
    import lipattn

    m = _MODELS.get(path)
    if m is None:
        m = _MODELS[path] = lipattn.Model(path)
    return m


def _run_tasks(path, layer, ns, text, options, crash_once=None):
    """The (layer, n) tasks, n in `ns`, of the analysis of the checkpoint at `path`, in one call
    sharing the layer's setup: their results as JSON texts, n ascending.
    `crash_once` (tests only): a file path; the first task to find it absent creates it and
    kills its own worker process, as a node failure would."""
    if crash_once is not None and not os.path.exists(crash_once):
        with open(crash_once, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)
    return _model(path).analysis_layer_tasks(layer, ns, text, **options)


def _model_status(m):
    """What sweep.json says of one model in either sweep."""
    return {
        "name": m.name,
        "path": m.path,
        "status": "failed" if m.error is not None else "ok",
        "message": m.error,
        "tasks": len(m.tasks),
        "computed": m.computed,
        "reused": m.reused,
    }


def _atomic(path, write, mode="w", suffix=""):
    """Writes `path` through `write(file)` into a temporary file beside it, then renames it into
    place: a crash leaves the old file or none, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write(path, text):
    _atomic(path, lambda f: f.write(text))


def task_file(tasks_dir, layer, n):
    """Where the result of task (layer, n) is checkpointed."""
    return os.path.join(tasks_dir, f"layer{layer:04d}_n{n:07d}.json")


def _model_names(paths):
    names, seen = [], {}
    for p in paths:
        base = os.path.basename(os.path.normpath(p)) or "model"
        k = seen.get(base, 0)
        seen[base] = k + 1
        names.append(base if k == 0 else f"{base}_{k + 1}")
    return names


def expand_models(spec):
    """`DIR1,DIR2,...`, each item a directory or a glob pattern (sorted matches)."""
    out = []
    for item in [s for s in spec.split(",") if s]:
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item))
            if not matches:
                raise ValueError(f"--models pattern {item!r} matches nothing")
            out.extend(matches)
        else:
            out.append(item)
    return out


class _ModelSweep:
    """One checkpoint's share of a sweep."""

    def __init__(self, path, name, out):
        self.path = path
        self.name = name
        self.dir = os.path.join(out, name)
        self.tasks_dir = os.path.join(self.dir, "tasks")
        self.report_dir = os.path.join(self.dir, "report")
        self.tasks = []
        self.results = {}
        self.computed = 0
        self.reused = 0
        self.error = None
        self.report = None
        self.rendered_by = None

    def fail(self, message):
        if self.error is None:
            self.error = message


def _identity(path, text, options):
    """What the checkpointed tasks of a model depend on, besides its weights (the task results
    carry the library's fingerprint as well, which the merge checks)."""
    return {
        "model": os.path.abspath(path),
        "options": options,
        "text_sha256": None if text is None else hashlib.sha256(text.encode()).hexdigest(),
    }


def _claim(m, ident):
    """Creates the model's task directory, or checks that its checkpointed tasks were computed
    for `ident` (options.json)."""
    os.makedirs(m.tasks_dir, exist_ok=True)
    ident_path = os.path.join(m.dir, "options.json")
    if os.path.exists(ident_path):
        with open(ident_path) as f:
            old = json.load(f)
        if old != ident:
            raise ValueError(
                f"{m.tasks_dir} holds the tasks of another sweep ({old}); give another --out or remove it"
            )
    else:
        _atomic_write(ident_path, json.dumps(ident, indent=2))


def _prepare(m, text, options):
    """Lists the model's tasks and reads its checkpointed results."""
    import lipattn

    _claim(m, _identity(m.path, text, options))
    model = lipattn.Model(m.path)
    m.tasks = model.analysis_tasks(**options)
    for layer, n in m.tasks:
        p = task_file(m.tasks_dir, layer, n)
        if os.path.exists(p):
            with open(p) as f:
                m.results[(layer, n)] = f.read()
            m.reused += 1
    return model


def _find_cli(lipattn_bin):
    if lipattn_bin:
        return lipattn_bin
    env = os.environ.get("LIPATTN_BIN")
    if env and os.path.exists(env):
        return env
    return shutil.which("lipattn")


def _cli_args(options, text_file):
    a = ["--ns", ",".join(str(n) for n in options["ns"]), "--windows", str(options["windows"])]
    a += ["--tol", repr(options["tol"])]
    if options["layers"] is not None:
        a += ["--layers", ",".join(str(layer) for layer in options["layers"])]
    if not options["heads"]:
        a.append("--no-heads")
    if not options["adversarial"]:
        a.append("--no-adversarial")
    if "attention" in options:
        a += ["--attention", options["attention"]]
    if text_file is not None:
        a += ["--text", text_file]
    elif "corpus" in options:
        a += ["--corpus", options["corpus"]]
    return a


def _corpus_name(corpus):
    return "embedded GPL-3 text" if corpus is None else f"embedded corpus '{corpus}'"


def _render(m, model, text, text_file, options, cli):
    """Merges the model's task results into its report; writes it with the lipattn CLI (the same
    report.json, CSVs and plots as `lipattn analyze`) when one is found, else report.json."""
    results = [m.results[t] for t in m.tasks]
    m.report = model.merge_analysis(results, text, text_source=text_file, **options)
    # The CLI reads the text from a file (and names it by its path): a caller's text given as a
    # string is rendered here.
    if cli is not None and (text is None or text_file is not None):
        cmd = [cli, "analyze", m.path, "--from-tasks", m.tasks_dir, "--out", m.report_dir, "--quiet"]
        cmd += _cli_args(options, text_file)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        m.rendered_by = cli
    else:
        os.makedirs(m.report_dir, exist_ok=True)
        _atomic_write(os.path.join(m.report_dir, "report.json"), json.dumps(m.report, indent=2))
        m.rendered_by = "python (report.json only: no lipattn CLI found for the CSVs and plots)"


def _sublayer_rows(name, report):
    n_max = max(report["ns"])
    rows = []
    for op in report["operators"]:
        if op["head"] is not None:
            continue
        p = next(p for p in op["points"] if p["n"] == n_max)
        heads = [o for o in report["operators"] if o["layer"] == op["layer"] and o["head"] is not None]

        def exponent(fit):
            return None if fit is None else fit["exponent"]

        def med(vals):
            vals = sorted(v for v in vals if v is not None)
            if not vals:
                return None
            k = len(vals) // 2
            return vals[k] if len(vals) % 2 else 0.5 * (vals[k - 1] + vals[k])

        rows.append(
            {
                "model": name,
                "layer": op["layer"],
                "radius": op["radius"],
                "n": n_max,
                "certified_frobenius": p["certified"]["frobenius"],
                "text_max": p["text_max"],
                "adversarial": p["adversarial"],
                "gap": p["gap"],
                "text_exponent": exponent(op["fit_text"]),
                "adversarial_exponent": exponent(op["fit_adversarial"]),
                "certified_exponent": exponent(op["fit_certified"]),
                "head_text_exponent_median": med(exponent(h["fit_text"]) for h in heads),
                "head_adversarial_exponent_median": med(exponent(h["fit_adversarial"]) for h in heads),
            }
        )
    return rows


COMPARISON_COLUMNS = (
    "model",
    "layer",
    "radius",
    "n",
    "certified_frobenius",
    "text_max",
    "adversarial",
    "gap",
    "text_exponent",
    "adversarial_exponent",
    "certified_exponent",
    "head_text_exponent_median",
    "head_adversarial_exponent_median",
)


def _cell(v):
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def _short(v):
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _comparison_svg(rows, path):
    """Per layer, the sublayer's fitted exponents (text, adversarial) and its gap at the largest n,
    one line per checkpoint."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    W, H, L, T, PW, PH, GAP = 980, 420 + 18 * len(models), 70, 40, 380, 300, 110
    panels = [
        ("text_exponent", "adversarial_exponent", "fitted exponent alpha (sublayer)", False),
        ("gap", None, "gap: certified / attained at n = %d" % rows[0]["n"], True),
    ]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">']
    out.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    for k, (key, key2, title, log) in enumerate(panels):
        x0 = L + k * (PW + GAP)
        vals = [r[c] for r in rows for c in (key, key2) if c and r[c] is not None]
        vals = [math.log10(v) for v in vals if v > 0] if log else vals
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.05 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        lmin, lmax = layers[0], layers[-1] if layers[-1] > layers[0] else layers[0] + 1

        def sx(layer):
            return x0 + (layer - lmin) / (lmax - lmin) * PW

        def sy(v):
            v = math.log10(v) if log else v
            return T + PH - (v - lo) / (hi - lo) * PH

        out.append(f'<rect x="{x0}" y="{T}" width="{PW}" height="{PH}" fill="none" stroke="black"/>')
        out.append(f'<text x="{x0 + PW / 2}" y="{T - 12}" text-anchor="middle">{title}</text>')
        out.append(f'<text x="{x0 + PW / 2}" y="{T + PH + 34}" text-anchor="middle">layer</text>')
        for layer in layers:
            out.append(f'<text x="{sx(layer):.1f}" y="{T + PH + 16}" text-anchor="middle">{layer}</text>')
        for j in range(5):
            v = lo + (hi - lo) * j / 4
            y = T + PH - PH * j / 4
            label = f"{10 ** v:.3g}" if log else f"{v:.3g}"
            out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for i, name in enumerate(models):
            color = palette[i % len(palette)]
            for c, dash in ((key, ""), (key2, ' stroke-dasharray="6,4"')):
                if c is None:
                    continue
                pts = [(sx(r["layer"]), sy(r[c])) for r in rows if r["model"] == name and r[c] is not None and (r[c] > 0 or not log)]
                if not pts:
                    continue
                line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
                for x, y in pts:
                    out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    y = T + PH + 60
    out.append(f'<text x="{L}" y="{y}">solid: real text (median over windows); dashed: adversarial construction</text>')
    for i, name in enumerate(models):
        color = palette[i % len(palette)]
        yy = y + 18 * (i + 1)
        out.append(f'<line x1="{L}" y1="{yy - 4}" x2="{L + 24}" y2="{yy - 4}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{L + 30}" y="{yy}">{name}</text>')
    out.append("</svg>")
    _atomic_write(path, "\n".join(out) + "\n")


def _write_comparison(out, sweeps):
    rows = [r for m in sweeps if m.report is not None for r in _sublayer_rows(m.name, m.report)]
    csv = [",".join(COMPARISON_COLUMNS)]
    csv += [",".join(_cell(r[c]) for c in COMPARISON_COLUMNS) for r in rows]
    _atomic_write(os.path.join(out, "comparison.csv"), "\n".join(csv) + "\n")
    md = ["| " + " | ".join(COMPARISON_COLUMNS) + " |", "|" + "---|" * len(COMPARISON_COLUMNS)]
    md += ["| " + " | ".join(_short(r[c]) for c in COMPARISON_COLUMNS) + " |" for r in rows]
    failed = [m for m in sweeps if m.error is not None]
    if failed:
        md.append("")
        md += [f"- {m.name}: failed: {m.error}" for m in failed]
    _atomic_write(os.path.join(out, "comparison.md"), "\n".join(md) + "\n")
    if rows:
        _comparison_svg(rows, os.path.join(out, "comparison.svg"))


def _progress(done, total, what, quiet):
    if not quiet:
        print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True)


def _remote(ray, fn, cpus_per_task, threads, max_retries):
    """`fn` as a Ray task taking `cpus_per_task` CPUs, run with lipattn on `threads` threads,
    retried `max_retries` times when its worker dies (an exception it raises is not retried)."""
    return ray.remote(
        num_cpus=cpus_per_task,
        max_retries=max_retries,
        retry_exceptions=False,
        runtime_env={"env_vars": {"RAYON_NUM_THREADS": str(threads)}},
    )(fn)


def _drain(ray, pending, total, done, quiet):
    """Waits for the Ray tasks of `pending` (ref -> (model sweep, what the task computes, the
    number of results it counts for, finish)), calling finish(result) on each success (it
    checkpoints the result and returns the progress line). A task that raises fails its model
    with the message, and that model's other tasks are cancelled; the other models go on."""
    if done:
        _progress(done, total, "reused from checkpoints", quiet)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            m, what, count, finish = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:
                cause = getattr(e, "cause", None) or e
                m.fail(f"{what}: {type(cause).__name__}: {cause}")
                done += count
                for other in [r for r, v in pending.items() if v[0] is m]:
                    ray.cancel(other)
                    done += pending.pop(other)[2]
                _progress(done, total, f"{m.name}: failed: {m.error}", quiet)
                continue
            line = finish(result)
            done += count
            _progress(done, total, f"{m.name}: {line}", quiet)


def sweep(
    models,
    out,
    *,
    text=None,
    text_file=None,
    ns=(8, 16, 32, 64, 128, 256, 512),
    windows=2,
    layers=None,
    heads=True,
    adversarial=True,
    tol=1e-4,
    attention=None,
    corpus=None,
    cpus_per_task=1,
    threads_per_task=None,
    ns_per_task=None,
    max_retries=3,
    lipattn_bin=None,
    quiet=False,
    _crash_once=None,
):
    """Analyses each checkpoint directory of `models` on the Ray cluster `ray` is connected to
    (call ``ray.init`` first, or use ``main``), writing ``out`` as the module's doc says.
    Returns the summary written to ``out/sweep.json``. The options are those of
    ``Model.analyze`` (``attention`` and ``corpus`` None: the library's defaults); ``text`` None
    analyses the embedded ``corpus`` (``text_file`` names a caller's text in the reports). Each
    task takes ``cpus_per_task`` CPUs of Ray and runs lipattn on ``threads_per_task`` threads
    (default: ``cpus_per_task``); the reports equal those of ``lipattn analyze`` run with
    ``RAYON_NUM_THREADS`` set to that number. A Ray task runs up to ``ns_per_task`` n of one
    layer (default: all of them), sharing the layer's setup; each
    (layer, n) result is checkpointed on its own."""
    ray = _ray()
    if not ray.is_initialized():
        raise RuntimeError("connect to a Ray cluster first (ray.init), or run python -m lipattn.cluster")
    t0 = time.time()
    options = {
        "ns": [int(n) for n in ns],
        "windows": int(windows),
        "layers": None if layers is None else [int(layer) for layer in layers],
        "heads": bool(heads),
        "adversarial": bool(adversarial),
        "tol": float(tol),
        # Left out when not given, so that the library's default applies.
        **{k: v for k, v in (("attention", attention), ("corpus", corpus)) if v is not None},
    }
    os.makedirs(out, exist_ok=True)
    sweeps = [_ModelSweep(p, name, out) for p, name in zip(models, _model_names(models))]
    loaded = {}
    for m in sweeps:
        try:
            loaded[m.name] = _prepare(m, text, options)
        except Exception as e:  # a broken checkpoint or a bad option: this model only
            m.fail(f"{type(e).__name__}: {e}")

    # Each task runs lipattn's rayon pool on `threads_per_task` threads, whatever the node's size:
    # the last bits of some values depend on lipattn's thread count (docs/cluster.md#equality).
    threads = cpus_per_task if threads_per_task is None else threads_per_task
    remote = _remote(ray, _run_tasks, cpus_per_task, threads, max_retries)
    text_ref = ray.put(text)
    pending = {}
    for m in sweeps:
        if m.error is not None:
            continue
        todo = {}
        for layer, n in m.tasks:
            if (layer, n) not in m.results:
                todo.setdefault(layer, []).append(n)
        for layer, ns_left in todo.items():
            k = len(ns_left) if ns_per_task is None else max(1, int(ns_per_task))
            for i in range(0, len(ns_left), k):
                chunk = ns_left[i : i + k]
                ref = remote.remote(os.path.abspath(m.path), layer, chunk, text_ref, options, _crash_once)

                def finish(results, m=m, layer=layer, chunk=chunk):
                    secs = 0.0
                    for n, result in zip(chunk, results):
                        _atomic_write(task_file(m.tasks_dir, layer, n), result)
                        m.results[(layer, n)] = result
                        m.computed += 1
                        secs += json.loads(result)["seconds"]
                    return f"layer {layer}, n = {', '.join(map(str, chunk))} ({secs:.2f} s)"

                pending[ref] = (m, f"tasks (layer {layer}, n in {chunk})", len(chunk), finish)
    _drain(ray, pending, sum(len(m.tasks) for m in sweeps), sum(m.reused for m in sweeps), quiet)

    cli = _find_cli(lipattn_bin)
    for m in sweeps:
        if m.error is not None:
            continue
        try:
            _render(m, loaded[m.name], text, text_file, options, cli)
        except Exception as e:
            m.fail(f"merge: {type(e).__name__}: {e}")
    _write_comparison(out, sweeps)
    summary = {
        "options": options,
        "threads_per_task": threads,
        "ns_per_task": ns_per_task,
        "text": text_file or (_corpus_name(corpus) if text is None else "text given by the caller"),
        "seconds": time.time() - t0,
        "models": [
            {
                **_model_status(m),
                "task_seconds": sum(json.loads(r)["seconds"] for r in m.results.values()),
                "report": None if m.error is not None else os.path.join(m.name, "report"),
                "rendered_by": m.rendered_by,
            }
            for m in sweeps
        ],
    }
    _atomic_write(os.path.join(out, "sweep.json"), json.dumps(summary, indent=2))
    return summary


# ---------------------------------------------------------------------------------------------
# Certification sweeps: the local certificates of `lipattn certify` (`Model.certify`), one Ray
# task per (model, layer, window, epsilon).

# `Model.certify`'s keywords that every task of a certification sweep shares (None: the
# library's default, not passed).
CERTIFY_KEYS = (
    "scope",
    "pool",
    "ball",
    "failure_probability",
    "upper_steps",
    "interval_steps",
    "intervals",
    "attack_starts",
    "attack_steps",
    "tol",
    "seed",
)

# The columns of certificates.csv: the model and window, then the certificate's own keys (its
# domain first: scope, ball, radius, norm, dtype and the chain's interval set, empty at scope
# attention, which has no chain).
CERTIFICATE_COLUMNS = (
    "model",
    "scope",
    "pool",
    "layer",
    "window",
    "n",
    "d",
    "ball",
    "epsilon",
    "frobenius_radius",
    "norm",
    "dtype",
    "intervals",
    "certified",
    "certified_kind",
    "failure_probability",
    "attained",
    "ratio",
    "centre_attained",
    "output_change",
    "seconds",
)

# The arrays of a certificate, stored beside its JSON as .npy files.
CERTIFY_ARRAYS = ("x", "attained_input")


def certify_windows(text, max_tokens, windows):
    """The window texts of a certification sweep, as bench/certify/curve.py cuts them: window w
    is the words [w * 3n, (w + 1) * 3n) of `text` (n = `max_tokens`), which `Model.certify`
    cuts to n tokens (a word is at least one token, so 3n words hold n tokens)."""
    words = text.split()
    n, count = int(max_tokens), int(windows)
    if n < 1 or count < 1:
        raise ValueError(f"max_tokens and windows must be at least 1 (got {max_tokens} and {windows})")
    if len(words) < count * 3 * n:
        raise ValueError(
            f"the text has {len(words)} words; {count} windows of max_tokens = {n} need {count * 3 * n} "
            "(3 n words a window)"
        )
    return [" ".join(words[w * 3 * n : (w + 1) * 3 * n]) for w in range(count)]


def _certify_task(path, layer, window_text, max_tokens, epsilon, options):
    """One certificate: `Model.certify` of the checkpoint at `path` on one window, as its dict."""
    return _model(path).certify(layer, epsilon, text=window_text, max_tokens=max_tokens, **options)


def certificate_stem(layer, window, epsilon):
    """The file name (without extension) of task (layer, window, epsilon)'s checkpoint; `layer`
    None (scope 'model') is written `model`."""
    where = "model" if layer is None else f"layer{layer:04d}"
    return f"{where}_window{window:04d}_eps{float(epsilon)!r}"


def _write_npy(path, array):
    import numpy as np

    _atomic(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False), mode="wb", suffix=".npy")


def _store_certificate(tasks_dir, key, cert):
    """Checkpoints one certificate: its arrays as .npy files, then its JSON (the arrays replaced
    by their paths relative to the model's directory), which marks the task done."""
    stem = certificate_stem(*key)
    doc = dict(cert)
    for name in CERTIFY_ARRAYS:
        rel = os.path.join("tasks", f"{stem}.{name}.npy")
        _write_npy(os.path.join(tasks_dir, f"{stem}.{name}.npy"), cert[name])
        doc[name] = rel
    _atomic_write(os.path.join(tasks_dir, f"{stem}.json"), json.dumps(doc, indent=1))
    return doc


def _load_certificate(tasks_dir, key):
    stem = certificate_stem(*key)
    p = os.path.join(tasks_dir, f"{stem}.json")
    if not os.path.exists(p) or not all(
        os.path.exists(os.path.join(tasks_dir, f"{stem}.{name}.npy")) for name in CERTIFY_ARRAYS
    ):
        return None
    with open(p) as f:
        return json.load(f)


def load_certificate_arrays(model_dir, certificate):
    """The certificate of a sweep's certificates.json with its arrays (`x`, `attained_input`)
    read back from their .npy files under `model_dir` (DIR/<model>): the dict `Model.certify`
    returned."""
    import numpy as np

    c = dict(certificate)
    for name in CERTIFY_ARRAYS:
        c[name] = np.load(os.path.join(model_dir, c[name]), allow_pickle=False)
    return c


def _median(vals):
    vals = sorted(vals)
    k = len(vals) // 2
    return vals[k] if len(vals) % 2 else 0.5 * (vals[k - 1] + vals[k])


def _write_certificates(out, sweeps, max_tokens):
    """certificates.json (records in the order model, layer, window, epsilon), certificates.csv
    and certificates.md (medians over the windows per model, layer and epsilon)."""
    records = []
    for m in sweeps:
        if m.error is not None:
            continue
        for key in m.tasks:
            records.append({"model": m.name, "window": key[1], "certificate": m.results[key]})
    _atomic_write(os.path.join(out, "certificates.json"), json.dumps(records, indent=1))
    rows = [dict(r["certificate"], model=r["model"], window=r["window"]) for r in records]
    csv = [",".join(CERTIFICATE_COLUMNS)]
    csv += [",".join(_cell(r.get(c)) for c in CERTIFICATE_COLUMNS) for r in rows]
    _atomic_write(os.path.join(out, "certificates.csv"), "\n".join(csv) + "\n")
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["layer"], r["epsilon"]), []).append(r)
    # A sweep runs one set of options, so the first certificate states every row's domain.
    domain = ""
    if rows:
        r0 = rows[0]
        chain = "" if r0.get("intervals") is None else f", intervals {r0['intervals']}"
        domain = (
            f" Scope {r0['scope']}, pool {r0['pool']}, {r0['ball']} balls of radius epsilon, "
            f"{r0['norm']} norm of the Jacobian, {r0['dtype']}{chain}."
        )
    md = [
        f"Medians over the windows (max_tokens = {max_tokens}) of each model, layer and epsilon.{domain}",
        "",
        "| model | layer | epsilon | median certified/attained | median certified | median attained | windows |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, layer, eps), rs in groups.items():
        md.append(
            f"| {name} | {'-' if layer is None else layer} | {eps:g} | {_median([r['ratio'] for r in rs]):.3g} "
            f"| {_median([r['certified'] for r in rs]):.4g} | {_median([r['attained'] for r in rs]):.4g} | {len(rs)} |"
        )
    failed = [m for m in sweeps if m.error is not None]
    if failed:
        md.append("")
        md += [f"- {m.name}: failed: {m.error}" for m in failed]
    _atomic_write(os.path.join(out, "certificates.md"), "\n".join(md) + "\n")
    return records


def certify_sweep(
    models,
    out,
    *,
    text,
    max_tokens,
    epsilon,
    windows=2,
    layers=None,
    scope=None,
    pool=None,
    ball=None,
    failure_probability=None,
    upper_steps=None,
    interval_steps=None,
    intervals=None,
    attack_starts=None,
    attack_steps=None,
    tol=None,
    seed=None,
    text_file=None,
    cpus_per_task=1,
    threads_per_task=None,
    max_retries=3,
    quiet=False,
):
    """Local certificates (``Model.certify``) of each checkpoint directory of `models` on the
    Ray cluster `ray` is connected to, one Ray task per (model, layer, window, epsilon): every
    `epsilon` (a number or a list) on `windows` windows of `text` (``certify_windows``, each cut
    to `max_tokens` tokens), for the `layers` (None: all layers of each model; scope 'model'
    takes none). `scope`, `pool`, `ball`, `failure_probability`, `upper_steps`,
    `interval_steps`, `intervals`, `attack_starts`, `attack_steps`, `tol` and `seed` are
    ``Model.certify``'s (None: its default). Writes ``out/certificates.json`` (records ``{"model", "window",
    "certificate"}``, the certificate being the dict ``Model.certify`` returned, its arrays
    ``x`` and ``attained_input`` as paths of .npy files under ``out/<model>``), certificates.csv,
    certificates.md and sweep.json, which it returns. Threads, retries, per-task checkpoints,
    resume and the failure of one model alone work as in ``sweep``."""
    import lipattn

    ray = _ray()
    if not ray.is_initialized():
        raise RuntimeError("connect to a Ray cluster first (ray.init), or run python -m lipattn.cluster")
    t0 = time.time()
    epsilons = [float(e) for e in (epsilon if isinstance(epsilon, (list, tuple)) else [epsilon])]
    if not epsilons:
        raise ValueError("give at least one epsilon")
    if scope == "model" and layers is not None:
        raise ValueError("scope 'model' certifies the whole model: give no layers")
    window_texts = certify_windows(text, max_tokens, windows)
    given = dict(
        scope=scope,
        pool=pool,
        ball=ball,
        failure_probability=failure_probability,
        upper_steps=upper_steps,
        interval_steps=interval_steps,
        intervals=intervals,
        attack_starts=attack_starts,
        attack_steps=attack_steps,
        tol=tol,
        seed=seed,
    )
    options = {k: v for k, v in given.items() if v is not None}
    ident_options = {
        "command": "certify",
        "max_tokens": int(max_tokens),
        "windows": int(windows),
        "epsilon": epsilons,
        "layers": None if layers is None else [int(layer) for layer in layers],
        # `intervals` only when given: the sweeps checkpointed before it existed still resume.
        **{k: given[k] for k in CERTIFY_KEYS if k != "intervals" or given[k] is not None},
    }
    os.makedirs(out, exist_ok=True)
    sweeps = [_ModelSweep(p, name, out) for p, name in zip(models, _model_names(models))]
    for m in sweeps:
        try:
            _claim(m, _identity(m.path, text, ident_options))
            if scope == "model":
                model_layers = [None]
            elif layers is None:
                model_layers = list(range(lipattn.Model(m.path).num_layers))
            else:
                model_layers = [int(layer) for layer in layers]
            m.tasks = [(layer, w, e) for layer in model_layers for w in range(len(window_texts)) for e in epsilons]
            for key in m.tasks:
                c = _load_certificate(m.tasks_dir, key)
                if c is not None:
                    m.results[key] = c
                    m.reused += 1
        except Exception as e:  # a broken checkpoint or a bad option: this model only
            m.fail(f"{type(e).__name__}: {e}")

    threads = cpus_per_task if threads_per_task is None else threads_per_task
    remote = _remote(ray, _certify_task, cpus_per_task, threads, max_retries)
    window_refs = [ray.put(t) for t in window_texts]
    pending = {}
    for m in sweeps:
        if m.error is not None:
            continue
        for key in m.tasks:
            if key in m.results:
                continue
            layer, w, eps = key
            ref = remote.remote(os.path.abspath(m.path), layer, window_refs[w], int(max_tokens), eps, options)
            where = "model" if layer is None else f"layer {layer}"

            def finish(cert, m=m, key=key, where=where):
                m.results[key] = _store_certificate(m.tasks_dir, key, cert)
                m.computed += 1
                return (
                    f"{where}, window {key[1]}, epsilon {key[2]:g}: certified {cert['certified']:.4g}, "
                    f"attained {cert['attained']:.4g} ({cert['seconds']:.2f} s)"
                )

            pending[ref] = (m, f"certificate ({where}, window {w}, epsilon {eps:g})", 1, finish)
    _drain(ray, pending, sum(len(m.tasks) for m in sweeps), sum(m.reused for m in sweeps), quiet)

    _write_certificates(out, sweeps, int(max_tokens))
    words = 3 * int(max_tokens)
    summary = {
        "command": "certify",
        "options": ident_options,
        "threads_per_task": threads,
        "text": text_file or "text given by the caller",
        "windows": [{"window": w, "words": [w * words, (w + 1) * words]} for w in range(len(window_texts))],
        "seconds": time.time() - t0,
        "models": [
            {
                **_model_status(m),
                "task_seconds": sum(c["seconds"] for c in m.results.values()),
            }
            for m in sweeps
        ],
    }
    _atomic_write(os.path.join(out, "sweep.json"), json.dumps(summary, indent=2))
    return summary


def _int_list(s):
    return [int(x) for x in s.split(",") if x]


def _layers_arg(s):
    return None if s == "all" else _int_list(s)


def _float_list(s):
    return [float(x) for x in s.split(",") if x]


def _common(a):
    """The arguments both commands take: the checkpoints, the cluster, the output and the task
    resources."""
    a.add_argument("model", nargs="?", help="checkpoint directory (or use --models)")
    a.add_argument("--models", help="DIR1,DIR2,... or glob patterns: one report per checkpoint")
    where = a.add_mutually_exclusive_group()
    where.add_argument("--address", help="Ray cluster address (ray://HOST:10001, HOST:6379 or 'auto')")
    where.add_argument("--local", type=int, metavar="N", help="start a local Ray cluster of N worker CPUs")
    a.add_argument("--out", default="lipattn-sweep", help="output directory (default lipattn-sweep)")
    a.add_argument("--cpus-per-task", type=int, default=1, help="CPUs Ray reserves per task (default 1)")
    a.add_argument(
        "--threads-per-task",
        type=int,
        default=None,
        help="lipattn threads per task (default: --cpus-per-task); the results equal a single-machine "
        "run's with RAYON_NUM_THREADS set to it",
    )
    a.add_argument("--max-retries", type=int, default=3, help="Ray retries of a task whose worker died")
    a.add_argument("--quiet", action="store_true", help="no progress lines")


def _parser():
    p = argparse.ArgumentParser(prog="lipattn-cluster", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="lipattn analyze of one or many checkpoints on a Ray cluster")
    _common(a)
    text = a.add_mutually_exclusive_group()
    text.add_argument("--text", help="UTF-8 text file for the real-text windows (default: the embedded --corpus)")
    text.add_argument(
        "--corpus", default=None, help="embedded text when no --text is given: gpl-3 (default) or licences"
    )
    a.add_argument("--ns", type=_int_list, default=[8, 16, 32, 64, 128, 256, 512])
    a.add_argument("--windows", type=int, default=2)
    a.add_argument("--layers", type=_int_list, default=None)
    a.add_argument("--no-heads", action="store_true")
    a.add_argument("--no-adversarial", action="store_true")
    a.add_argument("--tol", type=float, default=1e-4)
    a.add_argument(
        "--attention", default=None, help="attention state of the local constants: auto (default), dense or streaming"
    )
    a.add_argument(
        "--ns-per-task",
        type=int,
        default=None,
        help="n of one layer per Ray task, sharing the layer's setup (default: all; 1: one task per (layer, n))",
    )
    a.add_argument("--lipattn-bin", help="lipattn CLI for the CSVs and plots (default: $LIPATTN_BIN, then PATH)")

    c = sub.add_parser(
        "certify",
        help="lipattn certify (Model.certify) on windows of a text, one Ray task per (model, layer, window, epsilon)",
    )
    _common(c)
    c.add_argument("--text", required=True, help="UTF-8 text file the windows are cut from")
    c.add_argument(
        "--max-tokens", "--n", dest="max_tokens", type=int, required=True, help="tokens per window (n)"
    )
    c.add_argument("--windows", type=int, default=2, help="window w: words [w*3n, (w+1)*3n) of the text (default 2)")
    c.add_argument(
        "--layers", type=_layers_arg, default=None, help="L1,L2,... or 'all' (default all; none for scope model)"
    )
    c.add_argument("--epsilon", type=_float_list, required=True, help="E1,E2,...: the ball radii")
    c.add_argument("--scope", choices=["attention", "sublayer-residual-norm", "block", "model"], default=None)
    c.add_argument("--pool", default=None, help="none, mean or mean-normalised (scope model)")
    c.add_argument("--ball", choices=["frobenius", "tokens"], default=None)
    c.add_argument("--failure-probability", type=float, default=None)
    c.add_argument("--upper-steps", type=int, default=None)
    c.add_argument("--interval-steps", type=int, default=None)
    c.add_argument(
        "--intervals",
        default=None,
        help="blocks or all (scopes block and model): the runs of steps bounded at the centre; all is tighter"
        " at larger radii, its time growing like the cube of the depth",
    )
    c.add_argument("--attack-starts", type=int, default=None)
    c.add_argument("--attack-steps", type=int, default=None)
    c.add_argument("--tol", type=float, default=None)
    c.add_argument("--seed", type=int, default=None)
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    if (args.model is None) == (args.models is None):
        print("lipattn-cluster: give exactly one of MODEL_DIR and --models", file=sys.stderr)
        return 2
    models = [args.model] if args.model else expand_models(args.models)
    text = None
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    if args.command == "certify":
        # Refuse a text too short for the windows before starting a cluster.
        try:
            certify_windows(text, args.max_tokens, args.windows)
        except ValueError as e:
            print(f"lipattn-cluster: {e}", file=sys.stderr)
            return 2
    ray = _ray()
    if args.local is not None:
        ray.init(address="local", num_cpus=args.local, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=args.address, log_to_driver=False)
    common = dict(
        cpus_per_task=args.cpus_per_task,
        threads_per_task=args.threads_per_task,
        max_retries=args.max_retries,
        quiet=args.quiet,
    )
    try:
        if args.command == "certify":
            summary = certify_sweep(
                models,
                args.out,
                text=text,
                text_file=args.text,
                max_tokens=args.max_tokens,
                epsilon=args.epsilon,
                windows=args.windows,
                layers=args.layers,
                **{k: getattr(args, k) for k in CERTIFY_KEYS},
                **common,
            )
            wrote = "certificates.json, .csv and .md"
        else:
            summary = sweep(
                models,
                args.out,
                text=text,
                text_file=args.text,
                ns=args.ns,
                windows=args.windows,
                layers=args.layers,
                heads=not args.no_heads,
                adversarial=not args.no_adversarial,
                tol=args.tol,
                attention=args.attention,
                corpus=args.corpus,
                ns_per_task=args.ns_per_task,
                lipattn_bin=args.lipattn_bin,
                **common,
            )
            wrote = "the comparison table"
    finally:
        ray.shutdown()
    failed = [m for m in summary["models"] if m["status"] != "ok"]
    for m in summary["models"]:
        state = "ok" if m["status"] == "ok" else f"FAILED: {m['message']}"
        print(f"{m['name']}: {state} ({m['computed']} tasks computed, {m['reused']} reused)")
    print(f"wrote {os.path.join(args.out, 'sweep.json')} and {wrote} in {summary['seconds']:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
