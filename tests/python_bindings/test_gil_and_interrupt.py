"""Long computations release the GIL and stop on Ctrl-C."""
import _thread
import threading
import time

import lipattn
import numpy as np
import pytest


@pytest.fixture(scope="module")
def big_layer():
    rng = np.random.default_rng(0)
    d, h = 64, 4
    g = lambda *s: rng.standard_normal(s) / np.sqrt(s[-1])
    return lipattn.AttentionLayer(g(d, d), np.zeros(d), g(d, d), np.zeros(d), g(d, d), np.zeros(d), g(d, d), np.zeros(d), heads=h)


def test_gil_released_during_local_constant(big_layer):
    x = np.random.default_rng(1).standard_normal((256, 64))
    ticks = []
    done = threading.Event()

    def work():
        big_layer.local_constant(x, tol=1e-12, max_iter=60)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    # Python code kept running beside the Rust computation (with the GIL held it could not).
    assert len(ticks) > 5


def test_ctrl_c_interrupts_a_long_search(big_layer):
    # A search long enough (over 1 s on this machine) for an interruption to be visible.
    for starts in [16, 32, 64, 128]:
        search = dict(n=32, radius=2.0, random_starts=starts, steps=12)
        start = time.perf_counter()
        big_layer.ascent(**search)
        full = time.perf_counter() - start
        if full > 1.0:
            break
    assert full > 1.0, "the search is too short to show an interruption"
    # _thread.interrupt_main is what a Ctrl-C does: it trips the SIGINT handler of the main thread.
    timer = threading.Timer(0.2, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        big_layer.ascent(**search)
    elapsed = time.perf_counter() - start
    timer.cancel()
    assert elapsed < 0.2 + 0.5 and elapsed < full / 2, (elapsed, full)
    # The interrupt also raised the search's cancellation flag: it stops at its next check
    # instead of running on in the background, so the process goes idle (CPU time of all
    # threads) while this thread sleeps.
    time.sleep(0.3)
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.2, "the abandoned search kept running"
    # Calls still work afterwards.
    x = np.random.default_rng(2).standard_normal((8, 64))
    lin = big_layer.linearize(x)
    assert big_layer.local_constant(x, tol=1e-10).sigma == pytest.approx(lin.top_singular(tol=1e-10).sigma, rel=1e-8)


def _interrupt_stops(call):
    """Ctrl-C during `call` raises KeyboardInterrupt within half a second and leaves no work
    running in the background."""
    timer = threading.Timer(0.2, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        call()
    elapsed = time.perf_counter() - start
    timer.cancel()
    assert elapsed < 0.2 + 0.5, elapsed
    time.sleep(0.3)
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.2, "the abandoned work kept running"


def test_ctrl_c_stops_sinkhorn_and_logdet_probes():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 0.5
    # A tolerance below what f64 reaches: the sweeps run to max_iter (minutes) unless stopped.
    _interrupt_stops(lambda: lipattn.transport(a, b, method="sinkhorn", eps=0.05, tol=1e-300, max_iter=10**9))
    layer = lipattn.random_layer(16, 2, kernel="l2", seed=1)
    block = lipattn.InvertibleBlock(layer, 16, 0.5)
    x = rng.standard_normal((16, 16))
    _interrupt_stops(lambda: block.logdet(x, method="series", probes=10**6))
