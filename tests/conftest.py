import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hyperface_jax.options import option

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class OutDir:
    """The smallest CLI config: an output folder (for tests of `cli.run_main`)."""
    out_dir: str = option("", "out", role="output_dir")


def cli_env(**extra) -> dict:
    """Environment for a CLI subprocess: this checkout first on the path, CPU JAX."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.update(extra)
    return env


def devices_env(count: int) -> dict:
    """`cli_env` with `count` forced CPU devices (XLA reads the flag before jax starts)."""
    return cli_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
                   JAX_PLATFORMS="cpu")


def python_on_devices(code: str, devices: int, timeout: float = 240):
    """Run Python `code` in a subprocess with `devices` forced CPU devices."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          env=devices_env(devices), capture_output=True, text=True,
                          timeout=timeout)


def run_module(module: str, *args, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=cli_env(**env),
        capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """The same for a whole test module (its module-scoped fixtures run torch too)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """The 2-core CI machine is shared: torch's 2 intra-op threads spin against other
    processes (60x slower under load); one thread is fastest for tiny models."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def walkthrough_commands() -> list[str]:
    """The commands of docs/walkthrough.md's bash block, continuation lines joined."""
    text = (REPO / "docs" / "walkthrough.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(scope="session")
def walked_demo(tmp_path_factory) -> dict:
    """docs/walkthrough.md run once per session, as written, in a scratch folder (failing
    at the first command that does not exit 0). Its `demo/` (tiny random models in the
    published layouts and every stage's outputs) is what tests/test_walkthrough.py checks
    and what tests/test_docs_commands.py runs the docs' bridges commands on: the demo
    models are built once. {"root": the folder holding demo/, "seconds": per command}."""
    root = tmp_path_factory.mktemp("walkthrough")
    seconds = {}
    for i, command in enumerate(walkthrough_commands()):
        t = time.perf_counter()
        r = subprocess.run(command, shell=True, cwd=root, env=cli_env(),
                           capture_output=True, text=True, timeout=900)
        seconds[f"{i} {command[:40]}"] = round(time.perf_counter() - t, 1)
        assert r.returncode == 0, (command, r.stderr[-2000:])
    return {"root": root, "seconds": seconds}
