"""third_party/fetch_weights.py without internet: one line, exit 1, nothing left behind
(the network is replaced by failing stand-ins; the tests never download)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env

SCRIPT = REPO / "third_party" / "fetch_weights.py"
OFFLINE = """
import socket
def refuse(*a, **k):
    raise socket.gaierror(-2, "Name or service not known")
socket.create_connection = refuse
"""
# The hosts answer, but every download fails (a proxy refusing, a dropped connection).
FAILING = """
import contextlib, socket, urllib.request
socket.create_connection = lambda *a, **k: contextlib.nullcontext()
import huggingface_hub
def refuse(*a, **k):
    raise ConnectionError("Connection reset by peer\\n(and 40 more lines)")
huggingface_hub.hf_hub_download = refuse
urllib.request.urlretrieve = refuse
"""


@pytest.mark.parametrize("stand_in, only, words", [
    (OFFLINE, "sd15,buffalo_l", "error: cannot reach github.com (gaierror"),
    (FAILING, "sd15", "error: cannot fetch {dest}/sd15/model_index.json from "
                      "stable-diffusion-v1-5/stable-diffusion-v1-5/model_index.json "
                      "(ConnectionError: Connection reset by peer)"),
    (FAILING, "buffalo_l", "error: cannot fetch {dest}/buffalo_l/det_10g.onnx from https://"),
])
def test_no_network_is_one_line_and_leaves_nothing(tmp_path, stand_in, only, words):
    dest = tmp_path / "weights"
    lock = tmp_path / "weights.lock.json"
    code = (stand_in + "import runpy, sys\n"
            f"sys.argv = ['fetch_weights.py', '--dest={dest}', '--only={only}', "
            f"'--lock={lock}']\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    # Offline: that one line; a failing download may follow its "downloading <url>" line.
    assert len(lines) == (1 if stand_in is OFFLINE else len(lines)), r.stderr
    assert [ln for ln in lines if not ln.startswith("downloading ")] == lines[-1:], r.stderr
    assert lines[-1].startswith(words.format(dest=dest)), r.stderr
    assert not dest.exists() and not lock.exists()
    assert list(tmp_path.iterdir()) == []
