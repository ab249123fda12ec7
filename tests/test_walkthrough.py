"""docs/walkthrough.md runs as written: every command of its bash block, in order, on the
demo models, each exiting 0. In CI's default run (192 s at a load average of 10): a README or docs
command that breaks must fail CI, and the walk-through is the users' first path."""

import json
import re
import subprocess
import time

import numpy as np

from tests.conftest import REPO, cli_env


def walkthrough_commands() -> list[str]:
    text = (REPO / "docs" / "walkthrough.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_the_block_is_the_stages_from_generated_faces_without_a_photo():
    commands = walkthrough_commands()
    modules = [re.match(r"python -(?:m|c) (\S+)", c).group(1) for c in commands]
    assert modules[0] == "bridges.demo_models" and modules[-1] == "bridges.evaluate"
    stages = ("bridges.gallery", "bridges.embed", "hyperface_jax.pack", "bridges.generate",
              "hyperface_jax.analyze", "bridges.train")
    assert [m for m in dict.fromkeys(modules) if m in stages] == list(stages)
    assert not any("photos" in c for c in commands)


def test_walkthrough_runs_end_to_end(tmp_path):
    seconds = {}
    for i, command in enumerate(walkthrough_commands()):
        t = time.perf_counter()
        r = subprocess.run(command, shell=True, cwd=tmp_path, env=cli_env(),
                           capture_output=True, text=True, timeout=900)
        seconds[f"{i} {command[:40]}"] = round(time.perf_counter() - t, 1)
        assert r.returncode == 0, (command, r.stderr[-2000:])
    demo = tmp_path / "demo"
    assert len(list((demo / "faces" / "gallery").glob("*.png"))) == 16
    assert np.load(demo / "runs" / "init.npy").shape == (8, 512)
    assert len(list((demo / "dataset").glob("0*/*.png"))) == 64
    assert np.load(demo / "runs" / "features.npy").shape == (64, 512)
    results = json.loads((demo / "runs" / "eval" / "results.json").read_text())
    assert list(results["results"]) == ["demo"]
    print(json.dumps(seconds, indent=1), "total", round(sum(seconds.values()), 1))
