"""The command-line contract every `python -m ...` tool of this project shares.

`run_main(argv, Config, job)`: the flags are made from the config dataclass's fields
(`hyperface_jax.options`: help, choices, bounds, topic, role), flagfiles are expanded
(nested ones relative to their includer; shipped configs by name), the values are checked
by the one bounds table and `job(config)` runs. `--help` prints the flags grouped by
topic; a flag error, a value out of bounds, a stray argument, an unreadable flagfile or an
`InputError` prints one line `error: ...` on stderr and exits 2; the output location (the
field with role "output_dir" or "output_file") is checked and locked before any work;
Ctrl-C or SIGTERM exits 130 (jobs that checkpoint save first); a full disk prints one
line and exits 1.
"""

import contextlib
import errno
import importlib
import signal
import sys
import textwrap
import threading
import typing
from collections.abc import Callable

from absl import flags

from hyperface_jax.io import runs
from hyperface_jax.io.files import DiskFullError, InputError, RunFailed, disk_full
from hyperface_jax.options import (  # noqa: F401 - the flag makers, re-exported
    bounds_text,
    define_dataclass_flags,
    expand_flagfiles,
    field_with_role,
    flag_fields,
    help_groups,
    joins_other_processes,
    make_checked,
    make_flag_values,
    parse_flag_lines,
    parse_flag_values,
)


def run_main(argv: list[str] | None, config, job: Callable, *,
             describe: Callable[[InputError], str] = str) -> int:
    """Parse `argv` (sys.argv when None) into `config`, a config dataclass (see
    `hyperface_jax.options`), run `job(config_instance)`, return the exit code.

    The field with role "output_dir" (or "output_file") is required, checked and locked
    before `job` runs, and folders created for it are removed again if the job then
    refuses its input. Nothing here reads a flag by name: the fields' roles say which
    is the output and which make the job join a multi-process run.
    """
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(help_text(config))
        return 0
    try:
        parsed = config_from_argv(config, argv[1:])
    except InputError as e:
        return _error(e)
    output = field_with_role(config, "output_dir") or field_with_role(config, "output_file")
    location = "" if output is None else getattr(parsed, output.name)
    if output is not None and not location:
        return _error(f"--{output.name} is required")
    try:
        with sigterm_as_interrupt():
            # A multi-process job locks its folder itself once it knows its process index
            # (runs.is_first_process); then the folder is only checked here.
            claim = (runs.claimed(location, f"--{output.name}",
                                  is_file=output.metadata["role"] == "output_file",
                                  primary=runs.is_first_process(joins_other_processes(parsed)))
                     if location else contextlib.nullcontext())
            with claim:
                job(parsed)
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
        # A write outside files.atomic_write (orbax, a library's own file).
        where = getattr(full, "filename", None) or location or "."
        return _error(disk_full(where, full).strerror, code=1)
    return 0


def job_in(module: str, name: str) -> Callable:
    """The function `module.name` as a job, imported when the job starts: a CLI's --help
    and its flag errors need none of the job's imports (JAX, torch, matplotlib)."""
    def job(config):
        return getattr(importlib.import_module(module), name)(config)
    return job


def exit_process(code: int) -> typing.NoReturn:
    """End a `python -m` process with `code` (its `__main__` block). After an interrupt
    (130) the process is already stopping; a second Ctrl-C or SIGTERM during the
    interpreter's teardown (over a second once torch is loaded) would kill it with 143
    or print a traceback instead, so both are ignored from here on."""
    if code == 130 and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    sys.exit(code)




def _disk_full_errno(error: BaseException) -> OSError | None:
    """The OSError with ENOSPC or EDQUOT behind `error` (itself or what caused it), or
    None. (Libraries that lose the errno are translated where they are called, e.g. orbax
    in io/checkpoint.py.)"""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        error = error.__cause__ or error.__context__
    return None


def _error(message, code: int = 2) -> int:
    text = " ".join(str(message).split("\n")).strip() or "failed"
    print(f"error: {text}", file=sys.stderr)
    return code


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

def config_from_argv(cls, args: list[str]):
    """A validated `cls` from command-line arguments. Its `explicit` (if it has one) holds
    the options named on the command line itself: a value from a flagfile is a default
    that an input file may override (e.g. n from an --init file)."""
    fv = make_flag_values(cls)
    parse_flag_values(fv, expand_flagfiles(args))
    values = {f.name: fv[f.name].value for f in flag_fields(cls)}
    return make_checked(cls, values, frozenset(_named(args, fv)))


def _named(args: list[str], fv: flags.FlagValues) -> set[str]:
    names = set()
    for arg in args:
        if not arg.startswith("-") or arg.lstrip("-").startswith("flagfile"):
            continue
        name = arg.lstrip("-").split("=", 1)[0]
        if name not in fv and name.startswith("no") and name[2:] in fv:
            name = name[2:]
        if name in fv:
            names.add(fv[name].name)
    return names


def dataclass_values(fv: flags.FlagValues, cls) -> tuple[dict, frozenset]:
    """`(field values read from the parsed flags, names of the flags given explicitly)`."""
    names = [f.name for f in flag_fields(cls)]
    return ({k: fv[k].value for k in names}, frozenset(k for k in names if fv[k].present))


# --------------------------------------------------------------------------- help

def help_text(config) -> str:
    """Every flag of the config dataclass `config` with its help, bounds and default,
    grouped by topic in order (flags in no group follow, in definition order), instead
    of absl's alphabetical list, which splits flags that read together (e.g.
    --temperature_start ... --temperature_end)."""
    fv, groups = make_flag_values(config), help_groups(config)
    defined = [name for name, flag in fv._flags().items() if name == flag.name]
    sections, placed = [], set()
    for title, names in groups.items():
        members = [n for n in names if n in defined]
        placed.update(members)
        if members:
            sections.append((title, members))
    rest = [n for n in defined if n not in placed]
    if rest:
        sections.append(("other" if sections else "flags", rest))
    lines = ["Flags (also read from --flagfile=FILE, one --name=value per line; "
             "--flagfile may repeat; a shipped config by name: --flagfile=paper_10k):"]
    for title, names in sections:
        lines += ["", f"{title}:"]
        for name in names:
            lines += _flag_help(fv[name])
    return "\n".join(lines)


def _flag_help(flag) -> list[str]:
    name = f"--[no]{flag.name}" if isinstance(flag, flags.BooleanFlag) else f"--{flag.name}"
    metadata = getattr(flag, "option_metadata", {})
    limits = ""
    if metadata.get("low") is not None or metadata.get("high") is not None:
        limits = f" Must be {bounds_text(metadata)}."
    wrapped = textwrap.wrap(f"{name}: {flag.help}{limits}", width=96, initial_indent="  ",
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
