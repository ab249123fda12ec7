"""Neighbour lists: each row's K nearest candidates, searched exactly now and then.

The exact solver searches all n partners (and all m gallery rows) of every row at every
step: two (n x n) and (n x m) matrix products per step. Between two steps points move
little, so, as in molecular dynamics, each row keeps a short list of its K nearest
partners (and of its Kg nearest gallery rows), the loss looks only at those, and the
lists are rebuilt by an exact blockwise top-K search when the rebuild rule says:

- ``every``: every `refresh_every` steps, an approximation named as one: between
  rebuilds a row's true nearest partner may leave its list;
- ``displacement``: when the rows have moved far enough since the last rebuild that a
  list may have lost what the loss needs (`may_be_stale`), so no step uses a stale list.

With the ``every`` rule, the packing lists can also be refreshed cheaply between exact
rebuilds from their neighbours' neighbours (`nn_descent.descend`, n K^2 d instead of n^2 d;
`descended` counts them).

Every rebuild audits the lists it replaces: the share of rows whose new nearest partner
was missing from their old list (`audit`). Runs report it, so a user sees what the speed
cost in exactness.

The searches themselves are the kernels' (`kernels.top_k`, `kernels.gathered`, reached
through the search value the caller passes): this module holds the lists and their policy.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hyperface_jax.engine import pytrees


class Partners(NamedTuple):
    """Neighbour lists of the local rows (global row indices): `packing` (rows, K) into X,
    `gallery` (rows, Kg) into G or None."""
    packing: jax.Array
    gallery: jax.Array | None


@pytrees.dataclass
class NeighborLists:
    packing: jax.Array  # (n, K) int32: each row's K nearest other rows at the last rebuild
    gallery: jax.Array | None  # (n, Kg) int32 nearest gallery rows, or None without gallery
    rebuilds: jax.Array  # int32: audited rebuilds so far
    missed_sum: jax.Array  # float32: sum over audited rebuilds of the share of missed rows
    missed_max: jax.Array  # float32: the largest such share
    gallery_missed_sum: jax.Array
    gallery_missed_max: jax.Array
    # rebuilds by displacement: the rows at the last rebuild (n, d) and each row's
    # margins (n, 2) [packing, gallery] (`search_partners`); None for a fixed schedule.
    anchor: jax.Array | None = None
    margins: jax.Array | None = None
    # int32: refreshes by neighbours' neighbours (`nn_descent`) so far; None when they are off.
    descents: jax.Array | None = None


def _margin(values, size: int, spare: bool, whole_list: bool):
    """Per row, how far the best (or, with `whole_list`, the last) listed similarity lies
    above the best unlisted one (column `size` of `values`, searched as a spare); +inf
    when nothing is left unlisted."""
    if not spare:
        return jnp.full(values.shape[:1], jnp.inf, jnp.float32)
    return values[:, size - 1 if whole_list else 0] - values[:, size]


def search_partners(x, gallery, size: int, gallery_size: int, search, *, spare: bool = False,
                    gallery_spare: bool = False, whole_list: bool = False):
    """Fresh lists of the local rows by exact search (`search.top_k`): `Partners`
    of `size` partners among the rows of x and `gallery_size` gallery rows, and each row's
    margins (rows, 2) (`_margin`: packing, gallery). `spare` / `gallery_spare` say that one
    more partner than listed exists and is searched to measure the margin."""
    values, packing = search.top_k(x, x, size + spare, exclude_self=True)
    margins = [_margin(values, size, spare, whole_list)]
    near_gallery = None
    if gallery is not None:
        g_values, near_gallery = search.top_k(x, gallery, gallery_size + gallery_spare,
                                              exclude_self=False)
        margins.append(_margin(g_values, gallery_size, gallery_spare, False))
        near_gallery = near_gallery[:, :gallery_size]
    else:
        margins.append(jnp.full_like(margins[0], jnp.inf))
    return Partners(packing[:, :size], near_gallery), jnp.stack(margins, axis=1)


# Rounding allowance of the displacement bound: the margins come from the search's matmuls.
# At float32 ("highest") a cosine of unit rows is off by ~1e-7; lower precisions (bf16
# passes on TPU/GPU, "bfloat16") by up to ~2^-8, so their allowance is 2^-7.
ROUNDING = {"highest": 1e-6}
LOW_PRECISION_ROUNDING = 2.0 ** -7


def row_distances(a, b):
    """|a_i - b_i| per row, as a column (rows, 1)."""
    return jnp.sqrt(jnp.sum(jnp.square(a - b), axis=1, keepdims=True))


def may_be_stale(x, anchor, margins, search, precision="highest"):
    """Whether, by the displacement bound, some real row's list may no longer hold what it
    promises (its nearest partner and nearest gallery row; with whole-list margins, its
    whole top K): a scalar, the same on every device (`search.maximum`).

    For unit rows, |<x_i, x_j> - <a_i, a_j>| <= |x_i - a_i| + |x_j - a_j| (a: the rows at
    the rebuild). With d_i = |x_i - a_i| and D its maximum over all rows, a listed partner
    k loses at most d_i + D and an unlisted j gains at most d_i + D, so j can overtake k
    only if 2 (d_i + D) >= margin_i (packing: the gap at the rebuild between k and the best
    unlisted partner). The gallery does not move: 2 d_i >= gallery margin_i. Checked before
    every step, this makes every list the step uses complete.
    """
    valid = search.valid(x)
    d = row_distances(x, anchor)[:, 0]
    if valid is not None:
        d = jnp.where(valid, d, 0.0)
    slack = ROUNDING.get(precision, LOW_PRECISION_ROUNDING)
    far = search.maximum(d)
    stale = ((2.0 * (d + far) + slack >= margins[:, 0])
             | (2.0 * d + slack >= margins[:, 1]))
    if valid is not None:
        stale = stale & valid
    return search.maximum(stale.astype(jnp.float32)) > 0


def fresh(partners, margins=None, anchor=None, *, descending: bool = False) -> NeighborLists:
    """Lists with an empty audit; `margins` and `anchor` (the rows now) for lists rebuilt
    by displacement; with `descending`, a count of refreshes by neighbours' neighbours."""
    zero = jnp.zeros((), jnp.float32)
    count = jnp.zeros((), jnp.int32)
    return NeighborLists(partners.packing, partners.gallery, count, zero, zero, zero, zero,
                         anchor, margins, count if descending else None)


