"""Orbax checkpoints of the solver state, their checksums, and the guard that a resumed
run is the same run.

Each finished step folder holds its record (`integrity.write_record`: the run's identity
and the SHA-256 of its files). A step is restored only when its record is there and
matches: a corrupted step is refused; a step without a record (a kill between orbax's
save and the record, or a record removed) is discarded and the run resumes from the last
verified step, or starts over when there is none. Old steps are removed only after a
newer one is recorded, so a verified step always remains.
"""

import contextlib
import errno
import logging
import os
import sys
import threading
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from hyperface_jax.engine import mesh, solver
from hyperface_jax.io import integrity, runs
from hyperface_jax.io.files import InputError, save_json

RUN_FILE = "run.json"  # beside the step folders: the flags that define the run


class ChecksummedManager(ocp.CheckpointManager):
    """An orbax manager that records each step it saved once orbax has finalised it
    (process 0 writes the record) and then keeps the newest `keep` steps. orbax's own
    `max_to_keep` is off: it would delete an old step before the new one is recorded."""

    def __init__(self, directory, identity: dict, keep: int | None, defaults: dict | None = None):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, cleanup_tmp_directories=True, create=True)
        super().__init__(directory, options=options)
        self.identity, self.keep, self.unrecorded = identity, keep, set()
        self.defaults = defaults or {}  # for settings older records lack (runs.check_identity)
        if jax.process_index() == 0:
            integrity.remove_stale_temporaries(directory)  # left by older versions

    def save(self, step, *args, **kwargs):
        with os_errors():
            saved = super().save(step, *args, **kwargs)
        if saved:
            self.unrecorded.add(step)
        return saved

    def wait_until_finished(self):
        with os_errors():
            super().wait_until_finished()
        directory = Path(self.directory)
        steps = sorted(self.all_steps())
        if jax.process_index() == 0:
            for step in sorted(self.unrecorded & set(steps)):
                integrity.write_record(directory / str(step), self.identity)
        self.unrecorded.clear()
        for step in steps[:-self.keep] if self.keep else ():
            self.delete(step)  # collective: every process calls it, process 0 deletes


# tensorstore (under orbax) reports a failed write as ValueError with the OS's words inside
# and no errno: turned back into the OSError it was, so the CLI finds a full disk by errno.
_OS_WORDS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT}


@contextlib.contextmanager
def os_errors():
    try:
        yield
    except ValueError as e:
        code = next((c for words, c in _OS_WORDS.items() if words in str(e)), None)
        if code is None:
            raise
        raise OSError(code, os.strerror(code)) from e


