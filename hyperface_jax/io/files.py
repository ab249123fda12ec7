"""Embeddings files in and results out: validated loading, atomic writing.

Embeddings files are `.npy`, float32, shape (n, d), unit rows (DESIGN.md). Loading never
unpickles. Every write goes to a temporary name in the same folder and is renamed into
place, so a crash or a kill never leaves a truncated file behind.
"""

import errno
import json
import os
import shutil
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
        if not path.exists():
            raise InputError(f"{what} file not found: {path}")
        kind = ("a folder" if path.is_dir()
                else "not a regular file (a device, a pipe or a socket)")
        raise InputError(f"{what} file {path} is {kind}, not a .npy file")
    if path.suffix != ".npy":
        raise InputError(f"{what} file {path} is not a .npy file")
    try:
        _check_header_size(path)
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError, MemoryError) as e:
        raise InputError(f"{what} file {path} is not a readable .npy array "
                         f"({_why_unreadable(path, e)})") from None
    if array.ndim != ndim:
        expected = "(rows, dim)" if ndim == 2 else "(rows,)"
        raise InputError(f"{what} file {path} has shape {array.shape}; expected {expected}")
    if array.dtype.kind not in kinds:
        expected = "floating point" if kinds == "f" else "integers"
        raise InputError(f"{what} file {path} has dtype {array.dtype}; expected {expected}")
    if ndim == 2 and 0 in array.shape:
        raise InputError(f"{what} file {path} is empty (shape {array.shape})")
    return array


# numpy's own limit on a .npy header (`max_header_size`): larger ones need trust.
MAX_HEADER_BYTES = 10_000


class _HeaderTooLarge(ValueError):
    pass


def _check_header_size(path: Path) -> None:
    """Read the header's declared length before numpy allocates it (a 20-byte file may
    declare 4 GB): `_HeaderTooLarge` past numpy's safe limit or past the file's end."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        return  # numpy's own error says what is wrong
    major = head[6]
    size = (int.from_bytes(head[8:10], "little") if major == 1
            else int.from_bytes(head[8:12], "little") if len(head) == 12 else 0)
    if size > MAX_HEADER_BYTES:
        raise _HeaderTooLarge(f"its header declares {size} bytes, more than the "
                              f"{MAX_HEADER_BYTES} numpy reads safely")
    if size > path.stat().st_size:
        raise _HeaderTooLarge(f"its header declares {size} bytes, past the end of the file")


def _why_unreadable(path: Path, error: Exception) -> str:
    """Why `np.load` refused a file, in our words: numpy's own message for a non-.npy file
    suggests loading it with allow_pickle, which must never be done with untrusted input."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        return e.strerror or type(e).__name__
    if head != b"\x93NUMPY":
        return "no NumPy header: not written by numpy.save" if head else "the file is empty"
    if isinstance(error, _HeaderTooLarge):
        return str(error)
    if isinstance(error, MemoryError):
        return "not enough memory to read its header"
    if "max_header_size" in str(error):
        return f"its header is larger than the {MAX_HEADER_BYTES} bytes numpy reads safely"
    if "object" in str(error).lower() or "pickle" in str(error).lower():
        return "it holds Python objects, which are never unpickled"
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


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
    return validated_rows(open_embeddings(path, what), f"{what} file {path}")


def validated_rows(array, what: str) -> np.ndarray:
    """`array` (a file's content, or an array given to the Python API) as a validated
    (n, d) float32 array with unit rows; `what` names it in the one-line `InputError`
    (not 2-D, empty, not floating point, NaN/Inf, zero rows). Non-unit rows are normalised
    with a warning."""
    array = np.asarray(array)
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"{what} has shape {array.shape}; expected (rows, dim) with rows > 0")
    if array.dtype.kind not in "fiu":
        raise InputError(f"{what} has dtype {array.dtype}; expected floating point")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InputError(f"{what} contains NaN or Inf (first in row {row})")
    with np.errstate(over="ignore"):
        given, array = array, np.asarray(array, dtype=np.float32)
    fits = np.isfinite(array).all(axis=1)  # finite float64 beyond float32's 3.4e38
    if not fits.all():
        row = int(np.argmin(fits))
        largest = float(np.max(np.abs(np.asarray(given[row], dtype=np.float64))))
        raise InputError(f"{what} has values too large for float32 (row {row}: {largest:.3g}); "
                         "the rows are packed in float32: rescale them")
    unit, norms = unit_rows(array)
    if (norms < ZERO_NORM).any():
        row = int(np.argmax(norms < ZERO_NORM))
        raise InputError(f"{what} has a zero vector in row {row}")
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        warnings.warn(f"{what}: {int(off.sum())} of {len(norms)} rows are not unit vectors; "
                      "normalising them", stacklevel=3)
    return unit


