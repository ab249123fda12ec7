"""The search kernels: each row's nearest, smooth-maximum, top-K and listed partners, blockwise.

A kernel sees the rows x a device holds and, one turn at a time, a *block* of partner rows
(`ring.Ring`): on one device the only block is all rows (a ring of one block), on a mesh
the blocks of every device pass by `lax.ppermute`. The block is the unit: each idea below
has one block function (the rows against one block, named by the block's global offset and
its mask of real rows), one way to combine blocks, and one backward pass, shared by every
placement:

  nearest(x, y, ...)     max_j <x_i, y_j> and its global arg-max; the backward pass is a
                         gather of the partners plus a scatter-add onto them (O(n d), no
                         matrix product), the scatter travelling round the ring
  smooth(x, t, kind)     (1/t) log sum_{j != i} exp(t h(<x_i, x_j>)): per-block logsumexps
                         combined; the backward pass recomputes each tile's softmax weights
  top_k(x, y, k, ...)    each row's k best partners: per-block top-K merged (not
                         differentiated: it builds neighbour lists)
  gathered(x, y, idx)    <x_i, y_{idx[i, k]}> for listed partners, each taken from its block
                         as it passes; the backward pass regathers tile by tile

Inside a block, rows are processed in tiles of `tile_size` rows (memory O(tile x block)).
A dense formulation would materialise the n x n similarities and let autodiff differentiate
`max`; here only the maximum and its arg-max are kept.

Ties: when a row has several exact maxima, dense autodiff splits the gradient between them
and `nearest` gives it all to the lowest global index (as `jnp.argmax` does on one device);
with real-valued data ties have probability zero.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from hyperface_jax.engine.choices import MATMUL_PRECISIONS
from hyperface_jax.engine.ring import LOCAL_RING

DEFAULT_TILE_SIZE = 1024
# Rows per tile by backend: the (tile, m) similarity block should fill the accelerator's
# matrix units but stay a small share of its memory.
TILE_SIZE_BY_BACKEND = {"cpu": 1024, "gpu": 4096, "tpu": 4096}


def default_tile_size(backend: str | None = None) -> int:
    return TILE_SIZE_BY_BACKEND.get(backend or jax.default_backend(), DEFAULT_TILE_SIZE)


def _lax_precision(precision):
    if isinstance(precision, str):
        if precision not in MATMUL_PRECISIONS:
            raise ValueError(f"unknown matmul_precision {precision!r}; choose one of "
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


def _tiles(a: jax.Array, tile_size: int, fill=0):
    """Rows of `a` padded with `fill` to whole tiles: (num_tiles, t, ...) and t."""
    n = a.shape[0]
    t = max(1, min(int(tile_size), n))
    num_tiles = -(-n // t)
    pad = [(0, num_tiles * t - n)] + [(0, 0)] * (a.ndim - 1)
    return jnp.pad(a, pad, constant_values=fill).reshape(num_tiles, t, *a.shape[1:]), t


def _row_ids(n: int, offset, exclude_self: bool):
    """Global indices of n contiguous rows from `offset`, or None (no self pairs)."""
    return offset + jnp.arange(n) if exclude_self else None


def _self_or_padding(row_ids, offset, columns: int, valid):
    """(rows, columns) mask of pairs that never count: a row against itself (its global
    index `row_ids` equals the column's, `offset + j`) and columns outside `valid`."""
    drop = None
    if row_ids is not None:
        drop = row_ids[:, None] == offset + jnp.arange(columns)[None, :]
    if valid is not None:
        drop = ~valid[None, :] if drop is None else drop | ~valid[None, :]
    return drop


def _drop_self_and_padding(s, row_ids, offset, valid):
    """`s` with the pairs that never count at -inf (see `_self_or_padding`). Self pairs are
    one per row, so they are written in place (a scatter of `rows` values) rather than by
    a where over the whole tile, which XLA fuses into the reduction after it and slows
    down."""
    if row_ids is not None:
        local = row_ids - offset
        inside = (local >= 0) & (local < s.shape[1])
        s = s.at[jnp.arange(s.shape[0]), jnp.where(inside, local, s.shape[1])].set(
            -jnp.inf, mode="drop")
    if valid is not None:
        s = jnp.where(valid[None, :], s, -jnp.inf)
    return s


def map_similarity_tiles(x, y, reduce, *, exclude_self: bool = False, row_ids=None, offset=0,
                         columns_valid=None, tile_size: int = DEFAULT_TILE_SIZE,
                         precision=lax.Precision.HIGHEST):
    """`reduce(s, xt)` over row tiles of `x`, where ``s = xt @ y.T`` is the only (tile, m)
    buffer, with pairs that never count at -inf: self pairs (``exclude_self``: x is y; or
    rows whose global index `row_ids` equals a column's, ``offset + j``) and columns
    outside the boolean mask `columns_valid` (padding rows of a sharded array). `reduce`
    returns arrays with a leading axis of the tile's rows, concatenated for the rows of x."""
    n = x.shape[0]
    if exclude_self:
        row_ids = jnp.arange(n)
    tiles, _ = _tiles(x, tile_size)
    ids = None if row_ids is None else _tiles(row_ids, tile_size, fill=-1)[0]

    def one_tile(args):
        xt, it = args
        s = _drop_self_and_padding(similarity(xt, y, precision), it, offset, columns_valid)
        return reduce(s, xt)

    out = lax.map(one_tile, (tiles, ids))
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)


