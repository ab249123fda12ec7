"""The notebook API (`pack_references`) and what a pack run promises about its outputs:
finite unit rows or exit 1, non-finite flags refused, schedule horizons fixed on resume,
interrupts that stop at a saved chunk boundary, strict JSON."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hyperface_jax import InputError, pack, pack_references
from tests.conftest import REPO, cli_env

SMALL = dict(num_identities=40, dim=8, steps=20, log_every=10, checkpoint_every=10,
             progress=False)
SMALL_FLAGS = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}"
               for k, v in SMALL.items()]


def _unit(rows, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(rows, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_api_equals_the_cli_on_arrays_in_memory_and_writes_nothing(tmp_path, monkeypatch):
    gallery = _unit(30, 8, seed=1)
    np.save(tmp_path / "g.npy", gallery)
    assert pack.main(["pack", f"--out_dir={tmp_path}/cli", f"--gallery={tmp_path}/g.npy",
                      "--alpha=0.5", *SMALL_FLAGS]) == 0
    cli = _strict_json(tmp_path / "cli" / "report.json")

    work = tmp_path / "notebook"
    work.mkdir()
    monkeypatch.chdir(work)
    r = pack_references(gallery=gallery, alpha=0.5, log=lambda m: None, **SMALL)
    assert list(work.iterdir()) == []  # no out_dir: nothing written
    assert r.embeddings.dtype == np.float32 and r.embeddings.shape == (40, 8)
    np.testing.assert_array_equal(r.embeddings, np.load(tmp_path / "cli" / "embeddings.npy"))
    assert r.figures == cli["figures"]
    assert [h["step"] for h in r.history] == [0, 10, 20]
    assert r.report["flags"]["gallery"] == "<array>"


HOLDER = """
import sys, time
from hyperface_jax.io.runs import OutputLock
OutputLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_the_api_takes_the_out_dir_lock_the_cli_takes(tmp_path):
    # The reproduction: a CLI run holds the folder, pack_references(out_dir=same).
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=cli_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"in use by another run .process {holder.pid}"):
            pack_references(alpha=0.0, out_dir=out, log=lambda m: None, **SMALL)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    seen = []  # while the API runs, it holds the lock (the CLI would be refused)
    pack_references(alpha=0.0, out_dir=out, log=lambda m: seen.append(
        json.loads((out / ".lock").read_text())["pid"]), **SMALL)
    assert seen and set(seen) == {os.getpid()}
    assert not (out / ".lock").exists() and (out / "embeddings.npy").exists()