def _missed_share(old, new):
    """Share of rows whose new nearest candidate is not in their old list."""
    return jnp.mean(jnp.logical_not(jnp.any(old == new[:, :1], axis=1)).astype(jnp.float32))


def audited(lists: NeighborLists, partners, count: int, margins=None,
            anchor=None) -> NeighborLists:
    """`partners` as the new lists, auditing the lists they replace over the first `count`
    (real, not padding) rows."""
    missed = _missed_share(lists.packing[:count], partners.packing[:count])
    g_missed = (jnp.zeros((), jnp.float32) if partners.gallery is None
                else _missed_share(lists.gallery[:count], partners.gallery[:count]))
    return fresh(partners, margins, anchor).replace(
        descents=lists.descents,
        rebuilds=lists.rebuilds + 1,
        missed_sum=lists.missed_sum + missed,
        missed_max=jnp.maximum(lists.missed_max, missed),
        gallery_missed_sum=lists.gallery_missed_sum + g_missed,
        gallery_missed_max=jnp.maximum(lists.gallery_missed_max, g_missed))


def descended(lists: NeighborLists, packing) -> NeighborLists:
    """`packing` (refreshed by `nn_descent.descend`) as the packing lists, counted; the
    gallery lists wait for the next exact rebuild."""
    return lists.replace(packing=packing, descents=lists.descents + 1)


def audit(lists: NeighborLists, steps: int | None = None) -> dict[str, float | int]:
    """The audit as plain numbers (for report.json); `steps`: the steps the lists served."""
    rule = "every" if lists.anchor is None else "displacement"
    # Only the replicated counters are fetched: the lists themselves are split by rows, and
    # on several processes no process can fetch all of them.
    lists = jax.device_get(lists.replace(packing=None, gallery=None, anchor=None, margins=None))
    rebuilds = int(lists.rebuilds)
    mean = (lambda s: float(s) / rebuilds if rebuilds else 0.0)
    per_100 = {} if not steps else {"rebuilds_per_100_steps": 100.0 * rebuilds / steps}
    if lists.descents is not None:  # refreshes by neighbours' neighbours between rebuilds
        per_100["descent_refreshes"] = int(lists.descents)
        if steps:
            per_100["descent_refreshes_per_100_steps"] = 100.0 * int(lists.descents) / steps
    return {
        "rebuild": rule,
        "rebuilds_audited": rebuilds,
        **per_100,
        "mean_share_rows_missed": mean(lists.missed_sum),
        "max_share_rows_missed": float(lists.missed_max),
        "gallery_mean_share_rows_missed": mean(lists.gallery_missed_sum),
        "gallery_max_share_rows_missed": float(lists.gallery_missed_max),
    }
