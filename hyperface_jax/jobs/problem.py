"""Turning a PackConfig into validated arrays: the gallery, the initial references, n and d.

Everything here runs before anything is written, so bad input leaves no trace on disk.
"""

import dataclasses
import hashlib
import os

import jax
import numpy as np

from hyperface_jax import options
from hyperface_jax.baselines import codes
from hyperface_jax.engine import sphere
from hyperface_jax.io.files import InputError, load_embeddings, validated_rows
from hyperface_jax.jobs.config import PackConfig


@dataclasses.dataclass(frozen=True)
class Problem:
    inits: np.ndarray  # (restarts, n, d) float32 unit rows; restart 0 is the plain run's
    gallery: np.ndarray | None  # (m, d) float32 unit rows
    batch_key: jax.Array  # PRNG key of the mini-batch order

    @property
    def init(self) -> np.ndarray:
        return self.inits[0]

    @property
    def restarts(self) -> int:
        return self.inits.shape[0]

    @property
    def n(self) -> int:
        return self.inits.shape[1]

    @property
    def d(self) -> int:
        return self.inits.shape[2]

    def shapes_only(self) -> "Problem":
        """This problem without the memory of its initial rows (a zero-strided view of the
        same shape): once the state is placed, the n x d host copy is not needed (2 GB at
        1M x 512)."""
        return dataclasses.replace(self, inits=np.broadcast_to(np.float32(0), self.inits.shape))

    @property
    def m(self) -> int:
        """Gallery rows (0 without a gallery)."""
        return 0 if self.gallery is None else self.gallery.shape[0]

    def fingerprint(self) -> dict:
        """Shapes and digests of the inputs: what a resumed run must share."""
        out = {"init_sha256": _digest(self.inits)}
        if self.gallery is not None:
            out["gallery_sha256"] = _digest(self.gallery)
        return out


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def effective_config(c: PackConfig, *, has_gallery: bool) -> PackConfig:
    """`c` with its defaults that depend on the inputs filled in: --alpha unset means the
    paper's 0.5 with a gallery and 0 without one (the regulariser needs a gallery)."""
    if c.alpha is None:
        c = dataclasses.replace(c, alpha=0.5 if has_gallery else 0.0)
    return c


# --init values that name a way to draw the start rather than a file.
GENERATED_INITS = ("random", "gallery", "code")


def code_start(key, n: int, d: int) -> np.ndarray:
    """The best algebraic code of n points in d-D, turned by a random rotation (a rotation
    keeps every inner product; it matters against a gallery, and gives restarts distinct
    starts)."""
    try:
        x, _, _ = codes.algebraic_code(n, d)
    except ValueError as e:
        raise InputError(f"--init=code: {e}") from None
    rotation = np.asarray(jax.random.orthogonal(key, d), np.float64)
    rows = x.astype(np.float64) @ rotation
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def check_settings(c: PackConfig) -> None:
    """Checks that need no file: each value against its field's choices and bounds (the
    table in jobs/config.py), then the rules that tie options together."""
    options.check_values(PackConfig, c.flag_values())
    if c.temperature_start > c.temperature_end:
        raise InputError("need 0 < --temperature_start <= --temperature_end, got "
                         f"{c.temperature_start} and {c.temperature_end}")
    if c.restarts > 1 and c.init not in GENERATED_INITS:
        raise InputError("--restarts > 1 needs --init=random, gallery or code "
                         "(restarts from one file would all be the same)")
    if c.figure_sample == 1:
        raise InputError(f"--figure_sample must be 0 (exact figures) or >= 2 rows, got "
                         f"{c.figure_sample}")
    if c.schedule == "geometric" and c.final_learning_rate <= 0:
        raise InputError("--schedule=geometric needs --final_learning_rate > 0")
    if c.neighbor_descent_every and c.neighbor_list_size and c.neighbor_rebuild != "every":
        raise InputError("--neighbor_descent_every needs --neighbor_rebuild=every (the "
                         "displacement rule needs the exact margins of an exact rebuild)")


def memory_bytes() -> int | None:
    """What this process's devices can hold: their allocator limits where the backend
    reports them (GPU, TPU), else the host's physical memory (CPU); None if unknown."""
    devices = jax.local_devices()
    limits = [(dev.memory_stats() or {}).get("bytes_limit") for dev in devices]
    if all(limits):
        return int(sum(limits))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


