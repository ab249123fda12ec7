"""The HyperFace objective: packing term (paper Eq. 1) plus manifold regulariser (Eq. 2).

    P(X) = reduce_i  max_{j != i} h(x_i, x_j)      packing term
    R(X) = mean_i min_{g in G} (1 - cos(x_i, g))   manifold regulariser
    L    = P + alpha * R

`objective` chooses the inner max over partners:
  "max"        the hard maximum of the cosine (the paper's Eq. 1);
  "logsumexp"  a smooth maximum of the cosine, (1/t) log sum_j exp(t cos), whose
               temperature t is annealed upward so it tends to the hard maximum;
  "riesz"      the Riesz t-energy of each point's pairs in the log domain,
               (1/t) log sum_j |x_i - x_j|^-t, with the exponent t annealed upward
               (t -> inf: minus the log of the nearest distance).
`reduce` chooses the outer reduction over identities: "mean" (the paper's) or "max" (the
literal worst pair; smooth objectives use (1/t) logsumexp over rows, which for "riesz"
is the whole configuration's Riesz energy).

Rows of X and G are unit vectors, so cos is the inner product. Every search is blockwise:
no n x n matrix is held in memory (`neighbors`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hyperface_jax import neighbors
from hyperface_jax.neighbor_lists import gathered_similarity

OBJECTIVES = ("max", "logsumexp", "riesz")
PACKING_REDUCTIONS = ("mean", "max")


class LossTerms(NamedTuple):
    total: jax.Array
    packing: jax.Array
    regulariser: jax.Array


def reduce_packing(row_values: jax.Array, reduce: str, temperature=None) -> jax.Array:
    """Mean or maximum over identities; a smooth maximum when a temperature is given."""
    if reduce == "mean":
        return jnp.mean(row_values)
    if reduce == "max":
        if temperature is None:
            return jnp.max(row_values)
        return jax.nn.logsumexp(temperature * row_values) / temperature
    raise ValueError(f"unknown packing reduction {reduce!r}; choose one of {PACKING_REDUCTIONS}")


def check_objective(name: str) -> None:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown --objective {name!r}; choose one of {', '.join(OBJECTIVES)}")


def packing_term(x, *, objective="max", reduce="mean", temperature=None,
                 tile_size=neighbors.DEFAULT_TILE_SIZE, precision=lax.Precision.HIGHEST):
    check_objective(objective)
    if objective == "max":
        row_values, _ = neighbors.nearest_self_similarity(x, tile_size, precision)
        return reduce_packing(row_values, reduce)
    temperature = jnp.asarray(temperature, x.dtype)
    row_values = neighbors.smooth_nearest_self(x, temperature, objective, tile_size, precision)
    return reduce_packing(row_values, reduce, temperature)


def regulariser_term(x, gallery, *, tile_size=neighbors.DEFAULT_TILE_SIZE,
                     precision=lax.Precision.HIGHEST):
    if gallery is None:
        return jnp.zeros((), x.dtype)
    gallery_values, _ = neighbors.nearest_similarity(x, gallery, tile_size, precision)
    return jnp.mean(1.0 - gallery_values)


def hyperface_loss(
    x: jax.Array,
    gallery: jax.Array | None,
    alpha: float,
    *,
    objective: str = "max",
    reduce: str = "mean",
    temperature=None,
    tile_size: int = neighbors.DEFAULT_TILE_SIZE,
    precision=lax.Precision.HIGHEST,
) -> tuple[jax.Array, LossTerms]:
    """`L = P + alpha * R` and its terms; differentiable in `x` (and in `gallery`)."""
    packing = packing_term(x, objective=objective, reduce=reduce, temperature=temperature,
                           tile_size=tile_size, precision=precision)
    regulariser = regulariser_term(x, gallery, tile_size=tile_size, precision=precision)
    total = packing + alpha * regulariser
    return total, LossTerms(total, packing, regulariser)


def listed_hyperface_loss(x, gallery, alpha, lists, *, objective="max", reduce="mean",
                          temperature=None, tile_size=neighbors.DEFAULT_TILE_SIZE):
    """`hyperface_loss` with each row's partners restricted to its neighbour lists
    (`neighbor_lists.NeighborLists`): exact whenever the lists hold the true nearest rows."""
    check_objective(objective)
    c = gathered_similarity(x, x, lists.packing, tile_size)  # (n, K)
    if objective == "max":
        packing = reduce_packing(jnp.max(c, axis=1), reduce)
    else:
        temperature = jnp.asarray(temperature, x.dtype)
        z = temperature * neighbors.pair_energy(c, objective)
        packing = reduce_packing(jax.nn.logsumexp(z, axis=1) / temperature, reduce, temperature)
    if gallery is None:
        regulariser = jnp.zeros((), x.dtype)
    else:
        near = gathered_similarity(x, gallery, lists.gallery, tile_size)
        regulariser = jnp.mean(1.0 - jnp.max(near, axis=1))
    total = packing + alpha * regulariser
    return total, LossTerms(total, packing, regulariser)


def annealed_temperature(step, *, start: float, end: float, anneal_steps: int):
    """Geometric growth from `start` to `end` over `anneal_steps`, then constant."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(1, anneal_steps), 0.0, 1.0)
    return start * (end / start) ** frac
