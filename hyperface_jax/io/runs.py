"""A run's output folder: usable before any work, held by one run at a time, and resumed
only by the same run.

Light on purpose (standard library only): every CLI imports it before its heavy modules.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import warnings
from pathlib import Path

from hyperface_jax.io.files import InputError, RunFailed

LOCK_NAME = ".lock"


def prepare_folder(path, flag: str = "--out_dir") -> list[Path]:
    """Create `path` (and missing parents) or check the existing folder is writable.

    Returns the folders it created, deepest last, so a run that then refuses its input can
    remove them again (bad input leaves nothing behind). Raises `InputError` with one line
    when the folder cannot be used: a regular file, under /proc, no permission, read-only.
    """
    path = Path(path)
    try:
        missing, probe = _missing_folders(path, flag)
    except OSError as e:  # e.g. a name longer than the file system allows
        raise InputError(f"{flag}={_short(path)} cannot be used as an output folder "
                         f"({e.strerror or type(e).__name__})") from None
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
            read_only = os.statvfs(path).f_flag & os.ST_RDONLY
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, os.strerror(code))
    except OSError as e:
        remove_created(created)
        raise InputError(f"{flag}={_short(path)} cannot be used as an output folder "
                         f"({_os_reason(e)})") from None
    return created


def _missing_folders(path: Path, flag: str) -> tuple[list[Path], Path]:
    """(the folders of `path` that do not exist yet, deepest first; the first that does)."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling symlink: mkdir would fail with a vague error
            raise InputError(f"{flag}={path}: {probe} is a broken symbolic link")
        missing.append(probe)
        probe = probe.parent
    return missing, probe


def _os_reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    return error.strerror or type(error).__name__


def _short(path, limit: int = 120) -> str:
    """A path for a one-line message (a 300-character name is cut in the middle)."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


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
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:  # a folder named .lock, no permission, read-only
                what = "is a folder" if self.path.is_dir() else f"cannot be opened " \
                    f"({_os_reason(e)})"
                raise InputError(f"{self.label}: its lock file {self.path} {what}; remove it "
                                 "or use another folder") from None
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
                 lock: bool = True) -> tuple[list[Path], "OutputLock | None"]:
    """Check the output location is usable and (with `lock`) lock it. Returns `(folders
    created, lock or None)`; raises `InputError` with one line. A location this thread
    already holds is not locked twice (the CLI claims before its job, the job again)."""
    output = Path(output)
    created = prepare_folder(output.parent if is_file else output, flag)
    if is_file and output.is_dir():
        remove_created(created)
        raise InputError(f"{flag}={output} is an existing folder, not a file")
    if not lock:
        return created, None
    candidate = OutputLock(output, flag, is_file=is_file)
    key = os.path.realpath(candidate.path)
    holder = _HELD.get(key)
    if holder is not None:
        if holder[0] == threading.get_ident():
            return created, None  # nested: the outer claim releases it
        raise InputError(f"{candidate.label} is in use by another run (another thread of "
                         f"process {os.getpid()}); wait for it to end or use another folder")
    try:
        candidate.acquire()
    except BaseException:
        remove_created(created)
        raise
    _HELD[key] = (threading.get_ident(), candidate)
    return created, _Held(key, candidate)


# Lock files this process holds, by real path: (thread that claimed it, its OutputLock).
_HELD: dict[str, tuple[int, OutputLock]] = {}


class _Held:
    """A held claim: `release` drops the lock and forgets it."""

    def __init__(self, key: str, lock: OutputLock):
        self.key, self.lock = key, lock

    def release(self) -> None:
        _HELD.pop(self.key, None)
        self.lock.release()


@contextlib.contextmanager
def claimed(output, flag: str = "--out_dir", *, is_file: bool = False, primary: bool = True):
    """Hold `output` for the block: checked, created and locked by the first process of a
    job (`primary`; the others share the folder and check it only). Folders created for it
    are removed again when the block refuses its input or fails (if they are empty).

    Every entry point of a job claims through here (the CLI's plumbing, the Python API),
    so no two runs write one folder at once, whichever way each was started."""
    created, lock = claim_output(output, flag, is_file=is_file, lock=primary)
    try:
        yield
    except (InputError, RunFailed):
        if lock is not None:
            lock.release()
            lock = None
        remove_created(created)
        raise
    finally:
        if lock is not None:
            lock.release()


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        holder = {}
    if "pid" not in holder:
        return "process id unknown"
    here = holder.get("host") in (None, socket.gethostname())
    return f"process {holder['pid']}" + ("" if here else f" on host {holder['host']}")


# How launchers describe a multi-process world to each process: (its rank, the world's
# size). torchrun/accelerate, SLURM, Open MPI, MPICH/Intel MPI.
LAUNCHER_WORLDS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"),
                   ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"))


def launcher_rank() -> int | None:
    """This process's rank when a launcher started it in a world of several processes:
    the rank and a size above 1 both set, the rank below the size. A lone leftover variable
    (RANK=1 in a shell) is no world: None, and the process locks like any other."""
    for rank_name, size_name in LAUNCHER_WORLDS:
        rank = os.environ.get(rank_name, "").strip()
        size = os.environ.get(size_name, "").strip()
        if rank.isdigit() and size.isdigit() and int(size) > 1 and int(rank) < int(size):
            return int(rank)
    return None


def is_first_process(joins_other_processes: bool) -> bool:
    """Whether the CLI's plumbing locks the output before the job runs: not when the job
    joins a JAX multi-process run (`joins_other_processes`: which process holds the lock
    is known only once its runtime has started, so the job claims its folder itself, by
    its runtime index, see `claimed`), nor in a launcher's process of rank > 0 (a torch
    job's ranks share the folder)."""
    return not joins_other_processes and not launcher_rank()


def check_identity(saved: dict, identity: dict, where, what: str = "a different run",
                   defaults: dict | None = None) -> None:
    """Refuse to resume `where` when the settings that define the run differ from the ones
    stored there; the one-line message lists every differing value as `name: then -> now`.
    A setting the stored record lacks (an option added since it was written) counts as its
    value in `defaults`: an option's default keeps the behaviour from before it existed."""
    defaults = defaults or {}

    def then(k):
        return saved[k] if k in saved else defaults.get(k)

    diffs = [f"{k}: {then(k)!r} -> {v!r}" for k, v in identity.items() if then(k) != v]
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
