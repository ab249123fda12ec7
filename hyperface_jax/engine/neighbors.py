"""Blockwise nearest-neighbour similarity on the sphere, with a gather-only backward pass.

For each row ``x_i`` we need ``max_j <x_i, y_j>`` (over ``j != i`` when ``y`` is ``x``
itself). A dense formulation materialises the n x m similarity matrix and lets autodiff
differentiate ``max``; its backward pass is a second n x m matrix product. Here rows are
processed in tiles of ``tile_size`` (memory O(tile_size * m)), only the maximum and its
arg-max are kept, and the custom VJP is a gather of the arg-max partners plus a scatter-add:
O(n d) work, no matrix product.

Ties: when a row has several exact maxima, dense autodiff splits the gradient between
them and this VJP gives it all to the first; with real-valued data ties have probability
zero, and the tests check equality on random inputs.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

DEFAULT_TILE_SIZE = 1024
# Rows per tile by backend: the (tile, m) similarity block should fill the accelerator's
# matrix units but stay a small share of its memory.
TILE_SIZE_BY_BACKEND = {"cpu": 1024, "gpu": 4096, "tpu": 4096}

# --matmul_precision: the three XLA precisions for float32 inputs, and "bfloat16", which
# casts the inputs of the search to bfloat16 (float32 accumulation) and then recomputes
# the selected pairs' cosines exactly in float32, so values (and gradients) stay exact
# and only the choice of arg-max can differ, between near-ties.
MATMUL_PRECISIONS = ("highest", "high", "default", "bfloat16")


def default_tile_size(backend: str | None = None) -> int:
    return TILE_SIZE_BY_BACKEND.get(backend or jax.default_backend(), DEFAULT_TILE_SIZE)


def _lax_precision(precision):
    if isinstance(precision, str):
        if precision not in MATMUL_PRECISIONS:
            raise ValueError(f"unknown --matmul_precision {precision!r}; choose one of "
                             f"{', '.join(MATMUL_PRECISIONS)}")
        if precision == "bfloat16":
            return lax.Precision.HIGHEST
        return lax.Precision[precision.upper()]
    return precision


def similarity(a: jax.Array, b: jax.Array, precision=lax.Precision.HIGHEST) -> jax.Array:
    """``a @ b.T`` in float32 at the requested precision (see MATMUL_PRECISIONS)."""
    if isinstance(precision, str) and precision == "bfloat16":
        return jnp.dot(a.astype(jnp.bfloat16), b.T.astype(jnp.bfloat16),
                       preferred_element_type=jnp.float32)
    return jnp.dot(a, b.T, precision=_lax_precision(precision))


def _dot(a, b, precision):
    """A plain float32 product (gradient accumulations stay float32 even for "bfloat16")."""
    return jnp.dot(a, b, precision=_lax_precision(precision))


def _is_bfloat16(precision) -> bool:
    return isinstance(precision, str) and precision == "bfloat16"


def _tiles(x: jax.Array, tile_size: int):
    """Rows of `x` padded with zeros to whole tiles: (num_tiles, t, d) and t."""
    n, d = x.shape
    t = max(1, min(int(tile_size), n))
    num_tiles = -(-n // t)
    padded = jnp.pad(x, ((0, num_tiles * t - n), (0, 0)))
    return padded.reshape(num_tiles, t, d), t


def map_similarity_tiles(x, y, reduce, *, exclude_self: bool = False, columns_valid=None,
                         tile_size: int = DEFAULT_TILE_SIZE, precision=lax.Precision.HIGHEST):
    """`reduce(s, xt)` over row tiles of `x`, where ``s = xt @ y.T`` (self pairs at -inf
    with ``exclude_self``, and columns outside the boolean mask `columns_valid`: padding rows
    of a sharded array) is the only (tile, m) buffer; `reduce` returns arrays with a
    leading axis of the tile's rows, which come back concatenated for the n rows of `x`."""
    n = x.shape[0]
    tiles, t = _tiles(x, tile_size)
    columns = jnp.arange(y.shape[0])

    def one_tile(args):
        tile_index, xt = args
        s = similarity(xt, y, precision)
        if exclude_self:
            rows = tile_index * t + jnp.arange(t)
            s = jnp.where(rows[:, None] == columns[None, :], -jnp.inf, s)
        if columns_valid is not None:
            s = jnp.where(columns_valid[None, :], s, -jnp.inf)
        return reduce(s, xt)

    out = lax.map(one_tile, (jnp.arange(tiles.shape[0]), tiles))
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)


