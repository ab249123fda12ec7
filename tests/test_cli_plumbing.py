"""The shared CLI plumbing (hyperface_jax/cli.py, runs.py): help, flags from dataclasses,
the output folder checked and locked before any work, SIGTERM, one-line errors."""

import importlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from absl import flags
from conftest import OutDir, cli_env

from hyperface_jax import cli, options
from hyperface_jax.io import runs
from hyperface_jax.io.files import InputError, save_json
from hyperface_jax.jobs import config

# Every CLI of the project: module, the flag of its output, whether that is a file.
CLIS = [
    ("hyperface_jax.pack", "out_dir"),
    ("hyperface_jax.sample", "out_dir"),
    ("hyperface_jax.compare", "out_dir"),
    ("hyperface_jax.analyze", "out_dir"),
    ("bridges.embed", "out"),
    ("bridges.generate", "out_dir"),
    ("bridges.train", "out_dir"),
    ("bridges.evaluate", "out_dir"),
    ("bridges.recognition.digits", "out_dir"),
    ("bridges.gallery", "out_dir"),
]


@pytest.mark.parametrize("module,output", CLIS)
def test_every_cli_answers_help(capsys, module, output):
    code = importlib.import_module(module).main(["prog", "--help"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"--{output}:" in out and "--flagfile" in out


def test_pack_help_is_grouped_by_topic_in_reading_order(capsys):
    from hyperface_jax import pack

    assert pack.main(["pack", "--help"]) == 0
    text = capsys.readouterr().out
    titles = [line[:-1] for line in text.splitlines() if line.endswith(":")
              and not line.startswith(" ")]
    assert titles[1:] == list(config.HELP_GROUPS)  # no "other" group: every flag has a topic
    position = {name: text.index(f"--{name}:") if f"--{name}:" in text
                else text.index(f"--[no]{name}:") for name in
                ("temperature_start", "temperature_end", "anneal_steps", "num_identities",
                 "steps", "out_dir")}
    assert position["temperature_start"] < position["temperature_end"] < position["anneal_steps"]
    assert position["num_identities"] < position["temperature_start"] < position["steps"]
    assert position["steps"] < position["out_dir"]
    schedule = text[text.index("--schedule:"):text.index("--decay_rate:")]
    final = text[text.index("--final_learning_rate:"):text.index("--b1:")]
    assert "geometric" in schedule and "geometric" in final and "cosine" in final


def test_every_pack_flag_has_exactly_one_help_topic():
    grouped = [name for names in config.HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in config.flag_fields())


def test_dataclass_flags_round_trip_with_explicit_names():
    from bridges.recognition.config import TrainConfig, config_from_flags, define_flags

    fv = flags.FlagValues()
    define_flags(fv)
    fv(["train", "--lr=0.5", "--noamp", "--arch=ir18"])
    c = config_from_flags(fv)
    assert (c.lr, c.amp, c.arch, c.epochs) == (0.5, False, "ir18", TrainConfig.epochs)
    c = cli.config_from_argv(config.PackConfig, ["--b1=0.8", "--steps=7"])
    assert (c.b1, c.b2, c.steps) == (0.8, None, 7)
    assert c.explicit == {"b1", "steps"}


@pytest.mark.parametrize("module,output", CLIS)
def test_every_cli_requires_its_output_first(capsys, module, output):
    assert importlib.import_module(module).main(["prog"]) == 2
    assert capsys.readouterr().err == f"error: --{output} is required\n"


def _out_args(module: str, output: str, location) -> list[str]:
    return ["prog", f"--{output}={location}"]


@pytest.mark.parametrize("module,output", CLIS)
def test_an_existing_file_as_output_folder_is_refused_first(tmp_path, capsys, module, output):
    # Without the check, every CLI would fail later on a missing required flag instead.
    target = tmp_path / "file"
    target.write_text("x")
    location = target / "sub" / "x.npy" if output == "out" else target
    code = importlib.import_module(module).main(_out_args(module, output, location))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and f"--{output}=" in err and "existing file" in err, err
    assert target.read_text() == "x"


@pytest.mark.parametrize("module,output", [CLIS[0], CLIS[3], CLIS[6], CLIS[7]])
def test_an_output_folder_under_proc_is_refused_first(capsys, module, output):
    code = importlib.import_module(module).main(_out_args(module, output, "/proc/hf_test/x"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "cannot be used as an output folder" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: no permission "
                    "error to provoke")
def test_an_output_folder_without_permission_is_refused(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    assert cli.run_main(["prog", f"--out_dir={locked / 'x'}"], OutDir, lambda fv: None) == 2
    assert "cannot be used" in capsys.readouterr().err


def test_folders_made_for_a_run_that_refuses_its_input_are_removed(tmp_path, capsys):
    def refuse(fv):
        raise InputError("bad input")

    out = tmp_path / "a" / "b"
    assert cli.run_main(["prog", f"--out_dir={out}"], OutDir, refuse) == 2
    assert capsys.readouterr().err == "error: bad input\n"
    assert not (tmp_path / "a").exists()


HOLDER = """
import sys, time
from hyperface_jax.io.runs import OutputLock
OutputLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(folder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=cli_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# The reproduction: `RANK=1 python -m hyperface_jax.pack ...` on a held folder; a
# whole launcher world left in the environment does not switch pack's lock off either (its
# job locks by the JAX runtime's process index).
@pytest.mark.parametrize("environment", [{}, {"RANK": "1"}, {"SLURM_PROCID": "1"},
                                         {"OMPI_COMM_WORLD_RANK": "3"},
                                         {"RANK": "1", "WORLD_SIZE": "2"}],
                         ids=["plain", "RANK", "SLURM_PROCID", "OMPI", "launcher_world"])
def test_a_second_run_on_a_held_folder_exits_2_naming_the_holder(tmp_path, capsys,
                                                                 monkeypatch, environment):
    from hyperface_jax import pack

    out = tmp_path / "run"
    out.mkdir()
    holder = _holder(out)
    try:
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        code = pack.main(["pack", f"--out_dir={out}", "--num_identities=10", "--dim=4",
                          "--alpha=0", "--steps=1", "--noprogress"])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1 and f"process {holder.pid}" in err, err
        assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / runs.LOCK_NAME).exists()  # the file outlives its holder ...
    ran = []
    assert cli.run_main(["prog", f"--out_dir={out}"], OutDir, lambda fv: ran.append(
        (out / runs.LOCK_NAME).read_text())) == 0
    assert str(os.getpid()) in ran[0]  # ... but the lock was free: taken over
    assert not (out / runs.LOCK_NAME).exists()  # and removed at the end


def test_only_the_first_process_of_a_multi_process_job_locks(tmp_path):
    out = tmp_path / "run"
    with runs.claimed(out, primary=False):  # a secondary process: checks, creates, no lock
        assert out.is_dir() and not (out / runs.LOCK_NAME).exists()
        with runs.claimed(out):  # the first process locks
            assert (out / runs.LOCK_NAME).exists()
            with runs.claimed(out):  # the job's own claim inside the CLI's: nested
                pass
            assert (out / runs.LOCK_NAME).exists()
        assert not (out / runs.LOCK_NAME).exists()
    # Whether a job joins a multi-process run is its config's to say (fields with role
    # "multi_process"); such a job locks its output itself, by its runtime's index.
    joins = cli.config_from_argv(config.PackConfig, ["--coordinator_address=127.0.0.1:1234"])
    assert options.joins_other_processes(joins)
    assert options.joins_other_processes(config.PackConfig(distributed=True))
    assert not options.joins_other_processes(config.PackConfig())
    assert not options.joins_other_processes(OutDir())
    assert not runs.is_first_process(joins_other_processes=True)


def test_a_launchers_world_needs_rank_and_size(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "OMPI_COMM_WORLD_RANK",
                 "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    assert runs.launcher_rank() is None and runs.is_first_process(joins_other_processes=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert runs.launcher_rank() == 1 and not runs.is_first_process(joins_other_processes=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert runs.launcher_rank() is None


def test_a_lock_held_by_another_thread_of_the_process_is_refused(tmp_path):
    errors = []

    def other():
        try:
            with runs.claimed(tmp_path):
                pass
        except InputError as e:
            errors.append(str(e))

    with runs.claimed(tmp_path):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and "another thread" in errors[0]


def test_sigterm_becomes_an_interrupt_in_the_main_thread_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with cli.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before
    errors = []

    def in_thread():
        try:
            with cli.sigterm_as_interrupt():
                pass
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert errors == []


def test_sigterm_during_a_job_exits_130(tmp_path):
    def job(fv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("not interrupted")

    assert cli.run_main(["prog", f"--out_dir={tmp_path}"], OutDir, job) == 130
    assert not (tmp_path / runs.LOCK_NAME).exists()


def test_a_non_utf8_flagfile_is_one_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "latin1.flags"
    bad.write_bytes("--out_dir=caf\xe9\n".encode("latin-1"))
    assert cli.run_main(["prog", f"--flagfile={bad}"], OutDir, lambda fv: None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "UTF-8" in err
    nested = tmp_path / "outer.flags"
    nested.write_text(f"--flagfile={bad}\n")
    assert cli.run_main(["prog", f"--flagfile={nested}"], OutDir, lambda fv: None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UTF-8" in err


def test_a_missing_flagfile_is_one_line(tmp_path, capsys):
    assert cli.run_main(["prog", f"--flagfile={tmp_path / 'no.flags'}"], OutDir,
                        lambda fv: None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no.flags" in err


def test_a_resumed_run_with_other_settings_names_every_difference(tmp_path):
    save_json(tmp_path / "run.json", {"alpha": 0.5, "steps": 10, "n": 4})
    saved = runs.read_identity(tmp_path / "run.json")
    runs.check_identity(saved, {"alpha": 0.5, "n": 4}, tmp_path)
    with pytest.raises(InputError) as e:
        runs.check_identity(saved, {"alpha": 0.25, "n": 5}, tmp_path)
    message = str(e.value)
    assert "alpha: 0.5 -> 0.25" in message and "n: 4 -> 5" in message
    assert "\n" not in message


def test_a_file_system_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock"):
        assert cli.run_main(["prog", f"--out_dir={tmp_path}"], OutDir, lambda fv: None) == 0
    assert not (tmp_path / runs.LOCK_NAME).exists()