def check_fits_in_memory(n: int, d: int, restarts: int) -> None:
    """Refuse, before anything is allocated, a problem whose rows alone cannot fit: the
    solver holds at least the rows and their gradient (2 x restarts x n x d float32; the
    optimizer's state comes on top). XLA would otherwise abort the process."""
    need = 2 * 4 * restarts * n * d
    have = memory_bytes()
    if have is not None and need > have:
        raise InputError(f"n={n} x d={d}" + (f" x {restarts} restarts" if restarts > 1 else "")
                         + f" needs at least {need / 1e9:.3g} GB for the rows and their "
                         f"gradient, more than the {have / 1e9:.3g} GB of memory here; "
                         "lower --num_identities or --dim")


def build_problem(c: PackConfig, *, gallery=None, init=None) -> Problem:
    """The validated problem of `c`. In-memory `gallery` / `init` arrays (the Python API)
    take the place of the --gallery / --init files and are validated the same way."""
    check_settings(c)
    init_key, batch_key = jax.random.split(jax.random.PRNGKey(c.seed))
    if gallery is not None:
        gallery = validated_rows(gallery, "gallery array")
    elif c.gallery:
        gallery = load_embeddings(c.gallery, "gallery")
    if init is not None:
        init = validated_rows(init, "init array")
        if c.restarts > 1:
            raise InputError("--restarts > 1 needs --init=random, gallery or code "
                             "(restarts from one array would all be the same)")
    elif c.init not in GENERATED_INITS:
        init = load_embeddings(c.init, "init")
    if c.alpha and gallery is None:
        raise InputError(f"--alpha={c.alpha} needs a --gallery (leave --alpha unset for pure "
                         "packing: it is 0 without a gallery)")

    d = c.dim
    for name, array in (("gallery", gallery), ("init", init)):
        if array is None:
            continue
        if "dim" in c.explicit and array.shape[1] != c.dim:
            raise InputError(f"--dim={c.dim} conflicts with the {name} file {getattr(c, name)} "
                             f"of dimension {array.shape[1]}")
        d = array.shape[1]
    if gallery is not None and init is not None and gallery.shape[1] != init.shape[1]:
        raise InputError(f"dimension mismatch: gallery {c.gallery} has d={gallery.shape[1]}, "
                         f"init {c.init} has d={init.shape[1]}")
    if d < 2:
        raise InputError(f"--dim must be >= 2, got {d}")

    n = c.num_identities
    if init is not None:
        if "num_identities" in c.explicit and init.shape[0] != n:
            raise InputError(f"--num_identities={n} conflicts with the init file {c.init} "
                             f"of {init.shape[0]} rows")
        n = init.shape[0]
    if n < 2:
        raise InputError(f"need at least 2 identities, got {n}")
    if c.figure_sample > n:
        raise InputError(f"--figure_sample={c.figure_sample} exceeds the n={n} identities")
    if c.batch_size == 1 or c.batch_size > n:
        raise InputError(f"--batch_size={c.batch_size} must be 0 (full batch) or in [2, n={n}]")
    check_fits_in_memory(n, d, c.restarts)

    def start(r: int) -> np.ndarray:
        key = init_key if r == 0 else jax.random.fold_in(init_key, r)
        if c.init == "random":
            return np.asarray(sphere.random_unit_vectors(key, n, d))
        if c.init == "code":
            return code_start(key, n, d)
        rows = np.asarray(jax.random.permutation(key, gallery.shape[0])[:n])
        return gallery[np.sort(rows)]

    if c.init == "gallery" and init is None:
        if gallery is None:
            raise InputError("--init=gallery needs a --gallery")
        if gallery.shape[0] < n:
            raise InputError(f"--init=gallery needs at least n={n} gallery rows, "
                             f"{c.gallery} has {gallery.shape[0]}")
    if init is None:
        inits = np.stack([start(r) for r in range(c.restarts)])
    else:
        inits = init[None]
    return Problem(inits=inits.astype(np.float32), gallery=gallery, batch_key=batch_key)
