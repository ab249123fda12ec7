"""docs/walkthrough.md runs as written: every command of its bash block, in order, on the
demo models, each exiting 0. In CI's default run (192 s at a load average of 10): a README or docs
command that breaks must fail CI, and the walk-through is the users' first path."""

import json
import re

import numpy as np

from tests.conftest import walkthrough_commands


def test_the_block_is_the_stages_from_generated_faces_without_a_photo():
    commands = walkthrough_commands()
    modules = [re.match(r"python -(?:m|c) (\S+)", c).group(1) for c in commands]
    assert modules[0] == "bridges.demo_models" and modules[-1] == "bridges.evaluate"
    stages = ("bridges.gallery", "bridges.embed", "hyperface_jax.pack", "bridges.generate",
              "hyperface_jax.analyze", "bridges.train")
    assert [m for m in dict.fromkeys(modules) if m in stages] == list(stages)
    assert not any("photos" in c for c in commands)


def test_walkthrough_runs_end_to_end(walked_demo):
    """Every command exited 0 (the session fixture runs them, in order); their outputs."""
    demo = walked_demo["root"] / "demo"
    assert len(list((demo / "faces" / "gallery").glob("*.png"))) == 16
    assert np.load(demo / "runs" / "init.npy").shape == (8, 512)
    assert len(list((demo / "dataset").glob("0*/*.png"))) == 64
    assert np.load(demo / "runs" / "features.npy").shape == (64, 512)
    # generate's own identity_cos.png beside the identity folders is not a sample.
    listing = json.loads((demo / "runs" / "features.json").read_text())
    assert listing["ignored"] == ["identity_cos.png"] and listing["skipped"] == []
    results = json.loads((demo / "runs" / "eval" / "results.json").read_text())
    assert list(results["results"]) == ["demo"]
    seconds = walked_demo["seconds"]
    print(json.dumps(seconds, indent=1), "total", round(sum(seconds.values()), 1))
