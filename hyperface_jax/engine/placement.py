"""Where the rows live: one device (`Local`) or a mesh of devices (`Sharded`).

The solver is written once against this small interface; a placement says how to

  padded(rows)                    the row count of its arrays (a multiple of the device count)
  search(count, gallery_count, .) the `search` object the loss uses on the local rows
  rowwise(fn, in_rows, out_rows)  run `fn` on each device's rows (identity here; `shard_map`
                                  on a mesh); `in_rows`/`out_rows` say which arguments and
                                  results are split by rows (True) or replicated (False)
  take_rows(a, rows)              the given global rows of a row-split array (mini-batches)
  put_rows(a, rows, values)       ... written back
  shardings(tree, rows)           the layout of a state (None: the default, one device)
  put(tree, rows), put_gallery(g) host arrays placed, padded with zero rows to `padded`
  jit(fn, template, donate)       `jax.jit` with the state's layout pinned and donated
  to_host(a)                      the whole array as numpy on every process

Padding rows are zeros and are masked by the search, so they never enter a loss, a
gradient or a figure; their optimizer state stays zero. On one device nothing is padded.

`Sharded` splits the references X (n x d), every optimizer-state leaf shaped like X, the
neighbour lists and the gallery G (m x d) by rows over the devices of a one-axis mesh
(`mesh.make_mesh`, axis ``ring.AXIS``); the PRNG key, the step and scalar optimizer state
are replicated. Its search passes row blocks round the ring of devices (`ring.Ring`,
`kernels`), so the largest per-device buffer during a step is a similarity tile of
min(tile_size, n/D) x n/D. Mini-batch rows are gathered with a `psum` (each device adds the
rows it owns) and written back by their owners; the optimizer update runs outside
`shard_map`, under `jit`'s automatic partitioning, so every optax optimizer keeps its
global semantics (e.g. whole-array norms in lamb).

Why `jax.shard_map` and not `jax.pmap`: the state stays one global array that orbax saves
with its sharding and restores on any device count (padding rows are zeros, so a
checkpoint restored with another padding is truncated or zero-padded: `io.checkpoint`),
and the non-local parts (optimizer update, figures) are left to XLA's partitioner.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hyperface_jax.engine.mesh import to_host
from hyperface_jax.engine.ring import AXIS, Ring
from hyperface_jax.engine.search import Search


@dataclasses.dataclass(frozen=True)
class Local:
    """Every row on the default device."""

    size: int = 1

    def padded(self, rows: int) -> int:
        return rows

    def search(self, count, gallery_count, tile_size, precision) -> Search:
        return Search(tile_size, precision)  # nothing is padded: no counts to mask

    def rowwise(self, fn, in_rows, out_rows):
        return fn

    def take_rows(self, a, rows):
        return a[rows]

    def put_rows(self, a, rows, values):
        return a.at[rows].set(values)

    def shardings(self, tree, rows: int, batched: bool = False):
        return None  # one device: jit's default layout

    def put(self, tree, rows: int | None = None, batched: bool = False):
        return jax.tree.map(jnp.asarray, tree)

    def put_gallery(self, gallery):
        return None if gallery is None else jnp.asarray(gallery, jnp.float32)

    def jit(self, fn, template=None, *, donate: bool = False):
        return jax.jit(fn, donate_argnums=(0,) if donate else ())

    def to_host(self, array) -> np.ndarray:
        return np.asarray(jax.device_get(array))


LOCAL = Local()


def pad_rows(array, rows: int):
    """`array` with zero rows appended up to `rows` rows (numpy or jax)."""
    extra = rows - array.shape[0]
    if extra == 0:
        return array
    xp = jnp if isinstance(array, jax.Array) else np
    return xp.pad(array, [(0, extra)] + [(0, 0)] * (array.ndim - 1))


def _put(array, sharding):
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


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

    def search(self, count, gallery_count, tile_size, precision) -> Search:
        return Search(tile_size, precision, Ring(self.size), count, gallery_count)

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
