"""`python -m hyperface_jax.compare`: variants on the same init, mean/std over seeds, resume."""

import json

import numpy as np
import pytest

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
