"""The figures that judge a packing, computed exactly and blockwise (no n x n matrix)."""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from hyperface_jax.engine import neighbors, sphere
from hyperface_jax.engine.objective import reduce_packing

NN_QUANTILES = (1, 50, 99)  # percent


@partial(jax.jit, static_argnames=("alpha", "reduce", "tile_size"))
def packing_figures(
    x: jax.Array,
    gallery: jax.Array | None = None,
    *,
    alpha: float = 0.0,
    reduce: str = "mean",
    tile_size: int = neighbors.DEFAULT_TILE_SIZE,
) -> dict[str, jax.Array]:
    """Worst-pair and nearest-neighbour cosines, gallery cosine and the loss terms at `x`.

    Always at full float32 precision, whatever precision the solver's matmuls use, so
    figures from different runs compare.
    """
    hi = lax.Precision.HIGHEST
    nn, _ = neighbors.nearest_neighbors(x, x, exclude_self=True, tile_size=tile_size, precision=hi)
    near_gallery = None
    if gallery is not None:
        near_gallery, _ = neighbors.nearest_neighbors(x, gallery, tile_size=tile_size, precision=hi)
    return figures_from_nearest(nn, near_gallery, alpha=alpha, reduce=reduce)


def figures_from_nearest(nn: jax.Array, near_gallery: jax.Array | None = None, *,
                         alpha: float = 0.0, reduce: str = "mean") -> dict[str, jax.Array]:
    """`packing_figures` from each row's nearest-neighbour cosine `nn` and nearest gallery
    cosine `near_gallery` (however they were searched, e.g. sharded over devices)."""
    max_cos = jnp.max(nn)
    figures = {
        "max_cos": max_cos,
        "mean_nn_cos": jnp.mean(nn),
        "min_angle_deg": sphere.cos_to_degrees(max_cos),
    }
    quantiles = jnp.percentile(nn, jnp.array(NN_QUANTILES, nn.dtype))
    for q, value in zip(NN_QUANTILES, quantiles, strict=True):
        figures[f"nn_cos_p{q:02d}"] = value
    packing = reduce_packing(nn, reduce)
    if near_gallery is None:
        regulariser = jnp.zeros((), nn.dtype)
    else:
        figures["mean_gallery_cos"] = jnp.mean(near_gallery)
        regulariser = jnp.mean(1.0 - near_gallery)
    figures["loss_packing"] = packing
    figures["loss_regulariser"] = regulariser
    figures["loss"] = packing + alpha * regulariser
    return figures


def to_python(figures: dict) -> dict[str, float]:
    """Device scalars to plain floats (for JSON and logs)."""
    return {k: float(v) for k, v in jax.device_get(figures).items()}