@contextlib.contextmanager
def quiet_library_errors():
    """Within the block orbax (absl logging), asyncio and background threads print no
    tracebacks: a failed save (a full disk, an interrupt) reaches the job as an exception,
    which the CLI prints as one line; orbax would print 4-11 tracebacks of it first."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    hooks = threading.excepthook, sys.unraisablehook
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    threading.excepthook = sys.unraisablehook = lambda args: None
    try:
        yield
    finally:
        threading.excepthook, sys.unraisablehook = hooks
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def close_after_failure(manager: ChecksummedManager) -> None:
    """Close `manager` while an exception propagates: its background work is finished
    (orbax would otherwise report it failing at exit), and a second error from it is
    dropped in favour of the first."""
    try:
        manager.close()
    except Exception:  # noqa: BLE001 - the error being raised already says what failed
        pass


def open_manager(directory, identity: dict | None = None, *, max_to_keep: int = 3,
                 defaults: dict | None = None) -> ChecksummedManager:
    return ChecksummedManager(Path(directory).absolute(), identity or {}, max_to_keep, defaults)


def save(manager: ocp.CheckpointManager, state) -> None:
    """Start an asynchronous save of `state` at its own step (no-op if already saved)."""
    step = solver.step_of(state)
    if step not in manager.all_steps():
        manager.save(step, args=ocp.args.StandardSave(state))


def latest_verified_step(manager: ChecksummedManager, log=None) -> int | None:
    """The newest step whose record matches this run and its files; steps without a
    record newer than it are discarded (every process calls this: the discarding is
    collective). Raises `InputError` for a step of another run or with damaged files."""
    directory = Path(manager.directory)
    chosen, unrecorded = None, []
    for step in sorted(manager.all_steps(), reverse=True):
        folder, label = directory / str(step), f"checkpoint at step {step}"
        saved = integrity.read_record(folder, label)
        if saved is None:
            unrecorded.append(step)
            continue
        runs.check_identity(saved["run"], manager.identity, directory,
                            "checkpoints of a different run", manager.defaults)
        integrity.check_files(saved["files"], folder, folder, label)
        chosen = step
        break
    mesh.barrier("checkpoints verified")  # nobody reads a step folder deleted below
    for step in unrecorded:
        manager.delete(step)
    if unrecorded and log is not None:
        log(f"discarded the checkpoint(s) at step {', '.join(map(str, unrecorded))} in "
            f"{directory}: no checksum record (stopped while saving, or removed); "
            + (f"resuming from step {chosen}" if chosen is not None else "starting over"))
    return chosen


def restore_latest(manager: ChecksummedManager, template, log=None):
    """The latest verified state with the structure of `template`, or None if none."""
    step = latest_verified_step(manager, log)
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        # strict=False: a checkpoint written with another device count holds another number
        # of (zero) padding rows; they are truncated or zero-padded to this run's layout.
        return manager.restore(step, args=ocp.args.StandardRestore(abstract, strict=False))
    except Exception as e:  # orbax raises many types for damaged or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"checkpoint at step {step} in {manager.directory} is unreadable or does not match "
            f"this run ({first_line[:200]}); delete it or use a new --out_dir") from None


def check_same_run(directory, identity: dict, defaults: dict | None = None) -> None:
    """Refuse to resume a checkpoint folder written by a run with other defining flags.

    `identity` holds the flags that change the optimisation (not --steps, which may be
    extended, nor logging). run.json gives the early, readable refusal; each step's record
    carries the identity too, so removing run.json does not switch the check off.
    """
    saved = runs.read_identity(Path(directory) / RUN_FILE)
    if saved is not None:
        runs.check_identity(saved, identity, directory, "checkpoints of a different run",
                            defaults)


def record_run(directory, identity: dict) -> None:
    save_json(Path(directory) / RUN_FILE, identity)


def resume(out: Path, initial_state, identity: dict, *, total_steps: int, writer: bool,
           log, max_to_keep: int = 3, defaults: dict | None = None) -> tuple:
    """Open the checkpoints of the run in `out` (checking it is the same run, creating the
    folder otherwise): (state to start from, manager, step resumed from or None). A folder
    without a verified step starts over with this run's flags (a first chunk that
    diverged left nothing to resume, so other settings are welcome)."""
    out = Path(out)
    directory = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    manager = open_manager(directory, identity, max_to_keep=max_to_keep, defaults=defaults)
    if manager.all_steps():
        check_same_run(directory, identity, defaults)
    restored = restore_latest(manager, initial_state, log)
    if writer:
        record_run(directory, identity)
    if restored is None:
        return initial_state, manager, None
    step = solver.step_of(restored)
    if step > total_steps:
        raise InputError(f"{out} holds a checkpoint at step {step}, beyond --steps + "
                         f"--polish_steps = {total_steps}; raise --steps or use a new --out_dir")
    log(f"resuming from the checkpoint at step {step} in {directory}")
    return restored, manager, step


def discard_unresumable(out: Path, manager: ChecksummedManager) -> str:
    """After a run failed: what it leaves behind, in words. Without a verified step there
    is nothing to resume from, so its run.json, checkpoint folder and history go too."""
    steps = manager.all_steps()
    manager.close()
    if steps:
        return (f"the checkpoint at step {max(steps)} is kept; re-running resumes from it, "
                "other settings need a new --out_dir")
    if jax.process_index() == 0:
        import shutil

        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "history.jsonl").unlink(missing_ok=True)
    return "no checkpoint had been saved, so nothing was kept"
