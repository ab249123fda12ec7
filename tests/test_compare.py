"""`python -m hyperface_jax.compare`: variants on the same init, mean/std over seeds, resume."""

import contextlib
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from hyperface_jax import InputError, cli, compare
from hyperface_jax.jobs.compare_config import CompareConfig
from hyperface_jax.measure import bounds

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

# Linear ranges: no widening, so the tiny sweep's trial count is known.
SPACE = {"sgd": {"learning_rate": [0.5, 50, "linear"]},
         "adam": {"learning_rate": [0.01, 0.3, "linear"]}}
TUNE = ["--num_identities=24", "--dim=4", "--alpha=0", "--steps=20", "--log_every=5",
        "--checkpoint_every=20", "--progress=false", "--schedule=constant",
        "--optimizers=sgd,adam", "--tune_trials=3", "--seeds=1", "--final_seeds=3"]


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


def test_tuning_chooses_each_optimizers_best_trial_from_its_runs(sweep):
    out, _ = sweep
    result = _strict_json(out / "compare.json")
    trials = result["tuning"]["trials"]
    for name, rows in trials.items():
        # 2 coarse trials, then 1 refining around the best; every one read back here.
        assert [t["phase"] for t in rows] == ["coarse", "coarse", "refine"]
        scores = [_max_offdiag(np.load(f"{t['runs'][0]['dir']}/embeddings.npy")) for t in rows]
        assert [t["validation"] for t in rows] == pytest.approx(scores, abs=1e-5)
        best = result["tuned"][name]
        assert best["best_trial"] == int(np.argmin(scores))
        assert best["best_flags"] == rows[best["best_trial"]]["flags"]
        assert not best["lower_bound"] and best["widened"] == []
    assert (out / "sensitivity.png").stat().st_size > 10_000
    table = (out / "compare.md").read_text()
    assert "| sgd | learning_rate=" in table and "| adam | learning_rate=" in table


def test_fresh_seeds_are_shared_and_every_row_has_a_paired_verdict(sweep):
    out, _ = sweep
    result = _strict_json(out / "compare.json")
    tuning_seeds = set(result["tuning"]["tuning_seeds"])
    finals = {}
    for name, entry in result["tuned"].items():
        assert entry["seeds"] == result["tuning"]["fresh_seeds"]  # the same for everyone
        assert len(entry["runs"]) == 3 and not set(entry["seeds"]) & tuning_seeds
        worst = []
        for run in entry["runs"]:
            report = _report(Path(run["dir"]))
            assert report["flags"]["seed"] == run["seed"]
            assert report["flags"]["learning_rate"] == entry["best_flags"]["learning_rate"]
            worst.append(_max_offdiag(np.load(f"{run['dir']}/embeddings.npy")))
        finals[name] = np.array(worst)
        mean = np.mean(worst)
        half = student_t.ppf(0.975, 2) * np.std(worst, ddof=1) / np.sqrt(3)
        assert entry["figures"]["max_cos"] == pytest.approx(mean, abs=1e-5)
        assert entry["interval"]["max_cos"] == pytest.approx([mean - half, mean + half],
                                                             abs=1e-5)
        assert entry["failures"] == 0
    best = result["best"]
    assert best == min(finals, key=lambda n: finals[n].mean())
    other = next(n for n in finals if n != best)
    verdict = result["tuned"][other]["verdict"]
    diff = finals[other] - finals[best]
    half = student_t.ppf(0.975, 2) * diff.std(ddof=1) / np.sqrt(3)
    assert verdict["differences"] == pytest.approx(diff, abs=1e-5)
    assert verdict["interval"] == pytest.approx([diff.mean() - half, diff.mean() + half],
                                                abs=1e-5)
    word = "worse" if diff.mean() - half > 0 else "tied"
    assert verdict["verdict"] == word and result["tuned"][best]["verdict"]["verdict"] == "best"
    table = (out / "compare.md").read_text()
    assert f"| {word} |" in table and "| 0/3 |" in table
    per_seed = "| " + " | ".join([other] + [f"{d:+.5f}" for d in verdict["differences"]])
    assert per_seed + " |" in table


