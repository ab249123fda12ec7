"""Options declared once: a config dataclass's fields carry their help, choices, bounds and
help topic, and every path into a job (CLI flags, flagfiles, Python keywords) is checked by
the same table here.

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = option(100, "Optimisation steps.", low=0, group="run")
        reduce: str = option("mean", "Packing term.", choices=("mean", "max"))

`cli.define_dataclass_flags` turns each field into an absl flag (`choices` into
DEFINE_enum); `check_values` applies the bounds; `config_from_options` builds a config
from keyword arguments (the notebook API) with the CLI's messages. absl, no JAX.
"""

import dataclasses
import math
import numbers
import os
import types
import typing
from pathlib import Path

import numpy as np
from absl import flags
from absl.flags import _helpers

from hyperface_jax.io.files import InputError

# Every integer option fits a signed 32-bit integer unless its field says otherwise: loop
# counters, shapes and step numbers become int32 inside XLA, where a larger value wraps or
# aborts. Seeds are unsigned 32-bit (jax.random.PRNGKey keeps the low 32 bits of larger
# ones, so 2^32 would silently equal 0: refused instead).
INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1

# The shipped flagfiles (package data), addressable by name: --flagfile=paper_10k.
CONFIGS = Path(__file__).resolve().parent / "configs"


def option(default, help_text: str, *, choices: tuple | None = None, low=None, high=None,
           low_open: bool = False, high_open: bool = False, group: str = "",
           role: str = "", flag: bool = True):
    """A config field: `help_text` for --help; `choices` (an enum flag); `low`/`high`
    bounds, inclusive unless `*_open`; `group`, its --help topic; `role`: "output_dir",
    "output_file" (checked and locked before the job) or "multi_process" (set, the job
    joins a multi-process run and locks its output itself, once its runtime knows which
    process is first)."""
    return dataclasses.field(default=default, metadata={
        "help": help_text, "choices": choices, "low": low, "high": high,
        "low_open": low_open, "high_open": high_open, "group": group, "role": role,
        "flag": flag})


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are options (metadata `flag=False` opts out)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]


_BUILTINS = {"int": int, "float": float, "bool": bool, "str": str}


def field_kind(f: dataclasses.Field) -> tuple[type, bool]:
    """`(int | float | bool | str, whether None is allowed)` from the annotation."""
    kind, optional = f.type, False
    if isinstance(kind, str):  # a module with `from __future__ import annotations`
        names = [part.strip() for part in kind.split("|")]
        optional = "None" in names
        kind = _BUILTINS.get(next(n for n in names if n != "None"), kind)
    elif isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = typing.get_args(kind)
        optional = type(None) in args
        kind = next(a for a in args if a is not type(None))
    if kind not in (int, float, bool, str):
        raise TypeError(f"{f.name}: no option type for {f.type}")
    return kind, optional


def field_with_role(cls, role: str) -> dataclasses.Field | None:
    return next((f for f in flag_fields(cls) if f.metadata.get("role") == role), None)


def joins_other_processes(config) -> bool:
    """Whether a config asks its job to join a multi-process run: one of its fields with
    role "multi_process" is set."""
    return any(bool(getattr(config, f.name)) for f in flag_fields(type(config))
               if f.metadata.get("role") == "multi_process")


def help_groups(cls) -> dict[str, tuple[str, ...]]:
    """Topic -> its fields, topics in the order of `cls.HELP_ORDER`, then of first
    appearance (fields with no group are left to --help's "other")."""
    groups: dict[str, list[str]] = {name: [] for name in getattr(cls, "HELP_ORDER", ())}
    for f in flag_fields(cls):
        if f.metadata.get("group"):
            groups.setdefault(f.metadata["group"], []).append(f.name)
    return {k: tuple(v) for k, v in groups.items() if v}


# ---------------------------------------------------------------------- checking values

def bounds_text(m) -> str:
    low, high = m.get("low"), m.get("high")
    if low is not None and high is not None:
        return (f"in {'(' if m['low_open'] else '['}{low}, {high}"
                f"{')' if m['high_open'] else ']'}")
    if low is not None:
        return f"{'>' if m['low_open'] else '>='} {low}"
    return f"{'<' if m['high_open'] else '<='} {high}"


def check_value(f: dataclasses.Field, value) -> None:
    """Raise InputError (the CLI's line) unless `value` is a valid value of field `f`."""
    kind, optional = field_kind(f)
    m, name = f.metadata, f.name
    if value is None:
        if optional:
            return
        raise InputError(f"--{name} needs a value (None is not one)")
    choices = m.get("choices")
    if choices and value not in choices:  # absl's words for an enum flag, so that the
        # notebook API and the CLI print the same line
        raise InputError(f"flag --{name}={value}: value should be one of "
                         f"<{'|'.join(map(str, choices))}>")
    if kind is float and not math.isfinite(value):
        raise InputError(f"--{name} must be a finite number, got {value}")
    if kind not in (int, float):
        return
    low, high = m.get("low"), m.get("high")
    too_low = low is not None and (value <= low if m["low_open"] else value < low)
    too_high = high is not None and (value >= high if m["high_open"] else value > high)
    if too_low or too_high:
        raise InputError(f"--{name} must be {bounds_text(m)}, got {value}")
    if kind is int and not -INT32_MAX - 1 <= value <= INT32_MAX:  # the table's default
        raise InputError(f"--{name} must fit a 32-bit integer (|value| < 2^31), got {value}")


def check_values(cls, values: dict) -> None:
    for f in flag_fields(cls):
        check_value(f, values[f.name])


