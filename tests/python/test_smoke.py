import os
import subprocess


def test_cli_runs():
    out = subprocess.run([os.environ["LIPATTN_BIN"], "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