def test_targets_come_from_the_workload_before_the_sweep(sweep):
    out, _ = sweep
    result = _strict_json(out / "compare.json")
    targets = result["targets"]
    # The start: the worst pair of the references every run at --seed starts from.
    first = _report(out / "tune" / "sgd" / "trial0" / "seed0")
    assert targets["start"] == pytest.approx(first["initial_figures"]["max_cos"], abs=1e-5)
    assert targets["goal"] == pytest.approx(bounds.bound_max_cos(24, 4))
    wanted = [targets["start"] - f * (targets["start"] - targets["goal"])
              for f in (0.5, 0.7, 0.75, 0.8, 0.95)]
    assert [t["max_cos"] for t in targets["list"]] == pytest.approx(wanted)
    table = (out / "compare.md").read_text()
    assert "80 % of the way from the start's worst pair" in table
    for entry in result["tuned"].values():
        for target, hit in zip(targets["list"], entry["time_to_target"]):
            steps = []
            for run in entry["runs"]:
                hits = [h["step"] for h in _report(Path(run["dir"]))["history"]
                        if h["max_cos"] <= target["max_cos"]]
                steps.append(hits[0] if hits else np.inf)
            median = np.median(steps)
            assert hit["reached"] == int(np.isfinite(steps).sum())
            assert (hit["median_steps"] is None and not np.isfinite(median)) or \
                hit["median_steps"] == median


def _verdict(result):
    return ({k: (e["best_flags"], e["figures"], e["interval"], e["verdict"])
             for k, e in result["tuned"].items()},
            {k: [t["validation"] for t in rows] for k, rows in result["tuning"]["trials"].items()},
            result["targets"])


def test_a_resumed_sweep_gives_the_same_table(sweep, tmp_path):
    out, space = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # As if interrupted: adam's refinement trial and its re-runs not done, no tables yet.
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
    # The same table, but for the seconds to target of the runs done again (timings).
    def table(folder):
        text = (folder / "compare.md").read_text().replace(str(folder), "<out>")
        return re.sub(r" / [0-9.]+ / ", " / s / ", text)
    assert table(copy) == table(out)


