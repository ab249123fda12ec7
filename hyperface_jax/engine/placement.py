"""Where the rows live: one device (`Local`, here) or a mesh of devices (`sharding.Sharded`).

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
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hyperface_jax.engine.search import LocalSearch
from hyperface_jax.measure import metrics


@dataclasses.dataclass(frozen=True)
class Local:
    """Every row on the default device."""

    size: int = 1

    def padded(self, rows: int) -> int:
        return rows

    def search(self, count, gallery_count, tile_size, precision) -> LocalSearch:
        return LocalSearch(tile_size, precision)

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

    def figures(self, x, gallery, *, count, gallery_count, alpha, reduce, tile_size):
        """`metrics.packing_figures` of the first `count` rows (exact float32)."""
        return metrics.packing_figures(x, gallery, alpha=alpha, reduce=reduce,
                                       tile_size=tile_size)


LOCAL = Local()


def pad_rows(array, rows: int):
    """`array` with zero rows appended up to `rows` rows (numpy or jax)."""
    extra = rows - array.shape[0]
    if extra == 0:
        return array
    xp = jnp if isinstance(array, jax.Array) else np
    return xp.pad(array, [(0, extra)] + [(0, 0)] * (array.ndim - 1))