def coerce(f: dataclasses.Field, value):
    """A keyword argument as the field's type, as strictly as the flag parser reads text:
    no bool for a number, no float for an int, paths as text. Raises InputError."""
    kind, _ = field_kind(f)
    if value is None:
        return value  # check_value refuses it where it is not allowed
    if kind is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if kind is bool and isinstance(value, (bool, np.bool_)):
        return bool(value)
    if kind in (int, float) and not isinstance(value, bool):
        if isinstance(value, numbers.Integral):
            return kind(value)
        if kind is float and isinstance(value, numbers.Real):
            return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise InputError(f"--{f.name} takes {'an' if kind is int else 'a'} {kind.__name__}, "
                     f"got {type(value).__name__} {value!r}")


def unknown_name_error(name: str, known) -> InputError:
    """The CLI's message for a mistyped flag, with absl's own suggestion rule."""

    suggestions = _helpers.get_flag_suggestions(name, list(known))
    hint = f". Did you mean: {', '.join(suggestions)} ?" if suggestions else ""
    return InputError(f"Unknown command line flag '{name}'{hint}")


def config_from_options(cls, options: dict, *, flagfile: str | None = None):
    """A validated `cls` from keyword arguments over an optional flagfile (read as the CLI
    reads it; keywords win). `explicit` holds the keywords given (not the flagfile's)."""
    fields = {f.name: f for f in flag_fields(cls)}
    for name in options:
        if name not in fields:
            raise unknown_name_error(name, fields)
    values = {name: f.default for name, f in fields.items()}
    if flagfile:
        values.update(parse_flag_lines(cls, expand_flagfiles([f"--flagfile={flagfile}"])))
    values.update({name: coerce(fields[name], v) for name, v in options.items()})
    return make_checked(cls, values, frozenset(options))


def make_checked(cls, values: dict, explicit: frozenset):
    check_values(cls, values)
    if "explicit" in {f.name for f in dataclasses.fields(cls)}:
        return cls(**values, explicit=explicit)
    return cls(**values)


# ------------------------------------------------------------------- absl flags from a config

_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_bool,
           str: flags.DEFINE_string}


def define_dataclass_flags(fv: flags.FlagValues, cls, names=None) -> None:
    """One absl flag per option field of `cls` (`hyperface_jax.options.option`): same name,
    default and help; the type from the annotation (int, float, bool, str, or one of them
    `| None`); `choices` make an enum flag; `names`: only these. Bounds are checked by
    `options.check_values` (one checker for flags and keyword arguments alike) and shown
    in --help."""
    for f in flag_fields(cls):
        if names is not None and f.name not in names:
            continue
        kind, _ = field_kind(f)
        if f.metadata.get("choices"):
            flags.DEFINE_enum(f.name, f.default, list(f.metadata["choices"]),
                              f.metadata["help"], flag_values=fv)
        else:
            _DEFINE[kind](f.name, f.default, f.metadata["help"], flag_values=fv)
        fv[f.name].option_metadata = f.metadata


def make_flag_values(cls) -> flags.FlagValues:
    fv = flags.FlagValues()
    define_dataclass_flags(fv, cls)
    return fv


def parse_flag_values(fv: flags.FlagValues, args: list[str]) -> None:
    """Parse `args` (flagfiles already expanded) into `fv`; InputError on a bad flag or a
    stray argument."""
    try:
        rest = fv(["prog"] + args)
    except flags.Error as e:
        raise InputError(str(e)) from None
    if len(rest) > 1:
        raise InputError(f"unexpected arguments {rest[1:]}")


def parse_flag_lines(cls, args: list[str]) -> dict:
    """The values of the options `args` (no flagfiles left) set, as `cls`'s fields."""
    fv = make_flag_values(cls)
    parse_flag_values(fv, args)
    return {f.name: fv[f.name].value for f in flag_fields(cls) if fv[f.name].present}



# ---------------------------------------------------------------------------- flagfiles

def resolve_flagfile(name: str, including: Path | None = None) -> Path:
    """The file `--flagfile=name` means: an absolute path; else relative to the flagfile
    that includes it, then to the current folder; else a shipped config by name
    (`paper_10k`, `paper_10k.flags` or `configs/paper_10k.flags`). Raises InputError."""
    path = Path(name).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = ([including.parent / path] if including else []) + [Path.cwd() / path]
        if path.parent in (Path("."), Path("configs")):
            candidates += [CONFIGS / path.name, CONFIGS / f"{path.name}.flags"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.flags")))
    where = f" (in {including})" if including else ""
    raise InputError(f"--flagfile={name}{where} cannot be read (no such file, nor a shipped "
                     f"config: {shipped})")


def expand_flagfiles(args: list[str], including: Path | None = None,
                     stack: tuple = ()) -> list[str]:
    """`args` with every --flagfile replaced by its lines (as absl reads them: stripped,
    without blank lines and # or // comments), nested files resolved by `resolve_flagfile`.
    Raises InputError for a missing, unreadable, non-UTF-8 or circular flagfile."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        name = None
        if arg.startswith(("--flagfile=", "-flagfile=")):
            name = arg.split("=", 1)[1]
        elif arg in ("--flagfile", "-flagfile") and i + 1 < len(args):
            name, i = args[i + 1], i + 1
        i += 1
        if name is None:
            out.append(arg)
            continue
        if not name:
            continue
        path = resolve_flagfile(name, including).resolve()
        if path in stack:
            raise InputError(f"--flagfile={name} includes itself (via {stack[-1]})")
        out += expand_flagfiles(_flag_lines(path, name), path, stack + (path,))
    return out


def _flag_lines(path: Path, name: str) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"--flagfile={name} cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--flagfile={name} is not UTF-8 text (byte {e.start}: "
                         f"{data[e.start:e.start + 1]!r})") from None
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith(("#", "//"))]
