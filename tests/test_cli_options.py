"""Options declared once (hyperface_jax/options.py): one bounds table for every numeric
flag, enum choices (the engine's, from engine/choices.py), the notebook API built from
keywords with the CLI's checks, flagfiles and shipped configs usable from any folder,
and --help that imports no JAX or torch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli_env

from hyperface_jax import InputError, cli, options, pack, pack_config, pack_references
from hyperface_jax.jobs.config import PackConfig

# Flag values the table must refuse, each with the words of its one line (issue 23: values
# that used to be accepted, blamed on another flag, or crash deep inside XLA).
BAD_PACK_VALUES = [
    (["--polish_steps=5", "--polish_learning_rate=-1e-4"], "--polish_learning_rate must be > 0"),
    (["--schedule=cosine", "--final_learning_rate=-0.1"], "--final_learning_rate must be >= 0"),
    (["--optimizer=adam", "--eps=-1e-8"], "--eps must be >= 0"),
    (["--optimizer=sgd", "--momentum=-0.5"], "--momentum must be in [0, 1]"),
    (["--optimizer=adamw", "--weight_decay=-1"], "--weight_decay must be >= 0"),
    (["--b2=2"], "--b2 must be in [0, 1)"),
    (["--b1=-1"], "--b1 must be in [0, 1)"),
    (["--optimizer=rmsprop", "--decay=2"], "--decay must be in [0, 1]"),
    (["--decay_rate=1.5"], "--decay_rate must be in (0, 1]"),
    (["--decay_every=2147483648"], "--decay_every must fit a 32-bit integer"),
    (["--neighbor_list_size=4", "--neighbor_refresh_every=2147483648"],
     "--neighbor_refresh_every must fit a 32-bit integer"),
    (["--objective=logsumexp", "--anneal_steps=2147483648"], "--anneal_steps must fit"),
    (["--steps=3000000000", "--log_every=3000000000"], "--steps must fit a 32-bit integer"),
    (["--num_identities=99999999999"], "--num_identities must fit a 32-bit integer"),
    ([f"--seed={2**64}"], "--seed must be in [0, 4294967295]"),
    ([f"--seed={2**32}"], "--seed must be in [0, 4294967295]"),  # would equal seed 0
    (["--seed=-1"], "--seed must be in [0, 4294967295]"),
    (["--alpha=nan"], "--alpha must be a finite number"),
    (["--learning_rate=-0.01"], "--learning_rate must be > 0"),
    (["--temperature_start=0"], "--temperature_start must be > 0"),
    (["--objective=maxx"], "--objective=maxx: value should be one of <max|logsumexp|riesz>"),
]


@pytest.mark.parametrize("flags,words", BAD_PACK_VALUES, ids=lambda v: str(v)[:40])
def test_every_numeric_flag_is_bounded_one_line_exit_2_nothing_written(tmp_path, capsys,
                                                                       flags, words):
    out = tmp_path / "o"
    code = pack.main(["pack", f"--out_dir={out}", "--num_identities=20", "--dim=4", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not out.exists()
    # The notebook API refuses the same value with the same line.
    values = dict(f[2:].split("=", 1) for f in flags)
    fields = {f.name: f for f in options.flag_fields(PackConfig)}
    kinds = {name: options.field_kind(fields[name])[0] for name in values}
    typed = {k: v if kinds[k] is str else kinds[k](float(v) if kinds[k] is float else int(v))
             for k, v in values.items()}
    with pytest.raises(InputError) as api:
        pack_references(log=lambda m: None, **{"num_identities": 20, "dim": 4, **typed})
    assert f"error: {api.value}" == err[0]


@pytest.mark.parametrize("args,words", [
    (["--tile_size=-5"], "--tile_size must be >= 0"),
    (["--alpha=nan"], "--alpha must be a finite number"),
    (["--packing_reduce=median"], "value should be one of <mean|max>"),
])
def test_figures_flags_share_the_table(tmp_path, capsys, args, words):
    from hyperface_jax import figures

    np.save(tmp_path / "x.npy", np.eye(4, dtype=np.float32))
    code = figures.main(["figures", f"--embeddings={tmp_path}/x.npy",
                         f"--out={tmp_path}/f.json", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "f.json").exists()


def test_figures_refuses_one_dimension(tmp_path, capsys):
    from hyperface_jax import figures

    np.save(tmp_path / "x.npy", np.array([[1.0], [-1.0], [1.0]], np.float32))
    code = figures.main(["figures", f"--embeddings={tmp_path}/x.npy", f"--out={tmp_path}/f.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "need d >= 2" in err[0], err
    assert not (tmp_path / "f.json").exists()


def test_train_choices_are_the_models_own():
    pytest.importorskip("torch")
    from bridges.recognition import heads, iresnet
    from bridges.recognition.config import TrainConfig

    fields = {f.name: f.metadata["choices"] for f in options.flag_fields(TrainConfig)}
    assert fields["arch"] == iresnet.ARCHS and fields["head"] == heads.HEADS


def test_api_refuses_none_and_reads_paths(tmp_path):
    with pytest.raises(InputError, match=r"^--learning_rate needs a value \(None is not one\)$"):
        pack_references(20, 4, learning_rate=None)
    with pytest.raises(InputError, match=r"^--steps takes an int, got bool True$"):
        pack_references(20, 4, steps=True)
    with pytest.raises(InputError, match="Did you mean: learning_rate"):
        pack_references(20, 4, learning_rat=0.1)
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    np.save(tmp_path / "g.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
    # A pathlib.Path is a path, not a 0-d array.
    c = options.config_from_options(PackConfig, {"gallery": tmp_path / "g.npy"})
    assert c.gallery == str(tmp_path / "g.npy")
    r = pack_references(20, gallery=Path(tmp_path / "g.npy"), steps=2, log_every=1,
                        progress=False, log=lambda m: None)
    assert r.embeddings.shape == (20, 4) and r.report["flags"]["alpha"] == 0.5


def test_nested_flagfiles_resolve_against_the_including_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "inner.flags").write_text("--steps=7\n")
    (tmp_path / "a" / "outer.flags").write_text("# comment\n--flagfile=inner.flags\n--dim=5\n")
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    args = options.expand_flagfiles([f"--flagfile={tmp_path}/a/outer.flags", "--seed=3"])
    assert args == ["--steps=7", "--dim=5", "--seed=3"]
    (tmp_path / "a" / "loop.flags").write_text("--flagfile=loop.flags\n")
    with pytest.raises(InputError, match="includes itself"):
        options.expand_flagfiles([f"--flagfile={tmp_path}/a/loop.flags"])
    with pytest.raises(InputError, match="nor a shipped config: .*paper_10k"):
        options.expand_flagfiles(["--flagfile=paper_11k"])


def _unit(rows, d, seed):
    x = np.random.default_rng(seed).normal(size=(rows, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shipped_configs_work_from_outside_the_repository_and_the_init_file_sets_n(tmp_path):
    """From a folder outside the repository: the paper config by path and by name (its
    nested --flagfile of the schedule included), with a small --init file whose n and d
    win over the config's 10000 x 512; n given on the command line must agree."""
    np.save(tmp_path / "init.npy", _unit(40, 8, 1))
    np.save(tmp_path / "gallery.npy", _unit(30, 8, 2))
    small = ["--init=init.npy", "--gallery=gallery.npy", "--steps=2", "--log_every=1",
             "--checkpoint_every=1", "--noprogress"]
    for i, config in enumerate([REPO / "configs" / "paper_10k.flags", "paper_10k"]):
        r = subprocess.run([sys.executable, "-m", "hyperface_jax.pack", f"--flagfile={config}",
                            f"--out_dir=o{i}", *small], cwd=tmp_path, env=cli_env(),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        report = json.loads((tmp_path / f"o{i}" / "report.json").read_text())
        assert (report["n"], report["d"]) == (40, 8)
        flags = report["flags"]
        assert flags["decay_every"] == 1000 and flags["alpha"] == 0.5  # from paper_schedule
    r = subprocess.run([sys.executable, "-m", "hyperface_jax.pack", "--flagfile=paper_10k",
                        "--out_dir=o9", "--num_identities=10000", *small], cwd=tmp_path,
                       env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--num_identities=10000 conflicts with the init file" in r.stderr
    assert not (tmp_path / "o9").exists()


def test_api_loads_a_shipped_config_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = pack_config("paper_10k", steps=3)
    assert (c.num_identities, c.decay_every, c.steps, c.alpha) == (10_000, 1000, 3, 0.5)
    r = pack_references(num_identities=16, dim=4, config="quickstart", steps=2, log_every=1,
                        progress=False, log=lambda m: None)
    assert r.embeddings.shape == (16, 4) and r.report["flags"]["learning_rate"] == 0.01


def test_minimal_pack_runs_without_alpha_and_reports_the_value_used(tmp_path, capsys):
    out = tmp_path / "o"
    assert pack.main(["pack", "--num_identities=20", "--dim=4", f"--out_dir={out}",
                      "--steps=2", "--log_every=1", "--noprogress"]) == 0
    assert json.loads((out / "report.json").read_text())["flags"]["alpha"] == 0.0
    assert pack.main(["pack", "--num_identities=20", "--dim=4", f"--out_dir={tmp_path}/p",
                      "--alpha=0.5"]) == 2
    assert "--alpha=0.5 needs a --gallery" in capsys.readouterr().err


CLIS = ["hyperface_jax.pack", "hyperface_jax.sample", "hyperface_jax.figures",
        "hyperface_jax.analyze", "hyperface_jax.compare", "bridges.gallery", "bridges.embed",
        "bridges.generate",
        "bridges.evaluate", "bridges.train", "bridges.demo_models", "bridges.recognition.digits"]
PROBE = """
import runpy, sys
sys.argv = ["prog", sys.argv[1]]
try:
    runpy.run_module(MODULE, run_name="__main__")
except SystemExit as e:
    code = e.code
print("CODE", code)
print("HEAVY", sorted(m for m in ("jax", "torch", "matplotlib", "orbax", "scipy")
                      if m in sys.modules))
"""


@pytest.mark.parametrize("module", CLIS)
def test_help_and_a_bad_flag_import_no_jax_or_torch(module):
    for arg, code in (("--help", 0), ("--no_such_flag=1", 2)):
        r = subprocess.run([sys.executable, "-c", PROBE.replace("MODULE", repr(module)), arg],
                           env=cli_env(), capture_output=True, text=True, timeout=120, cwd=REPO)
        lines = r.stdout.splitlines()
        assert f"CODE {code}" in lines, (r.stdout[-500:], r.stderr[-2000:])
        assert lines[-1] == "HEAVY []", (module, arg, lines[-1])


def test_help_shows_the_bounds_and_the_choices(capsys):
    assert pack.main(["pack", "--help"]) == 0
    text = capsys.readouterr().out
    assert "Must be in [0, 1)." in text[text.index("--b2:"):text.index("--eps:")]
    assert cli.help_text(PackConfig).count("Must be") >= 20
