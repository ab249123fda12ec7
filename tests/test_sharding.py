"""Sharded packing (`placement.Sharded`): the same embeddings on 1, 2, 4 devices and on
2 processes x 2 devices, checkpoints that move between device counts, refused options.

Forced host devices need XLA_FLAGS before jax is imported, so every multi-device run is a
subprocess; this process keeps its single CPU device and runs the single-device solver as
the reference.
"""

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hyperface_jax import pack
from tests.conftest import REPO, devices_env, python_on_devices

TOLERANCE = 1e-5
STEPS = 50
COMMON = ["--num_identities=48", "--dim=8", "--alpha=0.5", "--log_every=25",
          "--checkpoint_every=25", "--progress=false", "--decay_every=20"]


def _pack_cli(out, *flags, devices: int, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hyperface_jax.pack", f"--out_dir={out}",
                           *map(str, flags)], cwd=REPO, env=devices_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def _unit(rows, d, seed):
    x = np.random.default_rng(seed).normal(size=(rows, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def gallery(tmp_path):
    path = tmp_path / "gallery.npy"
    np.save(path, _unit(37, 8, seed=5))  # 37 rows: padded on 2 and 4 devices
    return path


def _run_together(commands, timeout: float) -> list[tuple[str, str]]:
    """Start the processes of a multi-process run (2 CPU devices each), wait for all, and
    check each exited 0; returns their (stdout, stderr)."""
    procs = [subprocess.Popen(cmd, cwd=REPO, env=devices_env(2), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for cmd in commands]
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:  # a lost peer aborts or hangs the other: never leave one behind
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every feature on 1, 2 and 4 devices and on 2 processes x 2 devices, through the API ------

# n = 50 rows, mini-batches of 18 and a gallery of 37 rows split over 2 and 4 devices: every
# case pads and masks rows. Each run covers the features in its name (runs are few because
# each one compiles several programs per placement: CI time).
SMOOTH = dict(temperature_start=1.0, temperature_end=100.0)
FEATURES = {
    "paper_max_mean_full_batch": {},
    "max_reduce_max_then_polish": dict(packing_reduce="max", polish_steps=10,
                                       polish_learning_rate=1e-3),
    "minibatch_sparse": dict(batch_size=18),
    "riesz_reduce_max_minibatch_dense": dict(objective="riesz", packing_reduce="max",
                                             batch_size=18, minibatch_update="dense", **SMOOTH),
    "neighbor_lists_logsumexp": dict(objective="logsumexp", neighbor_list_size=6,
                                     gallery_list_size=3, neighbor_refresh_every=5, **SMOOTH),
    "listed_minibatch_logsumexp_descent": dict(objective="logsumexp", batch_size=18,
                                               neighbor_list_size=6, gallery_list_size=3,
                                               neighbor_refresh_every=5,
                                               neighbor_descent_every=2, **SMOOTH),
    "restarts_with_displacement_lists": dict(
        restarts=2, objective="logsumexp", neighbor_list_size=6, gallery_list_size=3,
        neighbor_rebuild="displacement", **SMOOTH),
}

FEATURE_RUNS = """
import json, sys
import jax, numpy as np
from hyperface_jax import pack
from hyperface_jax.measure.compiled import largest_array_bytes
from hyperface_jax.jobs import packing
from hyperface_jax.jobs.config import make_config
gallery = np.load({gallery!r})
features = json.loads({features!r})
base = dict(num_identities=50, dim=8, alpha=0.5, steps={steps}, log_every=25,
            checkpoint_every=25, progress=False, decay_every=20, out_dir="", **{extra})
out, memory = {{}}, {{}}
for name, setting in features.items():
    for devices in {devices}:
        c = make_config(**base, **setting, devices=devices)
        report, x = packing.run_job(c, log=lambda m: None, gallery=gallery)
        out[f"{{name}}/{{devices}}"] = x
        if name == "paper_max_mean_full_batch" and devices != "all":
            compiled = packing.plan(c, gallery=gallery).runners[0]
            memory[devices] = [largest_array_bytes(compiled),
                               compiled.memory_analysis().argument_size_in_bytes]
if jax.process_index() == 0:
    np.savez({out!r}, **out)
    print(json.dumps(memory))
"""


def _feature_script(tmp_path, gallery, devices, extra="{}"):
    out = tmp_path / "runs.npz"
    return FEATURE_RUNS.format(gallery=str(gallery), features=json.dumps(FEATURES),
                               steps=STEPS, devices=devices, out=str(out), extra=extra), out


def _run_features(tmp, devices: str, process_devices: int = 4):
    gallery = tmp / "gallery.npy"
    np.save(gallery, _unit(37, 8, seed=5))
    script, out = _feature_script(tmp, gallery, devices=devices)
    r = python_on_devices(script, devices=process_devices, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    memory = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    return dict(np.load(out)), memory


@pytest.fixture(scope="module")
def feature_runs(tmp_path_factory):
    """One process with 4 forced CPU devices runs every feature through `packing.run_job` on
    1 device (the `Local` placement) and on a mesh of 4 devices."""
    return _run_features(tmp_path_factory.mktemp("features"), '("1", "4")')


@pytest.mark.parametrize("feature", list(FEATURES))
def test_every_feature_on_four_devices_equals_one_device_after_50_steps(feature_runs, feature):
    runs, _ = feature_runs
    one = runs[f"{feature}/1"]
    assert one.shape == (50, 8)
    diff = np.abs(runs[f"{feature}/4"] - one).max()
    assert diff < TOLERANCE, (feature, diff)


# Slow: the same code as 4 devices with another ring size (the fast test above covers the
# path; this one checks 2 devices too).
@pytest.mark.slow
def test_every_feature_on_two_devices_equals_one_device(tmp_path, feature_runs):
    runs, _ = feature_runs
    two, memory = _run_features(tmp_path, '("2",)', process_devices=2)
    for feature in FEATURES:
        diff = np.abs(two[f"{feature}/2"] - runs[f"{feature}/1"]).max()
        assert diff < TOLERANCE, (feature, diff)
    assert memory[2][1] < 0.75 * feature_runs[1][1][1], memory  # arguments per device


def test_the_features_really_differ_and_memory_per_device_falls_with_devices(feature_runs):
    runs, memory = feature_runs
    # The comparisons above are not between identical trivial runs.
    names = list(FEATURES)
    for a in names:
        for b in names[names.index(a) + 1:]:
            assert np.abs(runs[f"{a}/1"] - runs[f"{b}/1"]).max() > 1e-4, (a, b)
    # Per-device memory of the compiled full-batch program: the largest array (a similarity
    # block) and the arguments (state and gallery rows) fall as devices are added.
    assert memory[4][0] < memory[1][0], memory
    assert memory[4][1] < 0.5 * memory[1][1], memory


# Slow: the multi-process machinery is covered by the CLI test below (full batch, resume
# across processes); this one checks every feature on 2 processes x 2 devices.
@pytest.mark.slow
def test_every_feature_on_two_processes_of_two_devices_equals_one_device(
        tmp_path, feature_runs):
    runs, _ = feature_runs
    gallery = tmp_path / "gallery.npy"
    np.save(gallery, _unit(37, 8, seed=5))
    port = _free_port()
    commands = []
    for pid in (1, 0):
        extra = (f"dict(coordinator_address='127.0.0.1:{port}', num_processes=2, "
                 f"process_id={pid})")
        script, out = _feature_script(tmp_path, gallery, devices='("all",)', extra=extra)
        commands.append([sys.executable, "-c", textwrap.dedent(script)])
    _run_together(commands, timeout=600)
    multi = np.load(out)
    for feature in FEATURES:
        diff = np.abs(multi[f"{feature}/all"] - runs[f"{feature}/1"]).max()
        assert diff < TOLERANCE, (feature, diff)


# The CLI: multi-process, checkpoints, refusals ---------------------------------------------

AUDITED_MAIN = """
import os, runpy, sys
written = []
def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if (mode and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR)):
            written.append(str(path))
    elif event in ("os.rename", "os.replace"):
        written.append(str(args[1]))
sys.addaudithook(hook)
sys.argv = ["hyperface_jax.pack", *sys.argv[2:]]
try:
    runpy.run_module("hyperface_jax.pack", run_name="__main__")
finally:
    with open({log!r}, "w") as f:
        f.write("\\n".join(written))
"""


def _two_processes(flags, audit_log):
    """Run pack as 2 processes x 2 CPU devices on 127.0.0.1; process 1's file writes are
    recorded by an audit hook into `audit_log`. Returns process 0's and 1's stderr."""
    port = _free_port()
    commands = []
    for pid in (1, 0):
        multi = [*flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={pid}"]
        commands.append([sys.executable, "-c", AUDITED_MAIN.format(log=str(audit_log)), "-",
                         *multi] if pid == 1 else
                        [sys.executable, "-m", "hyperface_jax.pack", *multi])
    results = _run_together(commands, timeout=240)
    return results[1][1], results[0][1]


# The mini-batch variant is slow-marked: its sharded step is covered on 2 and 4 devices by the
# solver-level test above, and the multi-process machinery by the full-batch variant.
@pytest.mark.parametrize("mode", [
    [], pytest.param(["--batch_size=16"], marks=pytest.mark.slow)], ids=["full_batch", "minibatch"])
def test_two_processes_of_two_devices_match_one_device_and_only_process_0_writes(
        tmp_path, gallery, mode):
    flags = [*COMMON, f"--gallery={gallery}", *mode]
    single = tmp_path / "single"
    assert pack.main(["pack", f"--out_dir={single}", *flags, f"--steps={STEPS}"]) == 0

    # 25 steps, then a second pair of processes restores the multi-host checkpoint and
    # continues to 50.
    shared = tmp_path / "shared"
    log = tmp_path / "process1_writes.txt"
    _two_processes([f"--out_dir={shared}", *flags, "--steps=25"], log)
    err0, err1 = _two_processes([f"--out_dir={shared}", *flags, f"--steps={STEPS}"], log)

    a = np.load(single / "embeddings.npy")
    b = np.load(shared / "embeddings.npy")
    assert np.abs(a - b).max() < TOLERANCE
    report = json.loads((shared / "report.json").read_text())
    assert report["device_count"] == 4 and report["sharded_over_devices"] == 4
    assert report["steps"] == STEPS and report["resumed_from_step"] == 25
    assert [h["step"] for h in report["history"]] == [0, 25, 50]
    # The figures, searched on the ring, are those of one device.
    expected = json.loads((single / "report.json").read_text())["figures"]
    for key, value in expected.items():
        assert abs(report["figures"][key] - value) < 1e-4 * max(1.0, abs(value)), key
    # Process 1 wrote nothing outside the (collective) checkpoints.
    written = [w for w in log.read_text().splitlines() if str(shared) in w]
    assert any("/checkpoints/" in w for w in written)  # the audit hook saw process 1 write
    assert written == [w for w in written if "/checkpoints/" in w]
    assert not any(w.endswith(("embeddings.npy", "report.json", "curves.png", "history.jsonl"))
                   for w in written)
    assert "done:" in err0 and "done:" not in err1  # only process 0 reports


def test_checkpoints_move_between_four_devices_and_one(tmp_path, gallery):
    # 50 rows: 2 padding rows on 4 devices, none on 1; mini-batches of 18.
    flags = [*COMMON, "--num_identities=50", f"--gallery={gallery}", "--batch_size=18"]
    straight = tmp_path / "straight"
    assert pack.main(["pack", f"--out_dir={straight}", *flags, f"--steps={STEPS}"]) == 0
    reference = np.load(straight / "embeddings.npy")

    four_then_one = tmp_path / "four_then_one"
    r = _pack_cli(four_then_one, *flags, "--steps=25", devices=4)
    assert r.returncode == 0, r.stderr[-3000:]
    assert pack.main(["pack", f"--out_dir={four_then_one}", *flags, f"--steps={STEPS}"]) == 0

    one_then_four = tmp_path / "one_then_four"
    assert pack.main(["pack", f"--out_dir={one_then_four}", *flags, "--steps=25"]) == 0
    r = _pack_cli(one_then_four, *flags, f"--steps={STEPS}", devices=4)
    assert r.returncode == 0, r.stderr[-3000:]

    for out in (four_then_one, one_then_four):
        report = json.loads((out / "report.json").read_text())
        assert report["resumed_from_step"] == 25 and report["steps"] == STEPS
        assert np.abs(np.load(out / "embeddings.npy") - reference).max() < TOLERANCE
    assert json.loads((one_then_four / "report.json").read_text())["sharded_over_devices"] == 4


REFUSALS = """
import sys
from hyperface_jax import pack
from hyperface_jax.jobs import packing
common = ["--dim=8", "--alpha=0", "--steps=2", "--progress=false"]
cases = [["--num_identities=48", "--distributed"],
         ["--num_identities=48", "--devices=8"], ["--num_identities=48", "--devices=two"],
         ["--num_identities=48", "--num_processes=2"]]
for i, case in enumerate(cases):
    code = pack.main(["pack", f"--out_dir={tmp}/o{{i}}", *common, *case])
    print(f"code {{code}}", file=sys.stderr, flush=True)
code = pack.main(["pack", f"--out_dir={tmp}/ok", *common, "--num_identities=49", "--devices=2",
                  "--restarts=2", "--neighbor_list_size=4", "--objective=logsumexp"])
print(f"code {{code}}", file=sys.stderr, flush=True)
"""


def test_bad_placement_flags_exit_2_and_the_sharded_path_refuses_nothing_one_device_takes(
        tmp_path):
    r = python_on_devices(REFUSALS.format(tmp=str(tmp_path)), devices=4)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "code"))]
    expected = [
        "could not join the multi-process run",  # --distributed outside a cluster
        "--devices=8 but 4 device(s) are available",
        "--devices must be 'all' or a positive count",
        "--num_processes/--process_id need --coordinator_address",
    ]
    for i, words in enumerate(expected):
        assert lines[2 * i].startswith("error: ") and words in lines[2 * i], (words, lines)
        assert lines[2 * i + 1] == "code 2", lines
        assert not (tmp_path / f"o{i}").exists()
    # 49 rows on 2 devices with restarts and neighbour lists: accepted.
    assert lines[-1] == "code 0", r.stderr[-3000:]
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["sharded_over_devices"] == 2 and report["device_count"] == 4
    assert report["n"] == 49 and report["restart_kept"] in (0, 1)
