"""Helpers shared by the CLI tests: running the binary and LayerNorm-like inputs."""
import subprocess


def run(bin_, *args):
    """Runs `lipattn` with the arguments converted to strings; never raises on a non-zero exit."""
    return subprocess.run([bin_, *map(str, args)], capture_output=True, text=True)


def layer_norm_like(rng, n, d):
    """Rows of a Gaussian normalised to mean 0 and variance 1: what a post-LayerNorm layer sees."""
    x = rng.standard_normal((n, d))
    x -= x.mean(axis=1, keepdims=True)
    return x / x.std(axis=1, keepdims=True)
