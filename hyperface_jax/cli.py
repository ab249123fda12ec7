"""The command-line contract every `python -m ...` tool of this project shares.

Flags are absl `FlagValues` (defined from a config dataclass where the tool has one, see
`define_dataclass_flags`); `--help` prints them grouped by topic; a flag error, a stray
argument, an unreadable flagfile or an `InputError` prints one line `error: ...` on stderr
and exits 2; the output location (`--out_dir`, or an output file) is checked and locked
before any work; Ctrl-C or SIGTERM exits 130 (jobs that checkpoint save first); a full
disk prints one line and exits 1.
"""

import contextlib
import dataclasses
import errno
import os
import signal
import sys
import textwrap
import threading
import types
import typing
from collections.abc import Callable
from pathlib import Path

from absl import flags

from hyperface_jax.io import runs
from hyperface_jax.io.files import DiskFullError, InputError, RunFailed, disk_full


def run_main(argv: list[str] | None, fv: flags.FlagValues,
             job: Callable[[flags.FlagValues], object], *,
             describe: Callable[[InputError], str] = str,
             output: str | None = "out_dir", output_is_file: bool = False,
             help_groups: dict[str, tuple[str, ...]] | None = None) -> int:
    """Parse `argv` (sys.argv when None) into `fv`, run `job(fv)`, return the exit code.

    `output` names the flag of the job's output folder (or file, `output_is_file`): it is
    required, checked and locked before `job` runs, and folders created for it are removed
    again if the job then refuses its input or fails (`RunFailed`) before writing to them.
    """
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(help_text(fv, help_groups))
        return 0
    try:
        rest = parse_flags(fv, argv)
    except InputError as e:
        return _error(e)
    if len(rest) > 1:
        return _error(f"unexpected arguments {rest[1:]}")
    location = fv[output].value if output and output in fv else ""
    if output and output in fv and not location:
        return _error(f"--{output} is required")
    try:
        with sigterm_as_interrupt():
            # A multi-process job locks its folder itself once it knows its process index
            # (runs.is_first_process); then the folder is only checked here.
            claim = (runs.claimed(location, f"--{output}", is_file=output_is_file,
                                  primary=runs.is_first_process(fv))
                     if location else contextlib.nullcontext())
            with claim:
                job(fv)
    except InputError as e:
        return _error(describe(e))
    except KeyboardInterrupt:
        return 130
    except RunFailed as e:  # the run could not deliver; finished work (checkpoints) is kept
        return _error(str(e), code=1)
    except Exception as e:
        if isinstance(e, DiskFullError):
            return _error(e.strerror, code=1)
        full = _disk_full_errno(e)
        if full is None:
            raise
        # A write outside files.atomic_write (orbax, tensorstore, a library's own file).
        where = getattr(e, "filename", None) or location or "."
        return _error(disk_full(where, OSError(full, os.strerror(full))).strerror, code=1)
    return 0


def exit_process(code: int) -> typing.NoReturn:
    """End a `python -m` process with `code` (its `__main__` block). After an interrupt
    (130) the process is already stopping; a second Ctrl-C or SIGTERM during the
    interpreter's teardown (over a second once torch is loaded) would kill it with 143
    or print a traceback instead, so both are ignored from here on."""
    if code == 130 and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    sys.exit(code)


_DISK_FULL_TEXT = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}


