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

`Search` answers them with the kernels of `kernels` over a `ring.Ring`: on one device a
ring of one block with every row at hand (`Search()`), on a mesh (inside `shard_map`) the
blocks of every device passing round the ring. `count` and `gallery_count` are the real
rows of x and of the gallery over all devices (the rest is padding; None: no padding).
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
from jax import lax

from hyperface_jax.engine import kernels
from hyperface_jax.engine.choices import PACKING_REDUCTIONS
from hyperface_jax.engine.ring import LOCAL_RING, Ring

# One name for each packing objective (the values of --packing_reduce), used by the flag
# help, report.json and the docs. The paper's Eq. 1 is stated in words as the Tammes
# problem (maximise the smallest distance: the worst pair); its equations and Algorithm
# 1's loss line are lost from our copy of the text, so the mean form is our reading.
PACKING_OBJECTIVES = {
    "max": {"name": "worst pair (Eq. 1, Tammes)", "reading": "the paper's statement",
            "source": "HyperFace Eq. 1 as stated in words: the minimum distance between "
                      "points is maximised (the Tammes problem)"},
    "mean": {"name": "mean nearest-neighbour (our reading of Algorithm 1's loss)",
             "reading": "ours",
             "source": "our reading of HyperFace Algorithm 1's loss: the mean over "
                       "identities of each one's nearest-neighbour cosine"},
}


def packing_objective(reduce: str) -> dict:
    """What the packing reduction `reduce` optimises, for report.json: its name and whether it
    is the paper's statement or our reading."""
    return {"packing_reduce": reduce, **PACKING_OBJECTIVES[reduce]}


@dataclasses.dataclass(frozen=True)
class Search:
    """The kernels on the rows of this device, partners on every device of `ring`."""

    tile_size: int = kernels.DEFAULT_TILE_SIZE
    precision: Any = lax.Precision.HIGHEST
    ring: Ring = LOCAL_RING
    count: int | None = None
    gallery_count: int | None = None

    def _count(self, exclude_self):
        return self.count if exclude_self else self.gallery_count

    def nearest(self, x, y, *, exclude_self: bool):
        return kernels.nearest(x, y, exclude_self, self.ring, self.tile_size, self.precision,
                               self._count(exclude_self))[0]

    def smooth(self, x, temperature, kind: str):
        return kernels.smooth(x, temperature, kind, self.ring, self.tile_size, self.precision,
                              self.count)

    def top_k(self, x, y, k: int, *, exclude_self: bool):
        return kernels.top_k(x, y, k, exclude_self, self.ring, self.tile_size, self.precision,
                             self._count(exclude_self))

    def gathered(self, x, y, idx):
        return kernels.gathered(x, y, idx, self.ring, self.tile_size)

    def total(self, v):
        return self.ring.total(v)

    def maximum(self, v):
        return self.ring.maximum(v)

    def valid(self, x):
        return self.ring.real(self.ring.me(), x.shape[0], self.count)


LOCAL_SEARCH = Search()


def reduce_rows(values, reduce: str, temperature=None, *, search=LOCAL_SEARCH,
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


def mean_rows(values, *, search=LOCAL_SEARCH, valid=None, count=None):
    """Mean of per-row values over the real rows."""
    return reduce_rows(values, "mean", search=search, valid=valid, count=count)
