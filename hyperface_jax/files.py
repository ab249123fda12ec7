"""Embeddings files in and results out: validated loading, atomic writing.

Embeddings files are `.npy`, float32, shape (n, d), unit rows (DESIGN.md). Loading never
unpickles. Every write goes to a temporary name in the same folder and is renamed into
place, so a crash or a kill never leaves a truncated file behind.
"""

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

# Rows whose norm is off 1 by more than this are renormalised with a warning.
UNIT_TOLERANCE = 1e-3
# Rows shorter than this have no direction: refused.
ZERO_NORM = 1e-6


class InputError(ValueError):
    """Bad user input: the CLIs print the message on one line and exit with code 2."""


class RunFailed(RuntimeError):
    """A run that could not deliver what it promises (e.g. it diverged): the CLIs print the
    message on one line and exit with code 1; finished work (checkpoints) is kept."""


def open_npy(path: str | os.PathLike, what: str, *, ndim: int, kinds: str) -> np.ndarray:
    """A read-only memory map of a `.npy` file after header checks: the file exists, is a
    readable non-pickled `.npy`, has `ndim` axes, a dtype kind in `kinds` and no empty axis.
    Raises `InputError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    if path.suffix != ".npy":
        raise InputError(f"{what} file {path} is not a .npy file")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{what} file {path} is not a readable .npy array ({e})") from None
    if array.ndim != ndim:
        expected = "(rows, dim)" if ndim == 2 else "(rows,)"
        raise InputError(f"{what} file {path} has shape {array.shape}; expected {expected}")
    if array.dtype.kind not in kinds:
        expected = "floating point" if kinds == "f" else "integers"
        raise InputError(f"{what} file {path} has dtype {array.dtype}; expected {expected}")
    if ndim == 2 and 0 in array.shape:
        raise InputError(f"{what} file {path} is empty (shape {array.shape})")
    return array


def open_embeddings(path: str | os.PathLike, what: str = "embeddings") -> np.ndarray:
    """A read-only memory map of an (N, d) float `.npy` file (header checks only; callers
    that read it block by block check rows as they go, see `quality.check_rows`)."""
    return open_npy(path, what, ndim=2, kinds="f")


def load_embeddings(path: str | os.PathLike, what: str = "embeddings") -> np.ndarray:
    """A validated (n, d) float32 array with unit rows from a `.npy` file.

    Raises `InputError` naming the file for: missing file, not `.npy`, unreadable or
    pickled content, wrong ndim, non-float dtype, no rows, NaN/Inf, zero rows.
    Non-unit rows are normalised with a warning.
    """
    path = Path(path)
    return unit_rows(open_embeddings(path, what), f"{what} file {path}")


def unit_rows(array, what: str) -> np.ndarray:
    """`array` as a validated (n, d) float32 array with unit rows; `what` names it in the
    one-line `InputError` (not 2-D, empty, NaN/Inf, zero rows). Non-unit rows are
    normalised with a warning."""
    array = np.asarray(array)
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"{what} has shape {array.shape}; expected (rows, dim) with rows > 0")
    if array.dtype.kind not in "fiu":
        raise InputError(f"{what} has dtype {array.dtype}; expected floating point")
    array = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InputError(f"{what} contains NaN or Inf (first in row {row})")
    norms = np.linalg.norm(array, axis=1)
    if (norms < ZERO_NORM).any():
        row = int(np.argmax(norms < ZERO_NORM))
        raise InputError(f"{what} has a zero vector in row {row}")
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        warnings.warn(f"{what}: {int(off.sum())} of {len(norms)} rows are not unit vectors; "
                      "normalising them", stacklevel=3)
    return array / norms[:, None]


def atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_embeddings(path, embeddings) -> None:
    """Write float32 (n, d) embeddings atomically."""
    array = np.asarray(embeddings, dtype=np.float32)
    atomic_write(Path(path), lambda f: np.save(f, array, allow_pickle=False))


def save_json(path, data) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def save_figure(path, fig) -> None:
    """Save a matplotlib figure as PNG atomically."""
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=120))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_labels(path: str | os.PathLike, rows: int, what: str = "labels") -> np.ndarray:
    """A validated 1-D integer label array with one label per embedding row.

    Raises `InputError` naming the file for: missing file, not `.npy`, unreadable or
    pickled content, not 1-D, non-integer dtype, or a length other than `rows`.
    """
    labels = open_npy(path, what, ndim=1, kinds="iu")
    if len(labels) != rows:
        raise InputError(f"{what} file {path} has {len(labels)} labels for {rows} embedding rows")
    return np.asarray(labels, dtype=np.int64)
