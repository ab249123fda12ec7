"""The figures that judge a packing, computed exactly and blockwise (no n x n matrix).

`figures` runs the exact search on any placement (one device, or round the ring of a
mesh) and assembles the loss terms with the objective's own `loss_terms`, so the reported
loss is the optimised formula, evaluated exactly; `packing_figures` is its one-device form.
"""

from functools import partial

import jax
import jax.numpy as jnp

from hyperface_jax.engine import kernels, sphere
from hyperface_jax.engine.objective import loss_terms
from hyperface_jax.engine.placement import LOCAL

NN_QUANTILES = (1, 50, 99)  # percent


def figures(x, gallery=None, *, placement=LOCAL, count=None, gallery_count=None,
            alpha: float = 0.0, reduce: str = "mean",
            tile_size: int = kernels.DEFAULT_TILE_SIZE) -> dict[str, jax.Array]:
    """Worst-pair and nearest-neighbour cosines, gallery cosine and the loss terms of the
    first `count` rows of `x` (default all; the rest is padding) on `placement`.

    Always at full float32 precision, whatever precision the solver's matmuls use, so
    figures from different runs compare.
    """
    count = x.shape[0] if count is None else count
    if gallery is not None and gallery_count is None:
        gallery_count = gallery.shape[0]

    def nearest(x, gallery):
        search = placement.search(count, gallery_count, tile_size, "highest")
        nn = search.nearest(x, x, exclude_self=True)
        return nn, None if gallery is None else search.nearest(x, gallery, exclude_self=False)

    nn, near = placement.rowwise(nearest, in_rows=(True, True), out_rows=(True, True))(
        x, gallery)
    return figures_from_nearest(nn[:count], None if near is None else near[:count],
                                alpha=alpha, reduce=reduce)


@partial(jax.jit, static_argnames=("alpha", "reduce", "tile_size"))
def packing_figures(x: jax.Array, gallery: jax.Array | None = None, *, alpha: float = 0.0,
                    reduce: str = "mean",
                    tile_size: int = kernels.DEFAULT_TILE_SIZE) -> dict[str, jax.Array]:
    """`figures` of every row of `x` on one device."""
    return figures(x, gallery, alpha=alpha, reduce=reduce, tile_size=tile_size)


def figures_from_nearest(nn: jax.Array, near_gallery: jax.Array | None = None, *,
                         alpha: float = 0.0, reduce: str = "mean") -> dict[str, jax.Array]:
    """`figures` from each row's nearest-neighbour cosine `nn` and nearest gallery cosine
    `near_gallery` (however they were searched: every row, or a sample)."""
    max_cos = jnp.max(nn)
    out = {
        "max_cos": max_cos,
        "mean_nn_cos": jnp.mean(nn),
        "min_angle_deg": sphere.cos_to_degrees(max_cos),
    }
    quantiles = jnp.percentile(nn, jnp.array(NN_QUANTILES, nn.dtype))
    for q, value in zip(NN_QUANTILES, quantiles, strict=True):
        out[f"nn_cos_p{q:02d}"] = value
    if near_gallery is not None:
        out["mean_gallery_cos"] = jnp.mean(near_gallery)
    terms = loss_terms(nn, near_gallery, alpha, reduce=reduce)
    out["loss_packing"] = terms.packing
    out["loss_regulariser"] = terms.regulariser
    out["loss"] = terms.total
    return out


def to_python(figures: dict) -> dict[str, float]:
    """Device scalars to plain floats (for JSON and logs)."""
    return {k: float(v) for k, v in jax.device_get(figures).items()}
