"""The HyperFace objective: a packing term plus the paper's manifold regulariser (Eq. 2).

    P(X) = reduce_i  max_{j != i} h(x_i, x_j)      packing term
    R(X) = mean_i min_{g in G} (1 - cos(x_i, g))   manifold regulariser
    L    = P + alpha * R

`objective` chooses the inner max over partners:
  "max"        the hard maximum of the cosine (as in Eq. 1);
  "logsumexp"  a smooth maximum of the cosine, (1/t) log sum_j exp(t cos), whose
               temperature t is annealed upward so it tends to the hard maximum;
  "riesz"      the Riesz t-energy of each point's pairs in the log domain,
               (1/t) log sum_j |x_i - x_j|^-t, with the exponent t annealed upward
               (t -> inf: minus the log of the nearest distance).
`reduce` chooses the outer reduction over identities (`search.PACKING_OBJECTIVES` names
them): "max", the worst pair (Eq. 1, Tammes), the paper's statement (smooth objectives use
(1/t) logsumexp over rows, which for "riesz" is the whole configuration's Riesz energy);
"mean", the mean nearest-neighbour (our reading of Algorithm 1's loss): the mean over
identities of each one's nearest-neighbour cosine.

Rows of X and G are unit vectors, so cos is the inner product. Where the partners come
from is a value, `search` (`search.Search`: on one device, or round a ring of devices),
and `lists` optionally restricts each row's partners to its neighbour lists: the loss
below is the only one, whatever the placement. `loss_terms` assembles P + alpha R from
per-row values; the exact figures (`measure.metrics`) assemble theirs with it too.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hyperface_jax.engine import kernels
from hyperface_jax.engine.choices import OBJECTIVES
from hyperface_jax.engine.neighbor_lists import Partners
from hyperface_jax.engine.search import (
    LOCAL_SEARCH,
    PACKING_REDUCTIONS,
    Search,
    mean_rows,
    reduce_rows,
)

__all__ = ["OBJECTIVES", "PACKING_REDUCTIONS", "LossTerms", "Partners", "hyperface_loss",
           "loss_terms", "annealed_temperature", "check_objective"]


class LossTerms(NamedTuple):
    total: jax.Array
    packing: jax.Array
    regulariser: jax.Array
    # The temperature the packing term was smoothed with (0 for the hard maximum).
    temperature: jax.Array | None = None


def check_objective(name: str) -> None:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")


def _packing_rows(x, search, objective, temperature, lists, listed_rows):
    """Each local row's (hard or smooth) maximum over its partners."""
    if lists is None:
        if objective == "max":
            return search.nearest(x, x, exclude_self=True)
        return search.smooth(x, temperature, objective)
    c = search.gathered(x, x if listed_rows is None else listed_rows, lists.packing)
    if objective == "max":
        return jnp.max(c, axis=1)
    return jax.nn.logsumexp(temperature * kernels.pair_energy(c, objective), axis=1) / temperature


def _gallery_rows(x, gallery, search, lists):
    """Each local row's cosine to its nearest gallery row."""
    if lists is None or lists.gallery is None:
        return search.nearest(x, gallery, exclude_self=False)
    return jnp.max(search.gathered(x, gallery, lists.gallery), axis=1)


def hyperface_loss(
    x: jax.Array,
    gallery: jax.Array | None,
    alpha: float,
    *,
    objective: str = "max",
    reduce: str = "mean",
    temperature=None,
    tile_size: int = kernels.DEFAULT_TILE_SIZE,
    precision="highest",
    search=None,
    lists: Partners | None = None,
    listed_rows: jax.Array | None = None,
    count: int | None = None,
) -> tuple[jax.Array, LossTerms]:
    """`L = P + alpha * R` and its terms (`loss_terms`, with the temperature used);
    differentiable in `x` (and in `gallery`).

    `search` (default: `Search(tile_size, precision)`, one device) finds the partners; `lists`
    restricts them to neighbour lists (exact whenever the lists hold the true nearest
    rows); `listed_rows` are the rows `lists.packing` indexes (default: x itself; a listed
    mini-batch passes the whole set, so its rows see their nearest rows of all of it);
    `count` is the number of real rows over all devices (default: the rows of x).
    """
    check_objective(objective)
    search = search or Search(tile_size, precision)
    valid = search.valid(x)
    count = x.shape[0] if count is None else count
    if objective != "max":
        temperature = jnp.asarray(temperature, x.dtype)
    rows = _packing_rows(x, search, objective, temperature, lists, listed_rows)
    near = None if gallery is None else _gallery_rows(x, gallery, search, lists)
    terms = loss_terms(rows, near, alpha, reduce=reduce,
                       temperature=None if objective == "max" else temperature,
                       search=search, valid=valid, count=count)
    return terms.total, terms


def loss_terms(packing_rows, gallery_rows, alpha, *, reduce: str = "mean", temperature=None,
               search=LOCAL_SEARCH, valid=None, count=None) -> LossTerms:
    """`L = P + alpha * R` from each row's (hard or smooth, at `temperature`) maximum over
    its partners and its cosine to its nearest gallery row (None: no gallery, R = 0),
    reduced over the `count` real rows of every device (`search.total` / `maximum`)."""
    packing = reduce_rows(packing_rows, reduce, temperature, search=search, valid=valid,
                          count=count)
    if gallery_rows is None:
        regulariser = jnp.zeros((), packing_rows.dtype)
    else:
        regulariser = mean_rows(1.0 - gallery_rows, search=search, valid=valid, count=count)
    total = packing + alpha * regulariser
    smoothed = jnp.zeros((), packing_rows.dtype) if temperature is None else temperature
    return LossTerms(total, packing, regulariser, smoothed)


def annealed_temperature(step, *, start: float, end: float, anneal_steps: int):
    """Geometric growth from `start` to `end` over `anneal_steps`, then constant."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(1, anneal_steps), 0.0, 1.0)
    return start * (end / start) ** frac
