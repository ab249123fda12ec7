"""Neighbour lists: each row's K nearest candidates, searched exactly now and then.

The exact solver searches all n partners (and all m gallery rows) of every row at every
step: two (n x n) and (n x m) matrix products per step. Between two steps points move
little, so, as in molecular dynamics, each row keeps a short list of its K nearest
partners (and of its Kg nearest gallery rows), the loss looks only at those, and the
lists are rebuilt by an exact blockwise top-K search every `refresh_every` steps.

This is an approximation, named as one (`--neighbor_list_size`, default off): between
rebuilds a row's true nearest partner may leave its list. Every rebuild therefore audits
the lists it replaces: the share of rows whose new nearest partner was missing from their
old list (`audit`). Runs report it, so a user sees what the speed cost in exactness.

Memory stays O(n K + tile x max(n, m)): `gathered_similarity` has a custom VJP that
regathers partners tile by tile instead of keeping an (n, K, d) residual.
"""

from functools import partial

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from hyperface_jax import neighbors


@flax.struct.dataclass
class NeighborLists:
    packing: jax.Array  # (n, K) int32: each row's K nearest other rows at the last rebuild
    gallery: jax.Array | None  # (n, Kg) int32 nearest gallery rows, or None without gallery
    rebuilds: jax.Array  # int32: audited rebuilds so far
    missed_sum: jax.Array  # float32: sum over audited rebuilds of the share of missed rows
    missed_max: jax.Array  # float32: the largest such share
    gallery_missed_sum: jax.Array
    gallery_missed_max: jax.Array


def top_k_neighbors(x, y, k: int, *, exclude_self: bool = False,
                    tile_size: int = neighbors.DEFAULT_TILE_SIZE, precision="highest"):
    """Indices (n, k) of each row's k largest inner products with rows of `y`, best first."""
    idx = neighbors.map_similarity_tiles(x, y, lambda s, xt: lax.top_k(s, k)[1],
                                         exclude_self=exclude_self, tile_size=tile_size,
                                         precision=precision)
    return idx.astype(jnp.int32)


def _gather_tiles(a, tile_size):
    """(num_tiles, t, ...) view of `a` padded with zeros (index 0 for int arrays)."""
    n = a.shape[0]
    t = max(1, min(int(tile_size), n))
    num_tiles = -(-n // t)
    pad = [(0, num_tiles * t - n)] + [(0, 0)] * (a.ndim - 1)
    return jnp.pad(a, pad).reshape(num_tiles, t, *a.shape[1:]), t


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def gathered_similarity(x, y, idx, tile_size=neighbors.DEFAULT_TILE_SIZE):
    """``s[i, k] = <x_i, y_{idx[i, k]}>`` in float32, tile by tile; differentiable in x, y."""
    n = x.shape[0]
    xs, _ = _gather_tiles(x, tile_size)
    ids, _ = _gather_tiles(idx, tile_size)
    s = lax.map(lambda a: jnp.einsum("td,tkd->tk", a[0], y[a[1]],
                                     precision=lax.Precision.HIGHEST), (xs, ids))
    return s.reshape(-1, idx.shape[1])[:n]


def _gathered_fwd(x, y, idx, tile_size):
    return gathered_similarity(x, y, idx, tile_size), (x, y, idx)


def gathered_similarity_vjp(x, y, idx, g, tile_size=neighbors.DEFAULT_TILE_SIZE):
    """The cotangents of `gathered_similarity` for the cotangent `g`: (dx, dy, None)."""
    n, k = idx.shape
    xs, _ = _gather_tiles(x, tile_size)
    ids, _ = _gather_tiles(idx, tile_size)
    gs, _ = _gather_tiles(g.astype(x.dtype), tile_size)  # padded rows carry g = 0

    def one_tile(dy, a):
        xt, it, gt = a
        dx_t = jnp.einsum("tk,tkd->td", gt, y[it], precision=lax.Precision.HIGHEST)
        dy = dy.at[it.reshape(-1)].add((gt[:, :, None] * xt[:, None, :]).reshape(-1, x.shape[1]))
        return dy, dx_t

    dy, dx = lax.scan(one_tile, jnp.zeros_like(y), (xs, ids, gs))
    return dx.reshape(-1, x.shape[1])[:n], dy, None


def _gathered_bwd(tile_size, residuals, g):
    x, y, idx = residuals
    return gathered_similarity_vjp(x, y, idx, g, tile_size)


gathered_similarity.defvjp(_gathered_fwd, _gathered_bwd)


def search_partners(x, gallery, size: int, gallery_size: int, search):
    """Fresh lists of the local rows by exact search (`search.top_k`): `objective.Partners`
    of `size` partners among the rows of x and `gallery_size` gallery rows."""
    from hyperface_jax.objective import Partners

    packing = search.top_k(x, x, size, exclude_self=True)
    near_gallery = None
    if gallery is not None:
        near_gallery = search.top_k(x, gallery, gallery_size, exclude_self=False)
    return Partners(packing, near_gallery)


def fresh(partners) -> NeighborLists:
    """Lists with an empty audit."""
    zero = jnp.zeros((), jnp.float32)
    return NeighborLists(partners.packing, partners.gallery, jnp.zeros((), jnp.int32),
                         zero, zero, zero, zero)


def _missed_share(old, new):
    """Share of rows whose new nearest candidate is not in their old list."""
    return jnp.mean(jnp.logical_not(jnp.any(old == new[:, :1], axis=1)).astype(jnp.float32))


def audited(lists: NeighborLists, partners, count: int) -> NeighborLists:
    """`partners` as the new lists, auditing the lists they replace over the first `count`
    (real, not padding) rows."""
    missed = _missed_share(lists.packing[:count], partners.packing[:count])
    g_missed = (jnp.zeros((), jnp.float32) if partners.gallery is None
                else _missed_share(lists.gallery[:count], partners.gallery[:count]))
    return fresh(partners).replace(
        rebuilds=lists.rebuilds + 1,
        missed_sum=lists.missed_sum + missed,
        missed_max=jnp.maximum(lists.missed_max, missed),
        gallery_missed_sum=lists.gallery_missed_sum + g_missed,
        gallery_missed_max=jnp.maximum(lists.gallery_missed_max, g_missed))


def audit(lists: NeighborLists) -> dict[str, float | int]:
    """The audit as plain numbers (for report.json)."""
    lists = jax.device_get(lists)
    rebuilds = int(lists.rebuilds)
    mean = (lambda s: float(s) / rebuilds if rebuilds else 0.0)
    return {
        "rebuilds_audited": rebuilds,
        "mean_share_rows_missed": mean(lists.missed_sum),
        "max_share_rows_missed": float(lists.missed_max),
        "gallery_mean_share_rows_missed": mean(lists.gallery_missed_sum),
        "gallery_max_share_rows_missed": float(lists.gallery_missed_max),
    }
