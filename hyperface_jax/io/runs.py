"""A run's output folder: usable before any work, held by one run at a time, and resumed
only by the same run.

Light on purpose (standard library only): every CLI imports it before its heavy modules.
"""

import errno
import fcntl
import json
import os
import socket
import warnings
from pathlib import Path

from hyperface_jax.io.files import InputError

LOCK_NAME = ".lock"


def prepare_folder(path, flag: str = "--out_dir") -> list[Path]:
    """Create `path` (and missing parents) or check the existing folder is writable.

    Returns the folders it created, deepest last, so a run that then refuses its input can
    remove them again (bad input leaves nothing behind). Raises `InputError` with one line
    when the folder cannot be used: a regular file, under /proc, no permission, read-only.
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling symlink: mkdir would fail with a vague error
            raise InputError(f"{flag}={path}: {probe} is a broken symbolic link")
        missing.append(probe)
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is" if probe == path else f"is under {probe}, which is"
        raise InputError(f"{flag}={path} {what} an existing file, not a folder")
    created = []
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
                created.append(folder)
            except FileExistsError:  # another process of the same job made it meanwhile
                if not folder.is_dir():
                    raise
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as e:
        remove_created(created)
        reason = e.strerror or type(e).__name__
        raise InputError(f"{flag}={path} cannot be used as an output folder ({reason})") from None
    return created


def remove_created(created: list[Path]) -> None:
    """Remove the folders `prepare_folder` created, if they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


class OutputLock:
    """An exclusive `flock` on a lock file (`<out_dir>/.lock`, or `.<name>.lock` beside an
    output file), which names its holder (pid and host).

    The kernel drops the lock when the holder dies, so a lock file left by a killed run is
    free and simply taken over; a live holder makes `acquire` raise `InputError` naming its
    process id. The file is removed on `release`."""

    def __init__(self, output, flag: str = "--out_dir", *, is_file: bool = False):
        output = Path(output)
        self.path = output.parent / f".{output.name}.lock" if is_file else output / LOCK_NAME
        self.label = f"{flag}={output}"
        self.fd = None

    def acquire(self) -> "OutputLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise InputError(
                    f"{self.label} is in use by another run "
                    f"({holder}); wait for it to end or use another folder") from None
            except OSError as e:  # a file system without locks (some FUSE mounts)
                os.close(fd)
                self.path.unlink(missing_ok=True)
                warnings.warn(f"{self.label}: cannot lock {self.path} ({e.strerror}); "
                              "running without the guard against a second run", stacklevel=2)
                return self
            # The holder may have released and removed the file between our open and our
            # lock: then we hold a lock on a file nobody else will open. Try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: see acquire
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def claim_output(output, flag: str, *, is_file: bool = False,
                 process_id: int | None = None) -> tuple[list[Path], "OutputLock | None"]:
    """Check the output location is usable and lock it (the first process of a job only).
    Returns `(folders created, lock or None)`; raises `InputError` with one line."""
    output = Path(output)
    created = prepare_folder(output.parent if is_file else output, flag)
    if is_file and output.is_dir():
        remove_created(created)
        raise InputError(f"{flag}={output} is an existing folder, not a file")
    if is_secondary_process(process_id):
        return created, None
    try:
        return created, OutputLock(output, flag, is_file=is_file).acquire()
    except BaseException:
        remove_created(created)
        raise


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        holder = {}
    if "pid" not in holder:
        return "process id unknown"
    here = holder.get("host") in (None, socket.gethostname())
    return f"process {holder['pid']}" + ("" if here else f" on host {holder['host']}")


# Environment variables through which launchers name a process's rank: torchrun and
# accelerate (RANK), SLURM, Open MPI, MPICH/Intel MPI, Cloud TPU pod slices.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                  "CLOUD_TPU_TASK_ID")


def is_secondary_process(process_id: int | None = None) -> bool:
    """True in the 2nd, 3rd ... process of a multi-process job: the folder lock is taken
    by the first alone (all of them write into, or read from, the same folder)."""
    if process_id is not None and process_id > 0:
        return True
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return True
    return False


def check_identity(saved: dict, identity: dict, where, what: str = "a different run") -> None:
    """Refuse to resume `where` when the settings that define the run differ from the ones
    stored there; the one-line message lists every differing value as `name: then -> now`."""
    diffs = [f"{k}: {saved.get(k)!r} -> {v!r}"
             for k, v in identity.items() if saved.get(k) != v]
    if diffs:
        raise InputError(f"{where} holds {what} ({'; '.join(diffs)}); use a new --out_dir "
                         "or the same flags")


def read_identity(path) -> dict | None:
    """The identity stored at `path` (JSON), None when there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is unreadable ({e}); use a new --out_dir") from None
    if not isinstance(saved, dict):
        raise InputError(f"{path} is not a run description; use a new --out_dir")
    return saved