def test_resume_refuses_a_user_optimizer_it_was_not_given_again(tmp_path, capsys):
    out = tmp_path / "planted"
    out.mkdir()
    # A planted record naming code to import: --resume must not run it unasked.
    (out / "compare_args.json").write_text(json.dumps(
        {"optimizers": "adam,evil_module:factory", "tune_trials": 2, "num_identities": 24}))
    code = compare.main(["compare", f"--out_dir={out}", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "evil_module:factory" in err[0] and "--optimizers=adam,evil_module:factory" in err[0]
    code = compare.main(["compare", f"--out_dir={out}", "--resume", "--optimizers=adam"])
    assert code == 2 and "evil_module:factory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["compare_args.json"]


def test_tuning_and_resume_bad_input_exit_2(tmp_path, capsys):
    bad_space = tmp_path / "bad.json"
    bad_space.write_text(json.dumps({"sgd": {"momentum": [0, 0.9, "linear"]}}))
    cases = [
        (["--tune_trials=2", "--optimizers=sgd", f"--search_space={bad_space}"],
         "has no learning_rate"),
        (["--tune_trials=2", "--samplers=random_margin"], "another compare"),
        (["--tune_trials=2", "--optimizers=sgd", "--target=rmsprop"], "--target"),
        (["--tune_trials=2", "--final_seeds=0"], "--final_seeds"),
        (["--tune_trials=1"], "--tune_trials must be >= 2"),
        (["--tune", "--targets=0.5,1.5"], "--targets must be fractions"),
        (["--tune", "--selection=fastest"], "--selection=fastest: value should be one of"),
        (["--tune", "--selection=time", "--selection_target=0.6"], "--selection_target"),
        (["--resume"], "no sweep was started"),
        (["--tune_trials=2", "--optimizers=sgd,sgd"], "names one optimizer twice"),
        (["--suite=pack_300x16,nowhere"], "unknown workload 'nowhere'"),
    ]
    for i, (flags, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code = _compare(out, *flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, flags
        assert len(err) == 1 and words in err[0], (flags, err)
        assert not out.exists(), flags


def test_help_imports_no_jax():
    code = ("import sys; from hyperface_jax import compare; "
            "assert compare.main(['compare', '--help']) == 0; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--tune_trials" in done.stdout and "--suite" in done.stdout
    titles = [line for line in done.stdout.splitlines() if line.endswith(":")
              and not line.startswith(" ")]
    assert titles[1:4] == ["compare:", "tuned comparison:", "workload suite:"]
    assert "other:" not in titles and titles[-1] == "sampler:"  # every flag has a topic


def _children(pid):
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_sweep_leaves_no_worker_running(tmp_path):
    # Issue 23's command at a tiny size: kill -9 of the parent while 2 workers run trials.
    command = [sys.executable, "-m", "hyperface_jax.compare", "--num_identities=60", "--dim=8",
               "--alpha=0", "--schedule=cosine", "--steps=100000", "--log_every=1000",
               "--checkpoint_every=1000", "--progress=false", "--optimizers=adam",
               "--tune_trials=4", "--final_seeds=1", "--workers=2",
               f"--out_dir={tmp_path / 't'}"]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [p for p in _children(parent.pid)
                       if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2, "the sweep never started its 2 workers"
        time.sleep(2)  # the workers are inside their pack runs
        everyone = workers + [q for p in workers for q in _children(p)]
        everyone += [p for p in _children(parent.pid) if p not in everyone]
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in everyone):
        time.sleep(0.1)
    assert not [p for p in everyone if _alive(p)], "orphaned workers still running"


@pytest.mark.slow  # 12 runs, ~2 min on 2 loaded cores; tuning.time_selection_figure is in CI
def test_algoperf_mode_selects_by_time_and_reports_the_median_study(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"adam": {"learning_rate": [0.01, 0.3, "linear"]}}))
    out = tmp_path / "algoperf"
    assert compare.main(["compare", f"--out_dir={out}", f"--search_space={space}",
                         *TUNE[:-4], "--optimizers=adam", "--tune_trials=2",
                         "--final_seeds=2", "--selection=time", "--selection_target=0.5",
                         "--studies=3"]) == 0
    result = _strict_json(out / "compare.json")
    # Three independent studies: their own Halton draws and tuning seeds.
    assert result["tuning"]["study_seeds"] == [[0], [1], [2]]
    assert result["tuning"]["fresh_seeds"] == [3, 4]
    studies = result["tuned"]["adam"]["studies"]
    assert len(studies) == 3 and (out / "tune" / "adam" / "study2" / "trial0").is_dir()
    # Each study's score: the median steps to the 50 % target on the fresh seeds.
    target = result["targets"]["list"][0]["max_cos"]
    scores = []
    for s in studies:
        base = out / "final" / "adam" / (f"study{s['study']}" if s["study"] else "")
        steps = []
        for k in range(2):
            hits = [h["step"] for h in _report(base / f"seed{k}")["history"]
                    if h["max_cos"] <= target]
            steps.append(hits[0] if hits else np.inf)
        scores.append(np.median(steps))
        assert s["score"] == (scores[-1] if np.isfinite(scores[-1]) else None)
    median_study = sorted(range(3), key=lambda s: scores[s])[1]
    assert result["tuned"]["adam"]["study"] == median_study
    assert "Studies (the headline row is the median study" in (out / "compare.md").read_text()


def test_the_documented_suite_command_at_a_tiny_size(tmp_path):
    # docs/optimizers.md's suite command, shrunk: every workload of the minimal suite at
    # 2 % of its identities, 10 steps, one optimizer, 2 trials, 2 fresh seeds; a linear
    # range (no widening): 20 short runs.
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"adam": {"learning_rate": [0.01, 0.3, "linear"]}}))
    out = tmp_path / "suite"
    assert compare.main(["compare", "--suite=minimal", "--suite_scale=0.02", "--steps=10",
                         "--tune_trials=2", "--final_seeds=2", "--optimizers=adam",
                         "--profile_target=0.5", f"--search_space={space}",
                         f"--out_dir={out}"]) == 0
    names = ["pack_300x16", "pack_1000x64", "paper_512d", "minibatch_1000x64",
             "neighbors_10k"]
    summary = _strict_json(out / "suite.json")
    assert list(summary["costs"]) == names
    for name in names:
        result = _strict_json(out / name / "compare.json")
        for opt, cost in summary["costs"][name].items():
            hit = result["tuned"][opt]["time_to_target"][0]
            assert hit["label"] == "50 %" and cost == hit["median_steps"]
    paper = _strict_json(out / "paper_512d" / "compare.json")["flags"]
    assert paper["dim"] == 512 and paper["alpha"] == 0.5 and paper["gallery"]
    lists = _strict_json(out / "neighbors_10k" / "compare.json")["flags"]
    assert lists["num_identities"] == 200 and lists["neighbor_list_size"] == 16
    assert _strict_json(out / "minibatch_1000x64" / "compare.json")["flags"]["batch_size"] == 20
    assert (out / "profile.png").stat().st_size > 10_000
    table = (out / "suite.md").read_text()
    assert all(f"| {name} |" in table for name in names) and "adam: " in table