def unit_rows(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(rows scaled to unit norm (float32), their norms (float64))`, exact for any finite
    float32 row: each row is first divided by its largest magnitude, so the sum of squares
    cannot overflow (a plain float32 norm is inf above ~1.8e19 and the row would become a
    zero vector). Zero rows stay zero with norm 0."""
    array = np.asarray(array, dtype=np.float32)
    scale = np.max(np.abs(array), axis=1, keepdims=True) if array.size else array[:, :1]
    scale = np.where(scale > 0, scale, np.float32(1))
    scaled = array / scale
    scaled_norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    unit = scaled / np.where(scaled_norms > 0, scaled_norms, np.float32(1))
    norms = (scale.astype(np.float64) * scaled_norms)[:, 0]
    return unit.astype(np.float32, copy=False), norms


def unit_row_error(array: np.ndarray, chunk_rows: int = 65_536) -> tuple[bool, float, int]:
    """(every entry finite, largest |row norm - 1|, the row where it is), in float64 chunk by
    chunk: a million 512-D rows check in a few MB instead of a 4 GB float64 copy. Non-finite
    rows count as an error of inf."""
    finite, worst, where = True, 0.0, 0
    for start in range(0, array.shape[0], chunk_rows):
        block = np.asarray(array[start:start + chunk_rows], dtype=np.float64)
        ok = np.isfinite(block).all(axis=1)
        off = np.where(ok, np.abs(np.linalg.norm(np.where(ok[:, None], block, 0.0), axis=1)
                                  - 1.0), np.inf)
        finite = finite and bool(ok.all())
        if off.size and off.max() > worst:
            worst, where = float(off.max()), start + int(off.argmax())
    return finite, worst, where


class DiskFullError(OSError):
    """A write failed for lack of space (or quota): the CLIs print its one line, exit 1."""


def atomic_write(path: Path, write) -> None:
    """Write `path` through `write(binary_file)`: to a temporary name in the same folder,
    flushed to disk, then renamed into place, with the mode a plain `open` would give
    (0o666 less the umask: mkstemp's 0600 would hide outputs from colleagues)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, e) from None
        raise


def disk_full(path, error: OSError) -> DiskFullError:
    """The one-line error for a write that ran out of space, with what is left there."""
    reason = "quota exceeded" if error.errno == errno.EDQUOT else "no space left on device"
    try:
        free = f"; {shutil.disk_usage(Path(path).parent).free / 1e6:.1f} MB free there"
    except OSError:
        free = ""
    return DiskFullError(error.errno, f"{reason} writing {path}{free}; free some space or "
                         "use another --out_dir (finished work is kept: re-run to resume)")


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_embeddings(path, embeddings) -> None:
    """Write float32 (n, d) embeddings atomically."""
    array = np.asarray(embeddings, dtype=np.float32)
    atomic_write(Path(path), lambda f: np.save(f, array, allow_pickle=False))


def save_json(path, data) -> None:
    """Write `data` atomically as strict JSON (RFC 8259).

    Python's json writes NaN and Infinity, which strict parsers (jq, JavaScript,
    Go) refuse. A non-finite float in a report means "undefined here" (a mean over
    nothing, a TAR with no impostors, a threshold below every score), so it is
    written as null; numpy scalars and arrays become numbers and lists.
    """
    text = json.dumps(_finite_or_null(data), indent=2, sort_keys=False,
                      default=_json_default, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def _finite_or_null(value):
    """`value` with every non-finite float (Python or numpy, in any container) as None."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, np.ndarray):
        return _finite_or_null(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


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
