"""`python -m hyperface_jax.compare`: variants on the same init, mean/std over seeds, resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from hyperface_jax import compare

BASE = ["--num_identities=40", "--dim=8", "--alpha=0", "--steps=20", "--log_every=10",
        "--checkpoint_every=10", "--learning_rate=0.02", "--progress=false"]


def _max_offdiag(x):
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    return s.max()


def _compare(out, *extra):
    return compare.main(["compare", f"--out_dir={out}", *BASE, *extra])


def test_variants_share_the_init_and_report_mean_and_std_over_seeds(tmp_path):
    out = tmp_path / "cmp"
    assert _compare(out, "--optimizers=adam,sgd", "--seeds=2",
                    "--samplers=random_margin,hyperface") == 0
    result = json.loads((out / "compare.json").read_text())
    names = [v["name"] for v in result["variants"]]
    assert names == ["adam-max", "sgd-max", "sampler:random_margin", "sampler:hyperface"]
    hyperface = result["variants"][3]["runs"]
    # The flagfile's own packing run (adam, max) is not run twice.
    assert [r["dir"] for r in hyperface] == [r["dir"] for r in result["variants"][0]["runs"]]
    assert all(r["skipped"] for r in hyperface)
    first = {}
    for v in result["variants"]:
        worst = []
        for run in v["runs"]:
            x = np.load(f"{run['dir']}/embeddings.npy")
            assert x.shape == (40, 8)
            worst.append(_max_offdiag(x))
            assert run["figures"]["max_cos"] == pytest.approx(worst[-1], abs=1e-5)
            if v["kind"] == "packing":
                report = json.loads(open(f"{run['dir']}/report.json").read())
                first.setdefault(run["seed"], []).append(report["initial_figures"]["max_cos"])
        assert v["mean"]["max_cos"] == pytest.approx(np.mean(worst), abs=1e-5)
        assert v["std"]["max_cos"] == pytest.approx(np.std(worst, ddof=1), abs=1e-5)
        assert v["wall_seconds"]["mean"] > 0
    # Same seed: every optimizer starts from the same references; other seed: others.
    assert first[0][0] == first[0][1] and first[1][0] == first[1][1] and first[0] != first[1]
    by_name = {v["name"]: v for v in result["variants"]}
    # Adam at this learning rate separates the points; plain SGD barely moves them.
    assert by_name["adam-max"]["mean"]["max_cos"] < by_name["sgd-max"]["mean"]["max_cos"] - 0.05
    # The random-margin baseline keeps its 0.3 margin.
    assert by_name["sampler:random_margin"]["mean"]["max_cos"] <= 0.7 + 1e-6
    table = (out / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in names)
    assert (out / "compare.png").stat().st_size > 20_000


def test_rerun_skips_finished_variants_and_extends_unfinished_ones(tmp_path):
    out = tmp_path / "cmp"
    assert _compare(out, "--optimizers=rmsprop", "--steps=10") == 0
    run_dir = out / "runs" / "rmsprop-max" / "seed0"
    assert _compare(out, "--optimizers=rmsprop", "--steps=10") == 0
    result = json.loads((out / "compare.json").read_text())
    assert all(r["skipped"] for v in result["variants"] for r in v["runs"])
    # More steps: each run resumes from its checkpoint at step 10.
    assert _compare(out, "--optimizers=rmsprop", "--steps=20") == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["resumed_from_step"] == 10 and report["steps"] == 20
    result = json.loads((out / "compare.json").read_text())
    assert not any(r["skipped"] for v in result["variants"] for r in v["runs"])


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    cases = [
        (["--optimizers=adam,adamm"], "unknown --optimizer 'adamm'"),
        (["--objectives=max,softmax"], "unknown objective 'softmax'"),
        (["--samplers=random_margin,voronoi"], "unknown sampler 'voronoi'"),
        (["--samplers=diffr"], "needs a --gallery"),
        (["--seeds=0"], "--seeds must be >= 1"),
        (["--optimizers=sgd", "--b1=0.9"], "does not take --b1"),
        (["--no_such_flag=1"], "no_such_flag"),
    ]
    for i, (flags, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code = _compare(out, *flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, flags
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (flags, err)
        assert not out.exists(), flags


def test_every_variant_is_validated_before_any_runs(tmp_path, capsys):
    # Adafactor's factored second moment ((n,) and (d,) factors at d >= 128) cannot run
    # sparse mini-batches: refused before adam runs.
    out = tmp_path / "cmp"
    code = _compare(out, "--optimizers=adam,adafactor", "--batch_size=10", "--dim=128",
                    "--num_identities=130")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "adafactor" in err[0] and "dense" in err[0]
    assert not out.exists()


def test_every_sampler_failing_is_reported_not_a_crash(tmp_path):
    out = tmp_path / "cmp"
    assert _compare(out, "--samplers=random_margin", "--min_distance=1.9",
                    "--max_draws=1000") == 0
    result = json.loads((out / "compare.json").read_text())
    assert "error" in result["variants"][0]["runs"][0]
    assert "failed: random_margin: only" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 0


# --- Tuning (--tune_trials): one tiny sweep shared by the tests below ---

SPACE = {"sgd": {"learning_rate": [0.001, 1000, "log"]},
         "adam": {"learning_rate": [0.001, 1000, "log"]}}
TUNE = ["--num_identities=24", "--dim=4", "--alpha=0", "--steps=20", "--log_every=5",
        "--checkpoint_every=20", "--progress=false", "--schedule=constant",
        "--optimizers=sgd,adam", "--tune_trials=3", "--seeds=1", "--final_seeds=2"]


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    space = root / "space.json"
    space.write_text(json.dumps(SPACE))
    out = root / "sweep"
    assert compare.main(["compare", f"--out_dir={out}", f"--search_space={space}", *TUNE]) == 0
    return out, space


def _report(directory):
    return json.loads((directory / "report.json").read_text())


def test_tuning_gives_sgd_a_larger_learning_rate_than_adam(sweep):
    out, _ = sweep
    result = _strict_json(out / "compare.json")
    trials = result["tuning"]["trials"]
    # Both draw the same learning rates (same space, same seed): the choice makes the gap.
    rates = [[t["flags"]["learning_rate"] for t in trials[o]] for o in ("sgd", "adam")]
    assert rates[0] == rates[1] and len(set(rates[0])) == 3
    for name, rows in trials.items():
        # The validation figure is the final worst pair of each trial's run, read back.
        scores = [_max_offdiag(np.load(f"{t['runs'][0]['dir']}/embeddings.npy")) for t in rows]
        assert [t["validation"] for t in rows] == pytest.approx(scores, abs=1e-5)
        best = result["tuned"][name]
        assert best["best_trial"] == int(np.argmin(scores))
        assert best["best_flags"] == rows[best["best_trial"]]["flags"]
    tuned = result["tuned"]
    rate = {name: tuned[name]["best_flags"]["learning_rate"] for name in tuned}
    assert rate["sgd"] > rate["adam"]
    assert (out / "sensitivity.png").stat().st_size > 10_000
    table = (out / "compare.md").read_text()
    assert "| sgd | learning_rate=" in table and "| adam | learning_rate=" in table


def test_the_rerun_uses_fresh_seeds_and_reports_mean_and_interval(sweep):
    out, _ = sweep
    result = _strict_json(out / "compare.json")
    tuning_seeds = set(result["tuning"]["tuning_seeds"])
    for entry in result["tuned"].values():
        assert len(entry["runs"]) == 2 and not set(entry["seeds"]) & tuning_seeds
        worst = []
        for run in entry["runs"]:
            report = _report(Path(run["dir"]))
            assert report["flags"]["seed"] == run["seed"] and run["seed"] not in tuning_seeds
            assert report["flags"]["learning_rate"] == entry["best_flags"]["learning_rate"]
            worst.append(_max_offdiag(np.load(f"{run['dir']}/embeddings.npy")))
        mean = np.mean(worst)
        half = student_t.ppf(0.975, 1) * np.std(worst, ddof=1) / np.sqrt(2)
        assert entry["figures"]["max_cos"] == pytest.approx(mean, abs=1e-5)
        assert entry["interval"]["max_cos"] == pytest.approx([mean - half, mean + half],
                                                             abs=1e-5)
    # Time to target: the first logged step at or below the target, from the histories.
    target = result["target"]["max_cos"]
    adam_finals = [r["figures"]["max_cos"] for r in result["tuned"]["adam"]["runs"]]
    assert target == max(adam_finals)
    for entry in result["tuned"].values():
        steps = []
        for run in entry["runs"]:
            hits = [h["step"] for h in _report(Path(run["dir"]))["history"]
                    if h["max_cos"] <= target]
            steps.append(hits[0] if hits else np.inf)
        median = np.median(steps)
        got = entry["time_to_target"]["median_steps"]
        assert (got is None and not np.isfinite(median)) or got == median
    adam = result["tuned"]["adam"]["time_to_target"]
    assert adam["reached"] == 2 and adam["median_seconds"] is not None  # its own target


def _verdict(result):
    return ({k: (e["best_flags"], e["figures"], e["interval"]) for k, e in result["tuned"].items()},
            {k: [t["validation"] for t in rows] for k, rows in result["tuning"]["trials"].items()})


def test_a_resumed_sweep_gives_the_same_table(sweep, tmp_path):
    out, space = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # As if interrupted: one tuning trial and adam's re-runs not done, no tables yet.
    shutil.rmtree(copy / "tune" / "adam" / "trial2")
    shutil.rmtree(copy / "final" / "adam")
    for name in ("compare.json", "compare.md", "compare.png"):
        (copy / name).unlink()
    assert compare.main(["compare", f"--out_dir={copy}", "--resume"]) == 0
    resumed = _strict_json(copy / "compare.json")
    assert _verdict(resumed) == _verdict(_strict_json(out / "compare.json"))
    redone = [r for rows in resumed["tuning"]["trials"].values() for t in rows
              for r in t["runs"] if not r["skipped"]]
    assert [Path(r["dir"]).parent.name for r in redone] == ["trial2"]


def test_tuning_and_resume_bad_input_exit_2(tmp_path, capsys):
    bad_space = tmp_path / "bad.json"
    bad_space.write_text(json.dumps({"sgd": {"momentum": [0, 0.9, "linear"]}}))
    cases = [
        (["--tune_trials=2", "--optimizers=sgd", f"--search_space={bad_space}"],
         "has no learning_rate"),
        (["--tune_trials=2", "--samplers=random_margin"], "another compare"),
        (["--tune_trials=2", "--optimizers=sgd", "--target=rmsprop"], "--target"),
        (["--tune_trials=2", "--final_seeds=0"], "--final_seeds"),
        (["--resume"], "no sweep was started"),
        (["--tune_trials=2", "--optimizers=sgd,sgd"], "names one optimizer twice"),
    ]
    for i, (flags, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code = _compare(out, *flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, flags
        assert len(err) == 1 and words in err[0], (flags, err)
        assert not out.exists(), flags