def nearest_neighbors(
    x: jax.Array,
    y: jax.Array,
    *,
    exclude_self: bool = False,
    columns_valid=None,
    tile_size: int = DEFAULT_TILE_SIZE,
    precision=lax.Precision.HIGHEST,
) -> tuple[jax.Array, jax.Array]:
    """For each row of `x`, the largest inner product with a row of `y`, and that row's index.

    With ``exclude_self`` (``y`` is ``x``), row i never matches itself. Not differentiable
    by design; see `nearest_similarity` and `nearest_self_similarity` for the losses.
    """
    def best(s, xt):
        j = jnp.argmax(s, axis=1)
        if _is_bfloat16(precision):  # exact float32 value of the chosen pair
            return jnp.sum(xt * y[j], axis=1), j
        return jnp.take_along_axis(s, j[:, None], axis=1)[:, 0], j

    values, indices = map_similarity_tiles(x, y, best, exclude_self=exclude_self,
                                           columns_valid=columns_valid, tile_size=tile_size,
                                           precision=precision)
    return values, indices.astype(jnp.int32)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def nearest_self_similarity(x, tile_size=DEFAULT_TILE_SIZE, precision=lax.Precision.HIGHEST):
    """``(max_{j != i} <x_i, x_j>, argmax)`` for every row i; differentiable in the values.

    The backward pass: d<x_i, x_j*>/dx_i = x_j* and d/dx_j* = x_i, i.e. one gather and one
    scatter-add of the partners.
    """
    return nearest_neighbors(x, x, exclude_self=True, tile_size=tile_size, precision=precision)


def _self_fwd(x, tile_size, precision):
    values, indices = nearest_self_similarity(x, tile_size, precision)
    return (values, indices), (x, indices)


def _self_bwd(tile_size, precision, residuals, cotangents):
    x, indices = residuals
    g = cotangents[0][:, None].astype(x.dtype)
    dx = g * x[indices] + jnp.zeros_like(x).at[indices].add(g * x)
    return (dx,)


