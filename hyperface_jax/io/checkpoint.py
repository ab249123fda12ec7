"""Orbax checkpoints of the solver state, their checksums, and the guard that a resumed
run is the same run."""

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from hyperface_jax.engine import solver
from hyperface_jax.io import integrity, runs
from hyperface_jax.io.files import InputError, save_json

RUN_FILE = "run.json"  # beside the step folders: the flags that define the run


class ChecksummedManager(ocp.CheckpointManager):
    """An orbax manager that records the SHA-256 of every file of each finished step
    (`integrity.LEDGER` beside the step folders; process 0 writes it). orbax's `save`
    waits for the previous save first, so each step is hashed once, when it is final."""

    def wait_until_finished(self):
        super().wait_until_finished()
        if jax.process_index() != 0:
            return
        directory = Path(self.directory)
        steps = [str(s) for s in self.all_steps()]
        known = integrity.read_ledger(directory)
        new = {s: integrity.folder_digests(directory / s) for s in steps if s not in known}
        if new or set(known) - set(steps):
            integrity.record(directory, new, keep=steps)


def open_manager(directory, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, cleanup_tmp_directories=True, create=True)
    return ChecksummedManager(Path(directory).absolute(), options=options)


def save(manager: ocp.CheckpointManager, state) -> None:
    """Start an asynchronous save of `state` at its own step (no-op if already saved)."""
    step = solver.step_of(state)
    if step not in manager.all_steps():
        manager.save(step, args=ocp.args.StandardSave(state))


def restore_latest(manager: ocp.CheckpointManager, template):
    """The latest saved state with the structure of `template`, or None if there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    directory = Path(manager.directory)
    integrity.verify(directory, str(step), directory / str(step), directory / str(step),
                     f"checkpoint at step {step}")
    try:
        # strict=False: a checkpoint written with another device count holds another number
        # of (zero) padding rows; they are truncated or zero-padded to this run's layout.
        return manager.restore(step, args=ocp.args.StandardRestore(abstract, strict=False))
    except Exception as e:  # orbax raises many types for damaged or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"checkpoint at step {step} in {manager.directory} is unreadable or does not match "
            f"this run ({first_line[:200]}); delete it or use a new --out_dir") from None


def check_same_run(directory, identity: dict) -> None:
    """Refuse to resume a checkpoint folder written by a run with other defining flags.

    `identity` holds the flags that change the optimisation (not --steps, which may be
    extended, nor logging). The first run writes it; later runs must match it.
    """
    saved = runs.read_identity(Path(directory) / RUN_FILE)
    if saved is not None:
        runs.check_identity(saved, identity, directory, "checkpoints of a different run")


def record_run(directory, identity: dict) -> None:
    path = Path(directory) / RUN_FILE
    if not path.exists():
        save_json(path, identity)


def resume(out: Path, initial_state, identity: dict, *, total_steps: int, writer: bool,
           log, max_to_keep: int = 3) -> tuple:
    """Open the checkpoints of the run in `out` (checking it is the same run, creating the
    folder otherwise): (state to start from, manager, step resumed from or None)."""
    out = Path(out)
    check_same_run(out / "checkpoints", identity)
    out.mkdir(parents=True, exist_ok=True)
    manager = open_manager(out / "checkpoints", max_to_keep=max_to_keep)
    if writer:
        record_run(out / "checkpoints", identity)
    restored = restore_latest(manager, initial_state)
    if restored is None:
        return initial_state, manager, None
    step = solver.step_of(restored)
    if step > total_steps:
        raise InputError(f"{out} holds a checkpoint at step {step}, beyond --steps + "
                         f"--polish_steps = {total_steps}; raise --steps or use a new --out_dir")
    log(f"resuming from the checkpoint at step {step} in {out / 'checkpoints'}")
    return restored, manager, step