def test_tuning_defaults_and_tune_trials_0_meaning_no_tuning():
    def tuning_of(*args):
        return cli.config_from_argv(CompareConfig, list(args)).tuning()

    assert tuning_of() is None and tuning_of("--tune_trials=0") is None
    default = tuning_of("--tune")
    assert (default.trials, default.final_seeds, default.targets) == (16, 10,
                                                                   (0.5, 0.7, 0.75, 0.8, 0.95))
    assert tuning_of("--tune_trials=24").trials == 24
    assert tuning_of("--suite=minimal").trials == 16


def test_resume_rebuilds_the_recorded_config_and_what_the_command_line_gave(tmp_path):
    # A flagfile's values are defaults (a suite workload's or an --init file's win over
    # them), the command line's are statements: the record keeps the difference.
    flagfile = tmp_path / "f.flags"
    flagfile.write_text("--num_identities=500\n--tune_trials=4\n--steps=30\n")
    out = tmp_path / "o"
    out.mkdir()
    c = cli.config_from_argv(CompareConfig, [f"--flagfile={flagfile}", "--dim=8",
                                             f"--out_dir={out}", "--optimizers=adam,sgd"])
    assert c.explicit == {"dim", "out_dir", "optimizers"} and c.tuning().trials == 4
    (out / "compare_args.json").write_text(json.dumps(compare.recorded_flags(c)))
    again = cli.config_from_argv(CompareConfig, [f"--out_dir={out}", "--resume", "--workers=2"])
    assert compare._resumed(again) == dataclasses.replace(c, workers=2)
    # A record from before the command line was recorded: every flag counts as given.
    (out / "compare_args.json").write_text(json.dumps({"num_identities": 24, "dim": 8}))
    old = compare._resumed(again)
    assert (old.num_identities, old.workers) == (24, 2)
    assert old.explicit == {"num_identities", "dim", "out_dir", "workers"}


def test_the_job_checks_its_python_arguments_with_the_flags_table():
    from hyperface_jax.jobs import compare as job
    from hyperface_jax.jobs.compare_config import Tuning
    from hyperface_jax.jobs.config import PackConfig

    for t, words in ((Tuning(selection="fastest"), "--selection=fastest: value should be"),
                     (Tuning(studies=0), "--studies must be >= 1, got 0"),
                     (Tuning(best_known=1.5), "--best_known must be in [-1, 1], got 1.5"),
                     (Tuning(trials=1), "--tune_trials must be >= 2, got 1")):
        with pytest.raises(InputError, match=re.escape(words)):
            job.validate_tuning(PackConfig(), [], t, [], [])