nearest_self_similarity.defvjp(_self_fwd, _self_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def nearest_similarity(x, y, tile_size=DEFAULT_TILE_SIZE, precision=lax.Precision.HIGHEST):
    """``(max_j <x_i, y_j>, argmax)`` for every row of `x`; differentiable in the values."""
    return nearest_neighbors(x, y, tile_size=tile_size, precision=precision)


def _cross_fwd(x, y, tile_size, precision):
    values, indices = nearest_similarity(x, y, tile_size, precision)
    return (values, indices), (x, y, indices)


def _cross_bwd(tile_size, precision, residuals, cotangents):
    x, y, indices = residuals
    g = cotangents[0][:, None].astype(x.dtype)
    return g * y[indices], jnp.zeros_like(y).at[indices].add(g * x)


nearest_similarity.defvjp(_cross_fwd, _cross_bwd)


# Smooth maxima over all partners -------------------------------------------------------
#
# For each row i, (1/t) log sum_{j != i} exp(t h(<x_i, x_j>)), a smooth upper bound of
# max_j h that tends to it as the temperature t grows. h is the pair "energy":
#   "logsumexp": h(c) = c                      (soft nearest-neighbour cosine)
#   "riesz":     h(c) = -log |x_i - x_j| = -log(2 - 2c) / 2, so exp(t h) = |x_i - x_j|^-t is
#                the Riesz t-energy of the pair, summed in the log domain (no overflow).
# The backward pass needs the softmax weights of every pair, i.e. two matrix products per
# tile; tiles are recomputed in the backward pass so memory stays O(tile_size * n). When
# one tile holds all rows (n <= tile_size) its cosines are kept instead (see _smooth_fwd).

SMOOTH_KINDS = ("logsumexp", "riesz")
_MIN_SQUARED_DISTANCE = 1e-12


def pair_energy(c, kind: str):
    if kind == "logsumexp":
        return c
    if kind == "riesz":
        return -0.5 * jnp.log(jnp.maximum(2.0 - 2.0 * c, _MIN_SQUARED_DISTANCE))
    raise ValueError(f"unknown smooth kind {kind!r}; choose one of {SMOOTH_KINDS}")


def _pair_energy_slope(c, kind: str):
    if kind == "logsumexp":
        return jnp.ones_like(c)
    return 1.0 / jnp.maximum(2.0 - 2.0 * c, _MIN_SQUARED_DISTANCE)


def _smooth_tile(xt, x, tile_index, t, temperature, kind, precision):
    """Scaled energies t*h(c) of one tile against all rows, self pairs at -inf."""
    c = similarity(xt, x, precision)
    rows = tile_index * t + jnp.arange(t)
    self_pair = rows[:, None] == jnp.arange(x.shape[0])[None, :]
    z = jnp.where(self_pair, -jnp.inf, temperature * pair_energy(c, kind))
    return c, z, self_pair


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def smooth_nearest_self(x, temperature, kind="logsumexp", tile_size=DEFAULT_TILE_SIZE,
                        precision=lax.Precision.HIGHEST):
    """(1/t) log sum_{j != i} exp(t h(<x_i, x_j>)) for every row i; see the comment above."""
    n = x.shape[0]
    tiles, t = _tiles(x, tile_size)

    def one_tile(args):
        tile_index, xt = args
        _, z, _ = _smooth_tile(xt, x, tile_index, t, temperature, kind, precision)
        return jax.nn.logsumexp(z, axis=1) / temperature

    values = lax.map(one_tile, (jnp.arange(tiles.shape[0]), tiles))
    return values.reshape(-1)[:n]


def _smooth_fwd(x, temperature, kind, tile_size, precision):
    if _tiles(x, tile_size)[0].shape[0] == 1:
        # One tile holds every pair: keep its cosines for the backward pass, which then
        # needs one product, (W + W^T) X, instead of a recomputed tile and two products
        # (2 products a step instead of 4; memory n^2 floats, which the tile already is).
        c, z, _ = _smooth_tile(x, x, 0, x.shape[0], temperature, kind, precision)
        values = jax.nn.logsumexp(z, axis=1) / temperature
        return values, (x, temperature, values, c)
    values = smooth_nearest_self(x, temperature, kind, tile_size, precision)
    return values, (x, temperature, values, None)


def _smooth_bwd(kind, tile_size, precision, residuals, g):
    x, temperature, values, c = residuals
    n = x.shape[0]
    if c is not None:
        self_pair = jnp.eye(n, dtype=bool)
        z = jnp.where(self_pair, -jnp.inf, temperature * pair_energy(c, kind))
        w = jnp.exp(z - temperature * values[:, None]) * _pair_energy_slope(c, kind) * g[:, None]
        return _dot(w + w.T, x, precision), jnp.zeros_like(temperature)
    tiles, t = _tiles(x, tile_size)
    g_tiles = jnp.pad(g, (0, tiles.shape[0] * t - n)).reshape(-1, t)
    v_tiles = jnp.pad(values, (0, tiles.shape[0] * t - n)).reshape(-1, t)

    def one_tile(dx_partners, args):
        tile_index, xt, gt, vt = args
        c, z, _ = _smooth_tile(xt, x, tile_index, t, temperature, kind, precision)
        # d value_i / d c_ij = softmax_j(z_ij) h'(c_ij); padded rows carry g = 0.
        w = jnp.exp(z - temperature * vt[:, None]) * _pair_energy_slope(c, kind) * gt[:, None]
        dx_tile = _dot(w, x, precision)
        dx_partners = dx_partners + _dot(w.T, xt, precision)
        return dx_partners, dx_tile

    dx_partners, dx_tiles = lax.scan(
        one_tile, jnp.zeros_like(x), (jnp.arange(tiles.shape[0]), tiles, g_tiles, v_tiles))
    dx = dx_partners + dx_tiles.reshape(-1, x.shape[1])[:n]
    return dx, jnp.zeros_like(temperature)


smooth_nearest_self.defvjp(_smooth_fwd, _smooth_bwd)