# Exact row maxima and top-K by groups of columns ------------------------------------------
#
# A plain maximum over a (tile, m) block runs at memory speed, but XLA's CPU arg-max (a
# reduction of value-index pairs) and its top-K (a per-row partial sort) cost about a sixth
# and a third of the block's matrix product (1,024 x 10,000 x 512 on this project's CPU).
# So both first take the maximum of each group of `width` adjacent columns, a plain
# reduction, and look at single columns only inside the groups that can hold the answer:
#
#   arg-max: the best group (ties: the lowest), then the best column in it. Same value and
#            index as `jnp.argmax` (the lowest column among ties).
#   top-K:   the K best groups by their maximum, then the top-K of their K * width columns.
#            Exact: a column among the K best has fewer than K columns ahead of it (larger,
#            or equal with a lower index), and each group ahead of its own group holds such
#            a column (its maximum), so its group is among the K best groups. The chosen
#            groups are gathered in column order, so ties resolve to the lowest column, as in
#            `lax.top_k` on the whole row.
#
# Groups need a width that divides m (no padding inside the tile: a pad fused into the
# reduction is slow); when m has no divisor in range the width is 1 and the plain reduction
# runs.

ARGMAX_GROUP = 64  # widest group for the arg-max (one small arg-max over m / 64 groups)


def group_width(m: int, target: float) -> int:
    """The largest divisor of m not above `target` (at least 1)."""
    return max(w for w in range(1, max(1, int(target)) + 1) if m % w == 0)


def top_k_group_width(m: int, k: int) -> int:
    """Groups for a top-`k` of m columns: about sqrt(m / k) wide, so the two small top-Ks
    (over m / width group maxima and over k * width columns) are about the same size."""
    return group_width(m, min(ARGMAX_GROUP, (m / k) ** 0.5))


