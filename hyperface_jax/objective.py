"""The HyperFace objective: packing term (paper Eq. 1) plus manifold regulariser (Eq. 2).

    P(X) = mean_i max_{j != i} cos(x_i, x_j)        (reduce="mean", the paper's)
         = max_i  max_{j != i} cos(x_i, x_j)        (reduce="max", the literal worst pair)
    R(X) = mean_i min_{g in G} (1 - cos(x_i, g))
    L    = P + alpha * R

Rows of X and G are unit vectors, so cos is the inner product. Both nearest-neighbour
searches are blockwise with gather-only gradients (`neighbors`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hyperface_jax import neighbors

PACKING_REDUCTIONS = ("mean", "max")


class LossTerms(NamedTuple):
    total: jax.Array
    packing: jax.Array
    regulariser: jax.Array


def reduce_packing(nn_values: jax.Array, reduce: str) -> jax.Array:
    if reduce == "mean":
        return jnp.mean(nn_values)
    if reduce == "max":
        return jnp.max(nn_values)
    raise ValueError(f"unknown packing reduction {reduce!r}; choose one of {PACKING_REDUCTIONS}")


def hyperface_loss(
    x: jax.Array,
    gallery: jax.Array | None,
    alpha: float,
    *,
    reduce: str = "mean",
    tile_size: int = neighbors.DEFAULT_TILE_SIZE,
    precision=lax.Precision.HIGHEST,
) -> tuple[jax.Array, LossTerms]:
    """`L = P + alpha * R` and its terms; differentiable in `x` (and in `gallery`)."""
    nn_values, _ = neighbors.nearest_self_similarity(x, tile_size, precision)
    packing = reduce_packing(nn_values, reduce)
    if gallery is None:
        regulariser = jnp.zeros((), x.dtype)
    else:
        gallery_values, _ = neighbors.nearest_similarity(x, gallery, tile_size, precision)
        regulariser = jnp.mean(1.0 - gallery_values)
    total = packing + alpha * regulariser
    return total, LossTerms(total, packing, regulariser)
