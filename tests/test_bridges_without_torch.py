"""Without the torch extra, every bridges CLI prints one line naming the install command."""

import re
import sys

import pytest

import bridges
from tests.conftest import REPO, cli_env

CLIS = ["bridges.embed", "bridges.gallery", "bridges.generate", "bridges.train",
        "bridges.evaluate",
        "bridges.recognition.digits", "bridges.demo_models"]
# pip name -> import name where they differ.
IMPORT_NAMES = {"scikit-learn": "sklearn", "pillow": "PIL", "opencv-python": "cv2"}


def test_the_checked_modules_are_the_torch_extra_of_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["torch"]
    names = [re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0] for spec in extra]
    assert sorted(IMPORT_NAMES.get(n, n) for n in names) == sorted(bridges.TORCH_EXTRA_MODULES)


@pytest.mark.parametrize("module", CLIS)
def test_cli_without_the_torch_extra_prints_one_line_and_exits_2(module):
    import subprocess

    # Every module of the extra made unimportable (as if never installed) before the CLI
    # module is imported: any top-level import of one of them would be a traceback.
    blocked = ", ".join(repr(m) for m in bridges.TORCH_EXTRA_MODULES)
    code = (f"import sys, runpy\nfor m in ({blocked}):\n    sys.modules[m] = None\n"
            f"sys.argv = ['{module}', '--out_dir=/nonexistent/never']\n"
            f"runpy.run_module('{module}', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {module} needs the torch extra")
    assert "missing: torch, diffusers" in lines[0]
    assert lines[0].endswith("pip install 'hyperface-jax[torch]'")
