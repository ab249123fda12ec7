"""Packing on many devices and hosts: the mesh, the ring kernels and the `Sharded` placement.

Layout. The references X (n x d), every optimizer-state leaf shaped like X, the neighbour
lists and the gallery G (m x d) are split by rows over all devices of a one-axis mesh
(axis ``"rows"``). Any n and m: arrays are padded with zero rows to a multiple of the
device count, and the search masks padding rows, so they never enter a loss, a gradient or
a figure. The PRNG key, the step and scalar optimizer state are replicated. The largest
per-device buffer during a step is a similarity tile of min(tile_size, n/D) x n/D.

The solver (`solver.make_step`) and the loss (`objective.hyperface_loss`) are the same as
on one device: this module only provides the placement (`Sharded`: how rows are split,
moved and gathered) and the search (`RingSearch`: the answers the loss needs, computed by
passing row blocks round a ring of devices with `lax.ppermute` inside `jax.shard_map`).

Nearest neighbours by a ring. Each device searches its own rows against its own block,
then passes the block to the next device D - 1 times, keeping the running maximum, its
global index and the partner vector. The backward pass of ``max_j <x_i, x_j>`` is
``x_j*`` for row i plus ``x_i`` scattered onto row j*, which may live on another device:
the contributions travel once more round the ring. Smooth maxima combine per-block
logsumexps; top-K lists merge per-block top-K; list similarities fetch each partner row
from the block that holds it as it passes. Work per device is O(n^2 d / D), traffic
O(n d) per step.

Mini-batch mode samples the same rows as one device (`solver.batch_indices` is a pure
function of (key, step)): each device contributes the batch rows it owns to a `psum`, the
batch is split by rows for the loss, and each device writes back the rows it owns. The
optimizer update runs outside `shard_map`, under `jit`'s automatic partitioning, so every
optax optimizer keeps its global semantics (e.g. whole-array norms in lamb).

Why `jax.shard_map` and not `jax.pmap`: the state stays one global array that orbax saves
with its sharding and restores on any device count (padding rows are zeros, so a
checkpoint restored with another padding is truncated or zero-padded: `checkpoint`), and
the non-local parts (optimizer update, figures) are left to XLA's partitioner.

Multi-host: `initialize_distributed` calls `jax.distributed.initialize` from the flags or
the cluster's environment (TPU pods, SLURM, Open MPI, ...); every process runs the same
command and the mesh spans all processes' devices.
"""

import dataclasses
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hyperface_jax.engine import neighbor_lists, neighbors
from hyperface_jax.engine.placement import pad_rows
from hyperface_jax.io.files import InputError
from hyperface_jax.measure import metrics

AXIS = "rows"
# Flags that choose where a run executes, not what it computes: a checkpoint written with
# one setting resumes with another.
PLACEMENT_FLAGS = ("devices", "coordinator_address", "num_processes", "process_id",
                   "distributed")


# Processes and devices --------------------------------------------------------------------

