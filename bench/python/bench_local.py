"""Python side of bench/python: layer.local_constant(x) timed end to end from Python (array
conversion, worker thread, result arrays included). Prints one JSON line like bench_local."""
import argparse
import json
import os
import statistics
import time

import numpy as np

import lipattn

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--layer", type=int, default=0)
ap.add_argument("--x", required=True)
ap.add_argument("--dtype", default="f64")
ap.add_argument("--tol", type=float, default=1e-6)
ap.add_argument("--repeats", type=int, default=7)
a = ap.parse_args()

layer = lipattn.AttentionLayer.from_model(a.model, a.layer)
x = np.load(a.x).astype(np.float32 if a.dtype == "f32" else np.float64)
r = layer.local_constant(x, tol=a.tol)  # untimed, as on the Rust side
wall, inner = [], []
for _ in range(a.repeats):
    t0 = time.perf_counter()
    r = layer.local_constant(x, tol=a.tol)
    wall.append((time.perf_counter() - t0) * 1e3)
    inner.append(r.seconds * 1e3)
# wall - inner is the binding's own cost per call (array conversion, worker thread, result
# arrays), free of the machine noise that moves both.
print(json.dumps(dict(side="python", dtype=a.dtype, n=x.shape[0], threads=int(os.environ.get("RAYON_NUM_THREADS", 0)),
                      median_ms=statistics.median(wall), min_ms=min(wall), inner_median_ms=statistics.median(inner),
                      binding_ms_median=statistics.median(w - i for w, i in zip(wall, inner)),
                      sigma=r.sigma, iterations=r.iterations, repeats=a.repeats)))
