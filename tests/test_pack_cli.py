"""`python -m hyperface_jax.pack`: end to end, bad input, resume after SIGKILL."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hyperface_jax import pack
from tests.conftest import REPO, cli_env, run_module

SMALL = ["--num_identities=60", "--dim=8", "--alpha=0", "--steps=20", "--log_every=10",
         "--checkpoint_every=10", "--progress=false"]


def _unit(rows, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(rows, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_quickstart_config_runs_end_to_end(tmp_path):
    out = tmp_path / "qs"
    # The quickstart flagfile as shipped, shortened so CI stays quick.
    r = run_module("hyperface_jax.pack", "--flagfile=configs/quickstart.flags",
                   f"--out_dir={out}", "--steps=60", "--progress=false")
    assert r.returncode == 0, r.stderr
    x = np.load(out / "embeddings.npy")
    assert x.dtype == np.float32 and x.shape == (2000, 512)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["flags"]["num_identities"] == 2000 and report["steps"] == 60
    assert report["figures"]["max_cos"] < report["initial_figures"]["max_cos"]
    assert report["figures"]["mean_nn_cos"] < report["initial_figures"]["mean_nn_cos"]
    for key in ("jax_version", "backend", "wall_seconds", "seconds_per_step"):
        assert report[key] is not None
    # The figures in the report are those of the written embeddings.
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    assert abs(report["figures"]["max_cos"] - s.max()) < 1e-5
    assert (out / "curves.png").stat().st_size > 10_000
    assert any(p.name.isdigit() for p in (out / "checkpoints").iterdir())


def test_gallery_init_and_regulariser_through_the_cli(tmp_path):
    gallery = tmp_path / "gallery.npy"
    np.save(gallery, _unit(80, 8))
    out = tmp_path / "run"
    code = pack.main(["pack", f"--out_dir={out}", f"--gallery={gallery}", "--init=gallery",
                      "--alpha=0.5", "--num_identities=50", "--steps=20", "--log_every=10",
                      "--progress=false", "--batch_size=20"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["m"] == 80 and report["d"] == 8
    assert "mean_gallery_cos" in report["figures"]
    # Initialised from gallery rows: the step-0 gallery cosine is exactly 1.
    assert abs(report["initial_figures"]["mean_gallery_cos"] - 1.0) < 1e-6


def _bad_inputs(tmp: Path):
    good = tmp / "good.npy"
    np.save(good, _unit(50, 8))
    nan = _unit(50, 8)
    nan[3, 2] = np.nan
    np.save(tmp / "nan.npy", nan)
    zero = _unit(50, 8)
    zero[4] = 0
    np.save(tmp / "zero.npy", zero)
    np.save(tmp / "flat.npy", _unit(50, 8).ravel())
    np.save(tmp / "d16.npy", _unit(50, 16))
    np.save(tmp / "ints.npy", np.ones((5, 8), np.int64))
    np.save(tmp / "one.npy", _unit(1, 8))
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "text.txt").write_text("1 2 3\n")
    (tmp / "garbage.npy").write_bytes(b"not a numpy file at all")
    return [  # (extra flags, words the one-line message must contain)
        ([f"--gallery={tmp}/missing.npy"], "gallery file not found"),
        ([f"--init={tmp}/missing.npy", "--alpha=0"], "init file not found"),
        ([f"--gallery={tmp}/text.txt"], "not a .npy file"),
        ([f"--gallery={tmp}/garbage.npy"], "not a readable .npy"),
        ([f"--gallery={tmp}/objects.npy"], "not a readable .npy"),
        ([f"--gallery={tmp}/flat.npy"], "expected (rows, dim)"),
        ([f"--gallery={tmp}/ints.npy"], "dtype int64"),
        ([f"--gallery={tmp}/nan.npy"], "NaN or Inf (first in row 3)"),
        ([f"--gallery={tmp}/zero.npy"], "zero vector in row 4"),
        ([f"--gallery={good}", f"--init={tmp}/d16.npy"], "dimension mismatch"),
        ([f"--gallery={good}", "--dim=16"], "--dim=16 conflicts"),
        ([f"--init={tmp}/one.npy", "--alpha=0"], "at least 2 identities"),
        (["--alpha=0", "--num_identities=1"], "--num_identities must be >= 2, got 1"),
        (["--alpha=0", "--num_identities=10", "--batch_size=11"], "--batch_size=11"),
        (["--alpha=0.5"], "needs a --gallery"),
        (["--alpha=0", "--optimizer=adamm"], "unknown --optimizer 'adamm'"),
        (["--alpha=0", "--schedule=linear"], "--schedule=linear: value should be one of"),
        (["--alpha=0", "--optimizer=adam", "--momentum=0.9"], "does not take --momentum"),
        (["--alpha=0", "--packing_reduce=sum"], "--packing_reduce=sum: value should be"),
        (["--alpha=0", "--no_such_flag=1"], "no_such_flag"),
        (["--alpha=0", "--steps=many"], "steps"),
        (["--alpha=0", f"--flagfile={tmp}/missing.flags"], "missing.flags"),
        ([f"--gallery={good}", "--init=gallery", "--num_identities=51"], "at least n=51"),
        (["--alpha=0", "--optimizer=adafactor", "--batch_size=10", "--dim=128",
          "--num_identities=130"], "--minibatch_update=dense"),
    ]


def test_every_bad_input_exits_2_with_a_one_line_message_and_writes_nothing(tmp_path, capsys):
    for i, (flags, words) in enumerate(_bad_inputs(tmp_path)):
        out = tmp_path / f"out{i}"
        code = pack.main(["pack", f"--out_dir={out}", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (flags, err)
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (flags, err)
        assert not out.exists() or not any(out.iterdir()), flags


def test_unknown_flag_exits_2_from_the_shell(tmp_path):
    r = run_module("hyperface_jax.pack", f"--out_dir={tmp_path}/o", "--learning_rat=0.1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "learning_rat" in r.stderr
    assert not (tmp_path / "o").exists()


def test_non_unit_rows_are_normalised_with_a_warning(tmp_path):
    init = tmp_path / "init.npy"
    np.save(init, 3.0 * _unit(30, 8))
    with pytest.warns(UserWarning, match="not unit vectors"):
        code = pack.main(["pack", f"--out_dir={tmp_path}/o", f"--init={init}", *SMALL[2:]])
    assert code == 0
    x = np.load(tmp_path / "o" / "embeddings.npy")
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_checkpoints_older_than_an_option_resume_under_its_default(tmp_path, capsys):
    """A run written before an option existed (its run.json and step records lack it) ran
    with the behaviour the option's default keeps: it resumes under the default and is
    refused under another value."""
    from hyperface_jax.io import integrity

    out = tmp_path / "o"
    assert pack.main(["pack", f"--out_dir={out}", *SMALL]) == 0
    for path in [out / "checkpoints" / "run.json",
                 *(out / "checkpoints").glob(f"*/{integrity.LEDGER}")]:
        record = json.loads(path.read_text())
        run = record.get("run", record)
        assert run.pop("neighbor_descent_every") == 0
        path.write_text(json.dumps(record))
    capsys.readouterr()
    assert pack.main(["pack", f"--out_dir={out}", *SMALL, "--neighbor_descent_every=3"]) == 2
    assert "neighbor_descent_every: 0 -> 3" in capsys.readouterr().err
    assert pack.main(["pack", f"--out_dir={out}", *SMALL, "--steps=30"]) == 0
    assert json.loads((out / "report.json").read_text())["resumed_from_step"] > 0


def test_resuming_with_different_flags_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    assert pack.main(["pack", f"--out_dir={out}", *SMALL]) == 0
    capsys.readouterr()
    assert pack.main(["pack", f"--out_dir={out}", *SMALL, "--learning_rate=0.02"]) == 2
    assert "different run" in capsys.readouterr().err
    # Extending --steps is allowed and continues from the last checkpoint.
    assert pack.main(["pack", f"--out_dir={out}", *SMALL, "--steps=30"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] == 20 and report["steps"] == 30
    assert [h["step"] for h in report["history"]] == [0, 10, 20, 30]


def test_corrupt_checkpoint_exits_2(tmp_path, capsys):
    out = tmp_path / "o"
    assert pack.main(["pack", f"--out_dir={out}", *SMALL]) == 0
    for f in (out / "checkpoints" / "20").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 7)
    capsys.readouterr()
    assert pack.main(["pack", f"--out_dir={out}", *SMALL, "--steps=30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint at step 20" in err[0]


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    args = ["--num_identities=1500", "--dim=128", "--alpha=0", "--steps=300",
            "--checkpoint_every=50", "--log_every=25", "--progress=false",
            "--batch_size=500", "--decay_every=100"]
    straight = tmp_path / "straight"
    r = run_module("hyperface_jax.pack", f"--out_dir={straight}", *args)
    assert r.returncode == 0, r.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperface_jax.pack", f"--out_dir={killed}", *args],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    ckpts = killed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 100
                                  and (p / "checksums.json").exists() for p in ckpts.iterdir()):
            break  # a verified step (one without its record would be discarded on resume)
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "embeddings.npy").exists()

    r = run_module("hyperface_jax.pack", f"--out_dir={killed}", *args)
    assert r.returncode == 0, r.stderr
    report = json.loads((killed / "report.json").read_text())
    assert 100 <= report["resumed_from_step"] < 300
    a = np.load(straight / "embeddings.npy")
    b = np.load(killed / "embeddings.npy")
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", ["quickstart", "paper_10k", "paper_50k_stochastic", "fast_10k",
                                  "spherical_codes", "million", "codes_2k", "codes_10k",
                                  "codes_50k", "codes_100k", "codes_100k_random"])
def test_every_pack_config_parses_and_passes_validation(name):
    from hyperface_jax import cli
    from hyperface_jax.jobs.config import PackConfig
    from hyperface_jax.jobs.problem import check_settings

    c = cli.config_from_argv(PackConfig, [f"--flagfile={REPO / 'configs' / (name + '.flags')}"])
    assert c == cli.config_from_argv(PackConfig, [f"--flagfile={name}"])  # by name
    if c.alpha:  # the paper configs document that they need a gallery file
        assert "gallery" in (REPO / "configs" / f"{name}.flags").read_text()
        c = dataclasses.replace(c, gallery="gallery.npy")
    if not c.out_dir:  # spherical_codes: the size and the folder are given per run
        c = dataclasses.replace(c, out_dir="runs/x")
    check_settings(c)