def initialize_distributed(c) -> None:
    """Join a multi-process run when the flags (or --distributed) ask for one.

    Must run before anything touches a JAX backend. Explicit: --coordinator_address with
    --num_processes and --process_id. Automatic: --distributed alone lets JAX read the
    cluster's environment (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes).
    """
    if not (c.coordinator_address or c.distributed):
        if c.num_processes or c.process_id >= 0:
            raise InputError("--num_processes/--process_id need --coordinator_address "
                             "(or --distributed for cluster auto-detection)")
        return
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if c.coordinator_address:
        if c.num_processes < 1 or not 0 <= c.process_id < c.num_processes:
            raise InputError(
                f"--coordinator_address={c.coordinator_address} needs --num_processes >= 1 and "
                f"0 <= --process_id < --num_processes, got {c.num_processes} and {c.process_id}")
        kwargs = dict(coordinator_address=c.coordinator_address,
                      num_processes=c.num_processes, process_id=c.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not join the multi-process run ({first[:200]})") from None


def make_mesh(devices: str) -> Mesh | None:
    """The one-axis mesh for --devices ('all' or a count); None for the single-device path.

    With one device and one process the `Local` placement runs: no collectives to pay for
    (a mesh of one computes the same numbers through the same solver).
    """
    available = jax.devices()
    if devices == "all":
        count = len(available)
    else:
        try:
            count = int(devices)
        except ValueError:
            raise InputError(f"--devices must be 'all' or a positive count, got {devices!r}")\
                from None
        if not 1 <= count <= len(available):
            raise InputError(f"--devices={count} but {len(available)} device(s) are available "
                             f"({jax.default_backend()}); pass --devices=all or a smaller count")
        if jax.process_count() > 1 and count != len(available):
            raise InputError(f"--devices={count} in a run of {jax.process_count()} processes; "
                             "multi-process runs use every device: pass --devices=all")
    if count == 1 and jax.process_count() == 1:
        return None
    return Mesh(np.asarray(available[:count]), (AXIS,))


def is_writer() -> bool:
    """Process 0 alone writes outputs (every process takes part in checkpoints)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (no-op in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _put(array, sharding):
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(array) -> np.ndarray:
    """The full array on every process (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


# The ring ---------------------------------------------------------------------------------

def _shift(a, size: int):
    """Device i sends `a` to device i + 1 (mod size)."""
    return lax.ppermute(a, AXIS, [(i, (i + 1) % size) for i in range(size)])


def _real(owner, rows: int, count):
    """Which rows of the block of device `owner` are real (global index < count)."""
    if count is None:
        return None
    return owner * rows + jnp.arange(rows) < count


def _ring_search(x, y, exclude_self, size, tile_size, precision, count):
    """For each local row of x: the largest <x_i, y_j> over the real rows of y on every
    device, its global row index and the row y_j itself. Ties go to the lowest global
    index, as `jnp.argmax` does on one device."""
    me = lax.axis_index(AXIS)
    rows = y.shape[0]
    v, j = neighbors.nearest_neighbors(x, y, exclude_self=exclude_self,
                                       columns_valid=_real(me, rows, count),
                                       tile_size=tile_size, precision=precision)
    first = (y, v, me * rows + j, y[j])

    def visit(k, carry):
        block, best, best_index, best_vector = carry
        block = _shift(block, size)
        owner = (me - k) % size
        v, j = neighbors.nearest_neighbors(x, block, columns_valid=_real(owner, rows, count),
                                           tile_size=tile_size, precision=precision)
        index = owner * rows + j
        better = (v > best) | ((v == best) & (index < best_index))
        return (block, jnp.where(better, v, best), jnp.where(better, index, best_index),
                jnp.where(better[:, None], block[j], best_vector))

    _, v, index, vector = lax.fori_loop(1, size, visit, first)
    return v, index, vector


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def ring_nearest(x, y, exclude_self, size, tile_size, precision, count=None):
    """``(max_j <x_i, y_j>, global argmax)`` for the local rows of x against the real rows
    (global index < count) of y on all `size` devices of the mesh axis (inside
    `shard_map`); differentiable in x and y. With ``exclude_self``, y is x and row i never
    matches itself."""
    v, index, _ = _ring_search(x, y, exclude_self, size, tile_size, precision, count)
    return v, index


def _ring_fwd(x, y, exclude_self, size, tile_size, precision, count):
    v, index, vector = _ring_search(x, y, exclude_self, size, tile_size, precision, count)
    return (v, index), (x, y, index, vector)


def _ring_bwd(exclude_self, size, tile_size, precision, count, residuals, cotangents):
    x, y, index, vector = residuals
    g = cotangents[0][:, None].astype(x.dtype)
    rows = y.shape[0]
    me = lax.axis_index(AXIS)

    def deliver(_, carry):
        contribution, target, dy = carry
        local = target - me * rows
        local = jnp.where((local >= 0) & (local < rows), local, rows)  # `rows`: dropped
        dy = dy.at[local].add(contribution, mode="drop")
        return _shift(contribution, size), _shift(target, size), dy

    _, _, dy = lax.fori_loop(0, size, deliver, (g * x, index, jnp.zeros_like(y)))
    return g * vector, dy


ring_nearest.defvjp(_ring_fwd, _ring_bwd)


def _smooth_energies(xt, block, rows_of_tile, temperature, kind, own, real, precision):
    """Cosines and scaled energies t*h(c) of a tile of local rows against one block; self
    pairs (when `own`, a traced bool: the block is x itself) and padding columns at -inf."""
    c = neighbors.similarity(xt, block, precision)
    columns = jnp.arange(block.shape[0])
    drop = own & (rows_of_tile[:, None] == columns[None, :])
    if real is not None:
        drop = drop | ~real[None, :]
    return c, jnp.where(drop, -jnp.inf, temperature * neighbors.pair_energy(c, kind))


def _smooth_block(x, block, temperature, kind, own, real, tile_size, precision):
    """Per local row, log sum_j exp(t h(<x_i, y_j>)) over one block of partners."""
    n = x.shape[0]
    tiles, t = neighbors._tiles(x, tile_size)

    def one_tile(args):
        tile_index, xt = args
        _, z = _smooth_energies(xt, block, tile_index * t + jnp.arange(t), temperature, kind,
                                own, real, precision)
        return jax.nn.logsumexp(z, axis=1)

    return lax.map(one_tile, (jnp.arange(tiles.shape[0]), tiles)).reshape(-1)[:n]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def ring_smooth(x, temperature, kind, size, tile_size, precision, count=None):
    """`neighbors.smooth_nearest_self` for the local rows of x against the real rows of x
    on all devices (inside `shard_map`): per-block logsumexps combined along the ring."""
    me = lax.axis_index(AXIS)
    rows = x.shape[0]

    def visit(k, carry):
        block, total = carry
        real = _real((me - k) % size, rows, count)
        part = _smooth_block(x, block, temperature, kind, k == 0, real, tile_size, precision)
        return _shift(block, size), jnp.logaddexp(total, part)

    start = jnp.full_like(x[:, 0], -jnp.inf)
    _, total = lax.fori_loop(0, size, visit, (x, start))
    return total / temperature


def _ring_smooth_fwd(x, temperature, kind, size, tile_size, precision, count):
    values = ring_smooth(x, temperature, kind, size, tile_size, precision, count)
    return values, (x, temperature, values)


def _ring_smooth_bwd(kind, size, tile_size, precision, count, residuals, g):
    """The softmax weights of every pair, block by block round the ring: the local rows'
    gradient stays here, each visiting block's gradient travels with it and is home after
    `size` shifts."""
    x, temperature, values = residuals
    n, d = x.shape
    me = lax.axis_index(AXIS)
    tiles, t = neighbors._tiles(x, tile_size)
    pad = tiles.shape[0] * t - n
    g_tiles = jnp.pad(g, (0, pad)).reshape(-1, t)  # padded rows carry g = 0
    v_tiles = jnp.pad(values, (0, pad)).reshape(-1, t)

    def visit(k, carry):
        block, d_block, dx = carry
        real = _real((me - k) % size, n, count)

        def one_tile(d_block, args):
            tile_index, xt, gt, vt = args
            c, z = _smooth_energies(xt, block, tile_index * t + jnp.arange(t), temperature,
                                    kind, k == 0, real, precision)
            w = (jnp.exp(z - temperature * vt[:, None]) * neighbors._pair_energy_slope(c, kind)
                 * gt[:, None])
            return (d_block + neighbors._dot(w.T, xt, precision),
                    neighbors._dot(w, block, precision))

        d_block, dx_tiles = lax.scan(
            one_tile, d_block, (jnp.arange(tiles.shape[0]), tiles, g_tiles, v_tiles))
        dx = dx + dx_tiles.reshape(-1, d)[:n]
        return _shift(block, size), _shift(d_block, size), dx

    _, d_home, dx = lax.fori_loop(0, size, visit, (x, jnp.zeros_like(x), jnp.zeros_like(x)))
    return dx + d_home, jnp.zeros_like(temperature)


ring_smooth.defvjp(_ring_smooth_fwd, _ring_smooth_bwd)


def ring_top_k(x, y, k, exclude_self, size, tile_size, precision, count=None):
    """`(values, indices)` (rows, k): each local row's k largest inner products with the
    real rows of y on every device and their global indices, best first (inside
    `shard_map`)."""
    me = lax.axis_index(AXIS)
    rows = y.shape[0]
    per_block = min(k, rows)

    def block_top(block, owner, exclude):
        real = _real(owner, rows, count)

        def top(s, xt):
            return lax.top_k(s, per_block)

        v, j = neighbors.map_similarity_tiles(x, block, top, exclude_self=exclude,
                                              columns_valid=real, tile_size=tile_size,
                                              precision=precision)
        return v, (owner * rows + j).astype(jnp.int32)

    def merge(best, new):
        values = jnp.concatenate([best[0], new[0]], axis=1)
        indices = jnp.concatenate([best[1], new[1]], axis=1)
        values, at = lax.top_k(values, k)
        return values, jnp.take_along_axis(indices, at, axis=1)

    v, j = block_top(y, me, exclude_self)
    pad = k - per_block  # fewer rows per block than k: fill with -inf until merged
    first = (jnp.pad(v, ((0, 0), (0, pad)), constant_values=-jnp.inf),
             jnp.pad(j, ((0, 0), (0, pad))))

    def visit(step, carry):
        block, best = carry
        block = _shift(block, size)
        return block, merge(best, block_top(block, (me - step) % size, False))

    _, best = lax.fori_loop(1, size, visit, (y, first))
    return best


def _in_block(idx, owner, rows):
    local = idx - owner * rows
    inside = (local >= 0) & (local < rows)
    return inside, jnp.where(inside, local, 0)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def ring_gathered(x, y, idx, size, tile_size):
    """``<x_i, y_{idx[i, k]}>`` for the local rows of x and global indices `idx` into the rows
    of y on every device: each partner is taken from its block as the block passes."""
    me = lax.axis_index(AXIS)
    rows = y.shape[0]

    def visit(k, carry):
        block, s = carry
        inside, local = _in_block(idx, (me - k) % size, rows)
        part = neighbor_lists.gathered_similarity(x, block, local, tile_size)
        return _shift(block, size), s + jnp.where(inside, part, 0.0)

    _, s = lax.fori_loop(0, size, visit, (y, jnp.zeros_like(idx, dtype=x.dtype)))
    return s


def _ring_gathered_fwd(x, y, idx, size, tile_size):
    return ring_gathered(x, y, idx, size, tile_size), (x, y, idx)


def _ring_gathered_bwd(size, tile_size, residuals, g):
    """Each block collects the gradient of its rows as it travels; home after `size`
    shifts."""
    x, y, idx = residuals
    me = lax.axis_index(AXIS)
    rows = y.shape[0]

    def visit(k, carry):
        block, d_block, dx = carry
        inside, local = _in_block(idx, (me - k) % size, rows)
        gk = jnp.where(inside, g, 0.0)
        dx_k, dy_k, _ = neighbor_lists.gathered_similarity_vjp(x, block, local, gk, tile_size)
        return _shift(block, size), _shift(d_block + dy_k, size), dx + dx_k

    _, d_home, dx = lax.fori_loop(0, size, visit,
                                  (y, jnp.zeros_like(y), jnp.zeros_like(x)))
    return dx, d_home, None


ring_gathered.defvjp(_ring_gathered_fwd, _ring_gathered_bwd)


# The search and the placement ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RingSearch:
    """`search.LocalSearch`'s answers for the local rows of a row-split array, inside
    `shard_map`: partners on every device, by the ring. `count` and `gallery_count` are the
    real rows of x and of the gallery (the rest is padding)."""

    size: int
    count: int
    gallery_count: int | None
    tile_size: int
    precision: object

    def _count(self, exclude_self):
        return self.count if exclude_self else self.gallery_count

    def nearest(self, x, y, *, exclude_self: bool):
        return ring_nearest(x, y, exclude_self, self.size, self.tile_size, self.precision,
                            self._count(exclude_self))[0]

    def smooth(self, x, temperature, kind: str):
        return ring_smooth(x, temperature, kind, self.size, self.tile_size, self.precision,
                           self.count)

    def top_k(self, x, y, k: int, *, exclude_self: bool):
        return ring_top_k(x, y, k, exclude_self, self.size, self.tile_size, self.precision,
                          self._count(exclude_self))

    def gathered(self, x, y, idx):
        return ring_gathered(x, y, idx, self.size, self.tile_size)

    def total(self, v):
        return lax.psum(jnp.sum(v), AXIS)

    def maximum(self, v):
        return lax.pmax(jnp.max(v), AXIS)

    def valid(self, x):
        return _real(lax.axis_index(AXIS), x.shape[0], self.count)


def _spec(split: bool):
    return P(AXIS) if split else P()


def _owned(rows, local_rows):
    """Local positions of the global `rows` this device holds; `local_rows` where it does not."""
    local = rows - lax.axis_index(AXIS) * local_rows
    return jnp.where((local >= 0) & (local < local_rows), local, local_rows)


@dataclasses.dataclass(frozen=True)
class Sharded:
    """Rows split over the devices of a one-axis mesh (see the module docstring)."""

    mesh: Mesh

    @property
    def size(self) -> int:
        return self.mesh.size

    def padded(self, rows: int) -> int:
        return -(-rows // self.size) * self.size

    def search(self, count, gallery_count, tile_size, precision) -> RingSearch:
        return RingSearch(self.size, count, gallery_count, tile_size, precision)

    def rowwise(self, fn, in_rows, out_rows):
        def run(*args):
            specs = tuple(None if a is None else _spec(r)
                          for a, r in zip(args, in_rows, strict=True))
            out_specs = jax.tree.map(_spec, out_rows)
            return jax.shard_map(fn, mesh=self.mesh, in_specs=specs, out_specs=out_specs)(*args)
        return run

    def take_rows(self, a, rows):
        def body(a, rows):
            local_rows = a.shape[0]
            at = _owned(rows, local_rows)
            mine = a[jnp.minimum(at, local_rows - 1)]
            mask = (at < local_rows).reshape((-1,) + (1,) * (a.ndim - 1))
            return lax.psum(jnp.where(mask, mine, 0), AXIS)  # one owner each, others add 0

        batch = jax.shard_map(body, mesh=self.mesh, in_specs=(P(AXIS), P()),
                              out_specs=P())(a, rows)
        return pad_rows(batch, self.padded(rows.shape[0]))

    def put_rows(self, a, rows, values):
        def body(a, rows, values):
            return a.at[_owned(rows, a.shape[0])].set(values, mode="drop")

        values = values[:rows.shape[0]]
        return jax.shard_map(body, mesh=self.mesh, in_specs=(P(AXIS), P(), P()),
                             out_specs=P(AXIS))(a, rows, values)

    def shardings(self, tree, rows: int, batched: bool = False):
        """Leaves with an axis of `rows` rows (after the restarts axis when `batched`) are
        split by rows; the rest is replicated."""
        lead = 1 if batched else 0

        def sharding(a):
            shape = jnp.shape(a)
            if len(shape) >= 2 + lead and shape[lead] == rows:
                return NamedSharding(self.mesh, P(*([None] * lead), AXIS))
            return NamedSharding(self.mesh, P())
        return jax.tree.map(sharding, tree)

    def put(self, tree, rows: int, batched: bool = False):
        """Host arrays (identical on every process) placed on the mesh by `shardings`; row
        arrays are padded with zero rows to `padded(rows)` first."""
        target = self.padded(rows)
        lead = 1 if batched else 0

        def pad(a):
            a = np.asarray(a)
            if a.ndim >= 2 + lead and a.shape[lead] == rows and target != rows:
                widths = [(0, 0)] * a.ndim
                widths[lead] = (0, target - rows)
                a = np.pad(a, widths)
            return a

        host = jax.tree.map(pad, tree)
        return jax.tree.map(_put, host, self.shardings(host, target, batched))

    def put_gallery(self, gallery):
        if gallery is None:
            return None
        gallery = np.asarray(gallery, np.float32)
        return _put(pad_rows(gallery, self.padded(gallery.shape[0])),
                    NamedSharding(self.mesh, P(AXIS)))

    def jit(self, fn, template=None, *, donate: bool = False):
        donate_argnums = (0,) if donate else ()
        if template is None:
            return jax.jit(fn, donate_argnums=donate_argnums)
        x = template.embeddings
        batched = x.ndim == 3
        out = (self.shardings(template, x.shape[-2], batched), NamedSharding(self.mesh, P()))
        return jax.jit(fn, out_shardings=out, donate_argnums=donate_argnums)

    def to_host(self, array) -> np.ndarray:
        return to_host(array)

    def figures(self, x, gallery, *, count, gallery_count, alpha, reduce, tile_size):
        """`metrics.packing_figures` of the first `count` rows with the exact searches on
        the ring (full float32 precision)."""
        hi = "highest"

        def nearest(x, gallery):
            nn, _, _ = _ring_search(x, x, True, self.size, tile_size, hi, count)
            if gallery is None:
                return nn, None
            return nn, _ring_search(x, gallery, False, self.size, tile_size, hi,
                                    gallery_count)[0]

        specs = (P(AXIS), None if gallery is None else P(AXIS))
        nn, near = jax.shard_map(nearest, mesh=self.mesh, in_specs=specs,
                                 out_specs=specs)(x, gallery)
        return metrics.figures_from_nearest(nn[:count], None if near is None else near[:count],
                                            alpha=alpha, reduce=reduce)


_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "pred": 1, "s8": 1,
                "u8": 1, "f64": 8, "s64": 8, "u64": 8}


def largest_array_bytes(compiled) -> int:
    """Bytes of the largest array in a compiled program; for a sharded program that is the
    SPMD-partitioned module, i.e. per device (together with `compiled.memory_analysis()`)."""
    best = 0
    kinds = "|".join(_DTYPE_BYTES)
    for kind, dims in re.findall(rf"\b({kinds})\[([\d,]*)\]", compiled.as_text()):
        size = _DTYPE_BYTES[kind]
        for dim in filter(None, dims.split(",")):
            size *= int(dim)
        best = max(best, size)
    return best
