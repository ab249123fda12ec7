"""Sharded packing (hyperface_jax.sharding): the same embeddings on 1, 2, 4 devices and on
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
from tests.conftest import REPO, cli_env

TOLERANCE = 1e-5
STEPS = 50
COMMON = ["--num_identities=48", "--dim=8", "--alpha=0.5", "--log_every=25",
          "--checkpoint_every=25", "--progress=false", "--decay_every=20"]


def _devices_env(count: int) -> dict:
    return cli_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
                   JAX_PLATFORMS="cpu")


def _python(code: str, devices: int, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          env=_devices_env(devices), capture_output=True, text=True,
                          timeout=timeout)


def _pack_cli(out, *flags, devices: int, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hyperface_jax.pack", f"--out_dir={out}",
                           *map(str, flags)], cwd=REPO, env=_devices_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def _unit(rows, d, seed):
    x = np.random.default_rng(seed).normal(size=(rows, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def gallery(tmp_path):
    path = tmp_path / "gallery.npy"
    np.save(path, _unit(37, 8, seed=5))  # 37 rows: padded on 2 and 4 devices
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Device counts, both modes, through the solver API ---------------------------------------

SOLVER_RUNS = """
import json
import jax, jax.numpy as jnp, numpy as np
from hyperface_jax import optimizers, sharding, solver, sphere
n, d = 48, 8
x0 = sphere.random_unit_vectors(jax.random.PRNGKey(0), n, d)
gallery = np.load({gallery!r})
smooth = dict(temperature_start=1.0, temperature_end=100.0, anneal_steps={steps})
settings = [dict(alpha=0.5), dict(alpha=0.5, reduce="max"),
            dict(alpha=0.5, batch_size=16), dict(alpha=0.5, batch_size=24,
                                                 minibatch_update="dense"),
            dict(alpha=0.5, objective="logsumexp", **smooth),
            dict(alpha=0.5, objective="riesz", reduce="max", batch_size=16, **smooth)]
out, memory = {{}}, {{}}
for i, s in enumerate(settings):
    opt = optimizers.make_optimizer("adam", optimizers.make_schedule(
        "staircase", 0.01, steps={steps}, decay_rate=0.5, decay_every=20))
    config = solver.SolverConfig(**s)
    ref, _ = solver.make_runner(opt, config, n)(solver.init_state(x0, opt, 3),
                                                jnp.asarray(gallery), {steps})
    out[f"ref{{i}}"] = np.asarray(ref.embeddings)
    for count in {{0: (1, 2, 4), 2: (2, 4)}}.get(i, (4,)):
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:count]), (sharding.AXIS,))
        state = sharding.put_state(solver.init_state(x0, opt, 3), mesh)
        g = sharding.put_gallery(gallery, mesh)
        run = sharding.make_runner(opt, config, n, mesh, sharding.state_shardings(state, mesh))
        compiled = run.lower(state, g, jnp.int32(0)).compile()
        state, _ = compiled(state, g, jnp.int32({steps}))
        assert state.embeddings.sharding.spec == jax.sharding.PartitionSpec(sharding.AXIS)
        out[f"mesh{{count}}_{{i}}"] = sharding.to_host(state.embeddings)
        if i == 0:
            memory[count] = [sharding.largest_array_bytes(compiled),
                             compiled.memory_analysis().argument_size_in_bytes]
np.savez({out!r}, **out)
print(json.dumps(memory))
"""


def test_one_two_and_four_devices_match_the_single_device_solver_after_50_steps(
        tmp_path, gallery):
    out = tmp_path / "runs.npz"
    r = _python(SOLVER_RUNS.format(gallery=str(gallery), steps=STEPS, out=str(out)), devices=4)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = np.load(out)
    # Full batch (mean, max), mini-batch (sparse, dense), smooth objectives (logsumexp full
    # batch, riesz mini-batch with the max reduction); 2 devices for full batch and sparse
    # mini-batch, 4 for all.
    for i in range(6):
        ref = runs[f"ref{i}"]
        for count in {0: (1, 2, 4), 2: (2, 4)}.get(i, (4,)):
            diff = np.abs(runs[f"mesh{count}_{i}"] - ref).max()
            assert diff < TOLERANCE, (i, count, diff)
    # Per-device memory of the compiled full-batch program falls as devices are added:
    # the largest array (a similarity block) and the arguments (state and gallery rows).
    memory = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    for fewer, more in ((1, 2), (2, 4)):
        assert memory[more][0] < memory[fewer][0], memory
        assert memory[more][1] < 0.75 * memory[fewer][1], memory
    # The settings really differ (the comparison is not between identical trivial runs).
    assert np.abs(runs["ref0"] - runs["ref2"]).max() > 1e-2
    assert np.abs(runs["ref2"] - runs["ref3"]).max() > 1e-3


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
    procs = []
    for pid in (1, 0):
        multi = [*flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={pid}"]
        cmd = ([sys.executable, "-c", AUDITED_MAIN.format(log=str(audit_log)), "-", *multi]
               if pid == 1 else [sys.executable, "-m", "hyperface_jax.pack", *multi])
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_devices_env(2), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:  # a lost peer aborts or hangs the other: never leave one behind
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
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
    flags = [*COMMON, f"--gallery={gallery}", "--batch_size=16"]
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
common = ["--dim=8", "--alpha=0", "--steps=2", "--progress=false"]
cases = [["--num_identities=48", "--distributed"], ["--num_identities=50"],
         ["--num_identities=48", "--batch_size=18"],
         ["--num_identities=48", "--restarts=2"],
         ["--num_identities=48", "--neighbor_list_size=8"],
         ["--num_identities=48", "--devices=8"], ["--num_identities=48", "--devices=two"],
         ["--num_identities=48", "--num_processes=2"]]
for i, case in enumerate(cases):
    code = pack.main(["pack", f"--out_dir={tmp}/o{{i}}", *common, *case])
    print(f"code {{code}}", file=sys.stderr, flush=True)
code = pack.main(["pack", f"--out_dir={tmp}/ok", *common, "--num_identities=48", "--devices=2"])
print(f"code {{code}}", file=sys.stderr, flush=True)
"""


def test_unsupported_sharded_settings_exit_2_naming_the_fix(tmp_path):
    r = _python(REFUSALS.format(tmp=str(tmp_path)), devices=4)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "code"))]
    expected = [
        "could not join the multi-process run",  # --distributed outside a cluster
        "do not split evenly over 4 devices; choose --num_identities divisible by 4",
        "--batch_size=18 does not split evenly over 4 devices; choose a multiple of 4",
        "--restarts=2 is not supported on 4 devices; pass --restarts=1 or --devices=1",
        "--neighbor_list_size is not supported on 4 devices yet",
        "--devices=8 but 4 device(s) are available",
        "--devices must be 'all' or a positive count",
        "--num_processes/--process_id need --coordinator_address",
    ]
    for i, words in enumerate(expected):
        assert lines[2 * i].startswith("error: ") and words in lines[2 * i], (words, lines)
        assert lines[2 * i + 1] == "code 2", lines
        assert not (tmp_path / f"o{i}").exists()
    assert lines[-1] == "code 0", r.stderr[-3000:]
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["sharded_over_devices"] == 2 and report["device_count"] == 4