def _disk_full_errno(error: BaseException) -> int | None:
    """ENOSPC or EDQUOT if `error` (or what caused it) is a full disk, else None. Libraries
    such as orbax's tensorstore re-raise it as ValueError with the OS's text inside."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL_TEXT:
            return error.errno
        for code, text in _DISK_FULL_TEXT.items():
            if text in str(error):
                return code
        error = error.__cause__ or error.__context__
    return None


def _error(message, code: int = 2) -> int:
    text = " ".join(str(message).split("\n")).strip() or "failed"
    print(f"error: {text}", file=sys.stderr)
    return code


def parse_flags(fv: flags.FlagValues, argv: list[str]) -> list[str]:
    """`fv(argv)` (the arguments it leaves), each --flagfile checked first; every flag
    error raises `InputError` with one line (the CLIs and the Python API share this)."""
    check_flagfiles(argv[1:])
    try:
        return fv(argv)
    except flags.Error as e:
        raise InputError(str(e)) from None
    except UnicodeDecodeError as e:  # a flagfile read by another flagfile
        raise InputError(f"a --flagfile is not UTF-8 text ({e.reason} at byte "
                         f"{e.start})") from None


def check_flagfiles(args: list[str]) -> None:
    """Refuse a --flagfile that is missing or not UTF-8 text, naming it (absl would raise
    a UnicodeDecodeError without the file's name)."""
    for i, arg in enumerate(args):
        if arg.startswith("--flagfile="):
            name = arg.split("=", 1)[1]
        elif arg == "--flagfile" and i + 1 < len(args):
            name = args[i + 1]
        else:
            continue
        try:
            data = Path(name).read_bytes()
        except OSError as e:
            raise InputError(f"--flagfile={name} cannot be read ({e.strerror})") from None
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"--flagfile={name} is not UTF-8 text (byte {e.start}: "
                             f"{data[e.start:e.start + 1]!r})") from None


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises KeyboardInterrupt, so a job's `except
    KeyboardInterrupt` (checkpoint, then exit 130) serves Ctrl-C and a scheduler's
    SIGTERM alike. Signal handlers can only be set in the main thread: elsewhere (a job
    run from a worker thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class _Interrupt:
    requested = False


@contextlib.contextmanager
def deferred_interrupts():
    """Within the block Ctrl-C and SIGTERM set `.requested` (the job stops at its next safe
    point, e.g. after saving a checkpoint at the end of a chunk); a second one raises
    KeyboardInterrupt at once. Outside the main thread nothing is installed."""
    state = _Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True
        print("stopping after the current chunk (a checkpoint is saved); interrupt again to "
              "stop at once", file=sys.stderr)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


# ------------------------------------------------------------- flags from a dataclass

_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_bool,
           str: flags.DEFINE_string}


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are flags (metadata `flag=False` opts out)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]


def define_dataclass_flags(fv: flags.FlagValues, cls) -> None:
    """One absl flag per field of `cls`: same name, default, and `metadata["help"]`; the
    type from the annotation (int, float, bool, str, or one of them `| None`)."""
    for f in flag_fields(cls):
        kind = f.type
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind not in _DEFINE:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag type for {f.type}")
        _DEFINE[kind](f.name, f.default, f.metadata["help"], flag_values=fv)


def dataclass_values(fv: flags.FlagValues, cls) -> tuple[dict, frozenset]:
    """`(field values read from the parsed flags, names of the flags given explicitly)`."""
    names = [f.name for f in flag_fields(cls)]
    return ({k: fv[k].value for k in names}, frozenset(k for k in names if fv[k].present))


# --------------------------------------------------------------------------- help

def help_text(fv: flags.FlagValues, groups: dict[str, tuple[str, ...]] | None = None) -> str:
    """Every flag with its help and default, grouped by topic in the given order (flags in
    no group follow, in definition order), instead of absl's alphabetical list, which
    splits flags that read together (e.g. --temperature_start ... --temperature_end)."""
    defined = [name for name, flag in fv._flags().items() if name == flag.name]
    sections, placed = [], set()
    for title, names in (groups or {}).items():
        members = [n for n in names if n in defined]
        placed.update(members)
        if members:
            sections.append((title, members))
    rest = [n for n in defined if n not in placed]
    if rest:
        sections.append(("other" if sections else "flags", rest))
    lines = ["Flags (also read from --flagfile=FILE, one --name=value per line; "
             "--flagfile may repeat):"]
    for title, names in sections:
        lines += ["", f"{title}:"]
        for name in names:
            lines += _flag_help(fv[name])
    return "\n".join(lines)


def _flag_help(flag) -> list[str]:
    name = f"--[no]{flag.name}" if isinstance(flag, flags.BooleanFlag) else f"--{flag.name}"
    wrapped = textwrap.wrap(f"{name}: {flag.help}", width=96, initial_indent="  ",
                            subsequent_indent="      ")
    default = flag.default
    if default is None:
        default = "unset"
    elif isinstance(default, bool):
        default = str(default).lower()
    elif isinstance(default, str):
        default = repr(default)
    elif isinstance(default, list):
        default = repr(",".join(map(str, default)))
    return wrapped + [f"      (default: {default})"]