@pytest.mark.parametrize("where", ["file", "proc", "long_name", "lock_folder"])
def test_an_unusable_out_dir_raises_input_error_from_the_api_and_the_cli(tmp_path, capsys,
                                                                         where):
    out = {"file": tmp_path / "f", "proc": "/proc/hyperface", "lock_folder": tmp_path / "l",
           "long_name": tmp_path / ("x" * 300)}[where]
    if where == "file":
        out.write_text("")
    if where == "lock_folder":
        (out / ".lock").mkdir(parents=True)
    with pytest.raises(InputError) as e:
        pack_references(alpha=0.0, out_dir=out, log=lambda m: None, **SMALL)
    assert "\n" not in str(e.value)
    assert pack.main(["pack", f"--out_dir={out}", "--alpha=0", *SMALL_FLAGS]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == (["l"] if where == "lock_folder" else
                                            ["f"] if where == "file" else [])


def test_api_bad_input_raises_input_error_with_the_line_the_cli_prints(tmp_path, capsys):
    cases = [dict(optimizer="adamm"), dict(no_such_option=1), dict(learning_rat=0.1),
             dict(objective="maxx"), dict(learning_rate=float("nan")), dict(b2=2.0),
             dict(seed=2**32)]
    for case in cases:
        with pytest.raises(InputError) as api:
            pack_references(alpha=0.0, log=lambda m: None, **{**SMALL, **case})
        flag = [f"--{k}={v}" for k, v in case.items()]
        assert pack.main(["pack", f"--out_dir={tmp_path}/o", "--alpha=0", *SMALL_FLAGS,
                          *flag]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line == f"error: {api.value}", (case, line)
        if "learning_rat" in case:
            assert "Did you mean: learning_rate" in line
    # A value of the wrong type: the CLI reads text, the API refuses the object itself.
    with pytest.raises(InputError, match=r"^--steps takes an int, got str 'many'$"):
        pack_references(alpha=0.0, log=lambda m: None, **{**SMALL, "steps": "many"})
    with pytest.raises(InputError, match="NaN or Inf"):
        bad = _unit(30, 8)
        bad[3, 2] = np.nan
        pack_references(gallery=bad, alpha=0.5, log=lambda m: None, **SMALL)


@pytest.mark.parametrize("flag", ["--learning_rate=nan", "--alpha=inf", "--decay_rate=-inf",
                                  "--temperature_end=nan"])
def test_non_finite_numeric_flags_exit_2_before_anything_is_written(tmp_path, capsys, flag):
    out = tmp_path / "o"
    assert pack.main(["pack", f"--out_dir={out}", "--alpha=0", *SMALL_FLAGS, flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be a finite number" in err[0], err
    assert not out.exists()


def test_a_run_that_diverges_exits_1_in_one_line_and_writes_no_outputs(tmp_path, capsys):
    out = tmp_path / "o"
    code = pack.main(["pack", f"--out_dir={out}", "--alpha=0", *SMALL_FLAGS,
                      "--learning_rate=1e30"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: the run diverged by step 10: every row collapsed to zero")
    assert "--learning_rate=1e+30" in err[-1]
    # No checkpoint had been saved: nothing is kept (no history, no run.json, no folder),
    # and the message does not promise a checkpoint.
    assert "nothing was kept" in err[-1] and "is kept" not in err[-1]
    assert not out.exists()
    # Re-running with a sane learning rate starts cleanly (it was refused before).
    assert pack.main(["pack", f"--out_dir={out}", "--alpha=0", *SMALL_FLAGS]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] is None and report["flags"]["learning_rate"] == 0.01
    assert [h["step"] for h in report["history"]] == [0, 10, 20]


def test_resuming_with_more_steps_under_a_horizon_schedule_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    flags = ["--alpha=0", *SMALL_FLAGS, "--schedule=cosine"]
    assert pack.main(["pack", f"--out_dir={out}", *flags]) == 0
    capsys.readouterr()
    assert pack.main(["pack", f"--out_dir={out}", *flags, "--steps=40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps: 20 -> 40" in err[0], err
    # A staircase schedule has no horizon: more steps continue the same run.
    out2 = tmp_path / "o2"
    assert pack.main(["pack", f"--out_dir={out2}", "--alpha=0", *SMALL_FLAGS]) == 0
    assert pack.main(["pack", f"--out_dir={out2}", "--alpha=0", *SMALL_FLAGS,
                      "--steps=30"]) == 0


def test_smooth_objectives_report_the_optimised_loss_beside_the_exact_one(tmp_path):
    out = tmp_path / "o"
    assert pack.main(["pack", f"--out_dir={out}", "--alpha=0", *SMALL_FLAGS,
                      "--objective=logsumexp", "--temperature_end=100"]) == 0
    report = _strict_json(out / "report.json")
    optimised = report["optimised_loss"]
    assert optimised["objective"] == "logsumexp"
    # The temperature the last step (step 19 of 20) used, annealed 1 -> 100 over the steps.
    assert optimised["temperature"] == pytest.approx(100 ** (19 / 20), rel=1e-6)
    # The smooth maximum is an upper bound of the hard one the figures report.
    assert optimised["packing"] > report["figures"]["loss_packing"]


def test_sigterm_stops_at_a_chunk_boundary_with_history_and_checkpoint_aligned(tmp_path):
    out = tmp_path / "o"
    args = ["--num_identities=400", "--dim=32", "--alpha=0", "--steps=100000",
            "--log_every=5", "--checkpoint_every=1000", "--progress=false"]
    proc = subprocess.Popen([sys.executable, "-m", "hyperface_jax.pack", f"--out_dir={out}",
                             *args], cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    history = out / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    steps = [json.loads(line)["step"] for line in history.read_text().splitlines()]
    saved = max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == list(range(0, saved + 1, 5)), (steps, saved)
    assert f"interrupted: saved a checkpoint at step {saved}" in err
    assert "Traceback" not in err


def test_sampled_figures_bound_the_exact_ones_which_the_figures_command_gives(tmp_path, capsys):
    from hyperface_jax import figures

    out = tmp_path / "o"
    flags = ["--num_identities=300", "--dim=16", "--alpha=0", "--steps=20", "--log_every=10",
             "--progress=false"]
    assert pack.main(["pack", f"--out_dir={out}", *flags, "--figure_sample=100"]) == 0
    report = _strict_json(out / "report.json")
    est = report["estimates"]
    assert report["figures_are_estimates"] and est["sample_size"] == 100 and est["n"] == 300
    assert report["figures"]["max_cos"] == est["max_cos_lower_bound"]
    assert figures.main(["figures", f"--embeddings={out}/embeddings.npy", "--alpha=0",
                         f"--out={tmp_path}/f.json"]) == 0
    written = _strict_json(tmp_path / "f.json")
    exact = written["figures"]
    assert written["packing_objective"]["reading"] == "ours"  # --packing_reduce=mean
    x = np.load(out / "embeddings.npy").astype(np.float64)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    assert abs(exact["max_cos"] - s.max()) < 1e-6
    assert abs(exact["mean_nn_cos"] - s.max(axis=1).mean()) < 1e-6
    assert est["max_cos_lower_bound"] <= exact["max_cos"] + 1e-6
    i, j = est["max_cos_worst_pair_in_sample"]  # the pair behind the bound, named
    assert i != j and abs(s[i, j] - est["max_cos_lower_bound"]) < 1e-6
    low, high = est["mean_nn_cos_interval"]
    assert low <= exact["mean_nn_cos"] <= high
    capsys.readouterr()
    assert pack.main(["pack", f"--out_dir={tmp_path}/bad", *flags, "--figure_sample=1"]) == 2
    assert "--figure_sample must be 0" in capsys.readouterr().err