def _group_maxima(s, width):
    rows, m = s.shape
    groups = s.reshape(rows, m // width, width)
    return groups, jnp.max(groups, axis=2)


def row_argmax(s):
    """``(max_j s_ij, argmax_j s_ij)`` per row, ties to the lowest column (as `jnp.argmax`)."""
    width = group_width(s.shape[1], ARGMAX_GROUP)
    if width == 1:
        j = jnp.argmax(s, axis=1)
        return jnp.take_along_axis(s, j[:, None], axis=1)[:, 0], j
    groups, maxima = _group_maxima(s, width)
    g = jnp.argmax(maxima, axis=1)
    inside = jnp.argmax(jnp.take_along_axis(groups, g[:, None, None], axis=1)[:, 0], axis=1)
    return jnp.max(maxima, axis=1), g * width + inside


def row_top_k(s, k: int):
    """``lax.top_k(s, k)`` (the same values and indices, ties to the lowest column), by
    groups of columns."""
    rows, m = s.shape
    width = top_k_group_width(m, k)
    if width == 1 or m // width < k:
        return lax.top_k(s, k)
    groups, maxima = _group_maxima(s, width)
    best = jnp.sort(lax.top_k(maxima, k)[1], axis=1)  # the k best groups, in column order
    candidates = jnp.take_along_axis(groups, best[:, :, None], axis=1).reshape(rows, k * width)
    values, at = lax.top_k(candidates, k)
    return values, best[jnp.arange(rows)[:, None], at // width] * width + at % width


# Nearest partner ------------------------------------------------------------------------

def nearest_in_block(x, block, *, row_ids=None, offset=0, valid=None,
                     tile_size: int = DEFAULT_TILE_SIZE, precision=lax.Precision.HIGHEST):
    """For each row of x, its largest inner product with a counted row of `block` (see
    `map_similarity_tiles`) and that row's global index, ``offset + j``."""
    def best(s, xt):
        v, j = row_argmax(s)
        if _is_bfloat16(precision):  # exact float32 value of the chosen pair
            return jnp.sum(xt * block[j], axis=1), j
        return v, j

    values, j = map_similarity_tiles(x, block, best, row_ids=row_ids, offset=offset,
                                     columns_valid=valid, tile_size=tile_size,
                                     precision=precision)
    return values, (offset + j).astype(jnp.int32)


def keep_better(best, new):
    """Per row, the better of two (value, index, ...) candidates: the larger value, ties to
    the lower global index (as `jnp.argmax`)."""
    better = (new[0] > best[0]) | ((new[0] == best[0]) & (new[1] < best[1]))
    return tuple(jnp.where(better.reshape(better.shape + (1,) * (a.ndim - 1)), a, b)
                 for a, b in zip(new, best, strict=True))


def nearest_neighbors(x, y, *, exclude_self: bool = False, columns_valid=None,
                      tile_size: int = DEFAULT_TILE_SIZE, precision=lax.Precision.HIGHEST):
    """For each row of `x`, the largest inner product with a row of `y`, and that row's index
    (one device; not differentiable: `nearest` is). With ``exclude_self`` (y is x), row i
    never matches itself."""
    return nearest_in_block(x, y, row_ids=_row_ids(x.shape[0], 0, exclude_self),
                            valid=columns_valid, tile_size=tile_size, precision=precision)


def _nearest_search(x, y, exclude_self, ring, tile_size, precision, count):
    """Per row of x: the best partner among the real rows (global index < count) of y on
    every device of the ring: (value, global index, the partner row)."""
    me, rows = ring.me(), y.shape[0]

    def visit_block(block, owner):
        v, index = nearest_in_block(
            x, block, row_ids=_row_ids(x.shape[0], me * rows, exclude_self),
            offset=owner * rows, valid=ring.real(owner, rows, count), tile_size=tile_size,
            precision=precision)
        return v, index, block[index - owner * rows]

    def visit(turn, carry):
        block, best = carry
        block = ring.shift(block)
        return block, keep_better(best, visit_block(block, ring.owner(turn)))

    _, best = ring.fold(visit, (y, visit_block(y, me)), start=1)
    return best


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def nearest(x, y, exclude_self=False, ring=LOCAL_RING, tile_size=DEFAULT_TILE_SIZE,
            precision=lax.Precision.HIGHEST, count=None):
    """``(max_j <x_i, y_j>, global argmax)`` for the rows of x against the real rows
    (global index < count; None: all) of y on every device of `ring`; differentiable in the
    values. With ``exclude_self``, y is x and row i never matches itself."""
    v, index, _ = _nearest_search(x, y, exclude_self, ring, tile_size, precision, count)
    return v, index


def _nearest_fwd(x, y, exclude_self, ring, tile_size, precision, count):
    v, index, partner = _nearest_search(x, y, exclude_self, ring, tile_size, precision, count)
    return (v, index), (x, y, index, partner)


def _nearest_bwd(exclude_self, ring, tile_size, precision, count, residuals, cotangents):
    """d<x_i, y_j*>/dx_i = y_j* (gathered in the forward pass) and d/dy_j* = x_i, added onto
    row j*: the contributions travel round the ring to the device that holds j*."""
    x, y, index, partner = residuals
    g = cotangents[0][:, None].astype(x.dtype)
    me, rows = ring.me(), y.shape[0]

    def deliver(_, carry):
        contribution, target, dy = carry
        inside, local = ring.locate(target, me, rows)
        if inside is None:
            dy = dy.at[local].add(contribution)
        else:
            dy = dy.at[jnp.where(inside, local, rows)].add(contribution, mode="drop")
        return ring.shift(contribution), ring.shift(target), dy

    _, _, dy = ring.fold(deliver, (g * x, index, jnp.zeros_like(y)))
    return g * partner, dy


nearest.defvjp(_nearest_fwd, _nearest_bwd)


# Smooth maxima over all partners --------------------------------------------------------
#
# For each row i, (1/t) log sum_{j != i} exp(t h(<x_i, x_j>)), a smooth upper bound of
# max_j h that tends to it as the temperature t grows. h is the pair "energy":
#   "logsumexp": h(c) = c                      (soft nearest-neighbour cosine)
#   "riesz":     h(c) = -log |x_i - x_j| = -log(2 - 2c) / 2, so exp(t h) = |x_i - x_j|^-t is
#                the Riesz t-energy of the pair, summed in the log domain (no overflow).
# The backward pass needs the softmax weights of every pair, i.e. two matrix products per
# tile; tiles are recomputed in the backward pass so memory stays O(tile_size * n). When
# one tile holds all rows of a one-block ring its cosines are kept instead (_smooth_fwd).

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


def _energies(xt, ids, block, offset, valid, temperature, kind, precision):
    """Cosines and scaled energies t*h(c) of a tile of rows (global indices `ids`) against
    one block; self pairs and padding columns at -inf."""
    c = similarity(xt, block, precision)
    z = temperature * pair_energy(c, kind)
    return c, jnp.where(_self_or_padding(ids, offset, block.shape[0], valid), -jnp.inf, z)


def _smooth_tiles(x, g, values, ring, tile_size):
    """Row tiles of x, with their global indices and (backward pass) cotangents and values;
    padded rows carry g = 0."""
    n = x.shape[0]
    ids = (_tiles(ring.me() * n + jnp.arange(n), tile_size, fill=-1)[0],)
    rest = () if g is None else (_tiles(g, tile_size)[0], _tiles(values, tile_size)[0])
    return (*ids, _tiles(x, tile_size)[0], *rest)


def _smooth_search(x, temperature, kind, ring, tile_size, precision, count):
    """Per row, log sum_j exp(t h(<x_i, x_j>)) over the real rows of every device's block."""
    n = x.shape[0]
    tiles = _smooth_tiles(x, None, None, ring, tile_size)

    def visit_block(block, owner):
        def one_tile(args):
            ids, xt = args
            _, z = _energies(xt, ids, block, owner * n, ring.real(owner, n, count),
                             temperature, kind, precision)
            return jax.nn.logsumexp(z, axis=1)
        return lax.map(one_tile, tiles).reshape(-1)[:n]

    def visit(turn, carry):
        block, total = carry
        block = ring.shift(block)
        return block, jnp.logaddexp(total, visit_block(block, ring.owner(turn)))

    _, total = ring.fold(visit, (x, visit_block(x, ring.me())), start=1)
    return total


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def smooth(x, temperature, kind="logsumexp", ring=LOCAL_RING, tile_size=DEFAULT_TILE_SIZE,
           precision=lax.Precision.HIGHEST, count=None):
    """(1/t) log sum_{j != i} exp(t h(<x_i, x_j>)) for every row i of x against the real rows
    of x on every device of `ring`; see the comment above."""
    return _smooth_search(x, temperature, kind, ring, tile_size, precision, count) / temperature


def _one_block_in_one_tile(x, ring, tile_size) -> bool:
    return ring.size == 1 and _tiles(x, tile_size)[0].shape[0] == 1


def _smooth_fwd(x, temperature, kind, ring, tile_size, precision, count):
    if _one_block_in_one_tile(x, ring, tile_size):
        # One tile holds every pair: keep its cosines for the backward pass, which then
        # needs one product, (W + W^T) X, instead of a recomputed tile and two products
        # (2 products a step instead of 4; memory n^2 floats, which the tile already is).
        n = x.shape[0]
        c, z = _energies(x, jnp.arange(n), x, 0, ring.real(0, n, count), temperature, kind,
                         precision)
        values = jax.nn.logsumexp(z, axis=1) / temperature
        return values, (x, temperature, values, c)
    values = smooth(x, temperature, kind, ring, tile_size, precision, count)
    return values, (x, temperature, values, None)


def _smooth_bwd(kind, ring, tile_size, precision, count, residuals, g):
    """d value_i / d c_ij = softmax_j(z_ij) h'(c_ij), block by block round the ring: the
    rows' own gradient stays here, each visiting block's gradient travels with it and is
    home after `size` shifts."""
    x, temperature, values, c = residuals
    n, d = x.shape
    if c is not None:
        z = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, temperature * pair_energy(c, kind))
        w = jnp.exp(z - temperature * values[:, None]) * _pair_energy_slope(c, kind) * g[:, None]
        return _dot(w + w.T, x, precision), jnp.zeros_like(temperature)
    tiles = _smooth_tiles(x, g, values, ring, tile_size)

    def visit(turn, carry):
        block, d_block, dx = carry
        owner = ring.owner(turn)
        real = ring.real(owner, n, count)

        def one_tile(d_block, args):
            ids, xt, gt, vt = args
            c, z = _energies(xt, ids, block, owner * n, real, temperature, kind, precision)
            w = jnp.exp(z - temperature * vt[:, None]) * _pair_energy_slope(c, kind) * gt[:, None]
            return d_block + _dot(w.T, xt, precision), _dot(w, block, precision)

        d_block, dx_tiles = lax.scan(one_tile, d_block, tiles)
        dx = dx + dx_tiles.reshape(-1, d)[:n]
        return ring.shift(block), ring.shift(d_block), dx

    _, d_home, dx = ring.fold(visit, (x, jnp.zeros_like(x), jnp.zeros_like(x)))
    return dx + d_home, jnp.zeros_like(temperature)


smooth.defvjp(_smooth_fwd, _smooth_bwd)


# Top-K partners ---------------------------------------------------------------------------

def top_k(x, y, k: int, exclude_self: bool = False, ring=LOCAL_RING,
          tile_size: int = DEFAULT_TILE_SIZE, precision="highest", count=None):
    """`(values, indices)` (rows, k): each row's k largest inner products with the real rows
    of y on every device of `ring` and their global indices, best first."""
    me, rows = ring.me(), y.shape[0]
    per_block = min(k, rows)

    def visit_block(block, owner):
        v, j = map_similarity_tiles(
            x, block, lambda s, xt: row_top_k(s, per_block),
            row_ids=_row_ids(x.shape[0], me * rows, exclude_self), offset=owner * rows,
            columns_valid=ring.real(owner, rows, count), tile_size=tile_size,
            precision=precision)
        return v, (owner * rows + j).astype(jnp.int32)

    def merge(best, new):
        values = jnp.concatenate([best[0], new[0]], axis=1)
        indices = jnp.concatenate([best[1], new[1]], axis=1)
        values, at = lax.top_k(values, k)
        return values, jnp.take_along_axis(indices, at, axis=1)

    def visit(turn, carry):
        block, best = carry
        block = ring.shift(block)
        return block, merge(best, visit_block(block, ring.owner(turn)))

    v, j = visit_block(y, me)
    pad = k - per_block  # fewer rows per block than k: fill with -inf until merged
    first = (jnp.pad(v, ((0, 0), (0, pad)), constant_values=-jnp.inf),
             jnp.pad(j, ((0, 0), (0, pad))))
    _, best = ring.fold(visit, (y, first), start=1)
    return best


# Similarities to listed partners ------------------------------------------------------------

def gathered_in_block(x, block, idx, tile_size=DEFAULT_TILE_SIZE):
    """``s[i, k] = <x_i, block_{idx[i, k]}>`` in float32, tile by tile."""
    n = x.shape[0]
    xs, _ = _tiles(x, tile_size)
    ids, _ = _tiles(idx, tile_size)
    s = lax.map(lambda a: jnp.einsum("td,tkd->tk", a[0], block[a[1]],
                                     precision=lax.Precision.HIGHEST), (xs, ids))
    return s.reshape(-1, idx.shape[1])[:n]


def gathered_in_block_vjp(x, block, idx, g, tile_size=DEFAULT_TILE_SIZE):
    """The cotangents (dx, d_block) of `gathered_in_block` for the cotangent `g`: partners
    regathered tile by tile (no (n, K, d) residual)."""
    n = x.shape[0]
    xs, _ = _tiles(x, tile_size)
    ids, _ = _tiles(idx, tile_size)
    gs, _ = _tiles(g.astype(x.dtype), tile_size)  # padded rows carry g = 0

    def one_tile(d_block, a):
        xt, it, gt = a
        dx_t = jnp.einsum("tk,tkd->td", gt, block[it], precision=lax.Precision.HIGHEST)
        d_block = d_block.at[it.reshape(-1)].add(
            (gt[:, :, None] * xt[:, None, :]).reshape(-1, x.shape[1]))
        return d_block, dx_t

    d_block, dx = lax.scan(one_tile, jnp.zeros_like(block), (xs, ids, gs))
    return dx.reshape(-1, x.shape[1])[:n], d_block


def _gathered_part(x, block, idx, owner, ring, tile_size):
    inside, local = ring.locate(idx, owner, block.shape[0])
    s = gathered_in_block(x, block, local, tile_size)
    return s if inside is None else jnp.where(inside, s, 0.0)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def gathered(x, y, idx, ring=LOCAL_RING, tile_size=DEFAULT_TILE_SIZE):
    """``<x_i, y_{idx[i, k]}>`` for the rows of x and global indices `idx` into the rows of
    y on every device of `ring`: each partner is taken from its block as the block passes.
    Differentiable in x and y."""
    def visit(turn, carry):
        block, s = carry
        block = ring.shift(block)
        return block, s + _gathered_part(x, block, idx, ring.owner(turn), ring, tile_size)

    first = _gathered_part(x, y, idx, ring.me(), ring, tile_size)
    _, s = ring.fold(visit, (y, first), start=1)
    return s


def _gathered_fwd(x, y, idx, ring, tile_size):
    return gathered(x, y, idx, ring, tile_size), (x, y, idx)


def _gathered_bwd(ring, tile_size, residuals, g):
    """Each block collects the gradient of its rows as it travels; home after `size`
    shifts."""
    x, y, idx = residuals

    def visit(turn, carry):
        block, d_block, dx = carry
        inside, local = ring.locate(idx, ring.owner(turn), block.shape[0])
        gk = g if inside is None else jnp.where(inside, g, 0.0)
        dx_k, d_block_k = gathered_in_block_vjp(x, block, local, gk, tile_size)
        return ring.shift(block), ring.shift(d_block + d_block_k), dx + dx_k

    _, d_home, dx = ring.fold(visit, (y, jnp.zeros_like(y), jnp.zeros_like(x)))
    return dx, d_home, None


gathered.defvjp(_gathered_fwd, _gathered_bwd)
