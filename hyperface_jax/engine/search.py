"""How a loss finds each row's partners: the search, passed to the loss as a value.

The HyperFace loss needs, for the rows of X a device holds, a handful of answers about
partners among all rows (and all gallery rows), plus sums and maxima over all rows. A
search object gives them; the loss (`objective.hyperface_loss`) is written once against it,
as jax-md's energy functions are written against a `space`:

  nearest(x, y, exclude_self)   max_j <x_i, y_j> per row, differentiable in x and y
  smooth(x, temperature, kind)  (1/t) log sum_{j != i} exp(t h(<x_i, x_j>)) per row
  top_k(x, y, k, exclude_self)  each row's k best similarities and their global indices,
                                best first
  gathered(x, y, idx)           <x_i, y_{idx[i, k]}>, differentiable (neighbour lists)
  total(v), maximum(v)          sum and maximum of per-row values over every row
  valid(x)                      which local rows are real (None: all; padding otherwise)

`LocalSearch` answers on one device with every row at hand (blockwise kernels of
`neighbors` and `neighbor_lists`); `sharding.RingSearch` gives the same answers inside
`shard_map` by passing row blocks round a ring of devices.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
from jax import lax

from hyperface_jax.engine import neighbors

PACKING_REDUCTIONS = ("mean", "max")


@dataclasses.dataclass(frozen=True)
class LocalSearch:
    """Every row on this device; no padding."""

    tile_size: int = neighbors.DEFAULT_TILE_SIZE
    precision: Any = lax.Precision.HIGHEST

    def nearest(self, x, y, *, exclude_self: bool):
        if exclude_self:
            return neighbors.nearest_self_similarity(x, self.tile_size, self.precision)[0]
        return neighbors.nearest_similarity(x, y, self.tile_size, self.precision)[0]

    def smooth(self, x, temperature, kind: str):
        return neighbors.smooth_nearest_self(x, temperature, kind, self.tile_size,
                                             self.precision)

    def top_k(self, x, y, k: int, *, exclude_self: bool):
        from hyperface_jax.engine.neighbor_lists import top_k_similarities

        return top_k_similarities(x, y, k, exclude_self=exclude_self, tile_size=self.tile_size,
                                  precision=self.precision)

    def gathered(self, x, y, idx):
        from hyperface_jax.engine.neighbor_lists import gathered_similarity

        return gathered_similarity(x, y, idx, self.tile_size)

    def total(self, v):
        return jnp.sum(v)

    def maximum(self, v):
        return jnp.max(v)

    def valid(self, x):
        return None


def reduce_rows(values, reduce: str, temperature=None, *, search=LocalSearch(),
                valid=None, count=None):
    """The packing term from per-row values: their mean over the `count` real rows, or
    their maximum (a smooth maximum, (1/t) logsumexp, when a temperature is given).

    Written with `search.total` / `search.maximum`, so the same lines reduce over one
    device or over a mesh; padding rows (outside `valid`) never enter. The hard maximum
    keeps `jnp.max`'s gradient: shared equally between tied rows.
    """
    count = values.shape[0] if count is None else count
    if reduce == "mean":
        kept = values if valid is None else jnp.where(valid, values, 0.0)
        return search.total(kept) / count
    if reduce != "max":
        raise ValueError(f"unknown packing reduction {reduce!r}; "
                         f"choose one of {PACKING_REDUCTIONS}")
    kept = values if valid is None else jnp.where(valid, values, -jnp.inf)
    if temperature is None:
        top = kept == search.maximum(lax.stop_gradient(kept))
        return search.total(jnp.where(top, kept, 0.0)) / search.total(top.astype(values.dtype))
    scaled = temperature * kept
    top = search.maximum(lax.stop_gradient(scaled))
    return (top + jnp.log(search.total(jnp.exp(scaled - top)))) / temperature


def mean_rows(values, *, search=LocalSearch(), valid=None, count=None):
    """Mean of per-row values over the real rows."""
    return reduce_rows(values, "mean", search=search, valid=valid, count=count)
