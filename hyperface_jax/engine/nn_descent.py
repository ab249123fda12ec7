"""Neighbour lists refreshed by their neighbours' neighbours (NN-descent), between exact rebuilds.

An exact rebuild (`neighbor_lists.search_partners`) compares every row with all n rows:
n^2 d multiply-adds, however little the rows moved since the last one. A row's new near
partners are most likely near partners of its near partners (Dong, Charikar and Li 2011,
"NN-descent"), so `descend` searches only those, exactly: each row's candidates are its K
listed partners and their own lists (K + K^2 candidates, itself and repeats dropped), their
cosines are gathered dot products (`kernels.gathered`: n K^2 d multiply-adds instead of
n^2 d) and the best K are kept. The current list is among the candidates, so no row's list
gets worse: its k-th best cosine never falls, for every k. A row whose true K nearest are
all among its candidates gets exactly the list an exact search gives.

Memory: rows are taken in chunks (`lax.map`), so the candidate ids and cosines are
O(chunk (K + K^2)) and the gathered rows O(tile (K + K^2) d), never n K^2 d (which is
200 GB at n = 100k, K = 32, d = 512).

Placement: on a mesh each device refreshes the lists of its rows; a listed partner's own
list and a candidate's row are taken from the device that holds them as its block passes
round the ring (`ring.Ring`), as the loss takes its listed partners' rows. On one device
the ring has one block and nothing moves.
"""

import jax.numpy as jnp
from jax import lax

from hyperface_jax.engine import kernels
from hyperface_jax.engine.ring import LOCAL_RING

# Candidate ids and cosines held at once (entries of a chunk's (rows, K + K^2) arrays), and
# gathered floats at once (a tile's (rows, K + K^2, d) partner rows): ~16 MB each.
CHUNK_ENTRIES = 1 << 22
GATHER_FLOATS = 1 << 22


def taken(table, idx, ring=LOCAL_RING):
    """``table[idx]`` for global row indices `idx` into the rows of `table` on every device of
    `ring`: each row is taken from its block as the block passes (one owner each; the other
    blocks add zeros)."""
    rows = table.shape[0]

    def part(block, owner):
        inside, local = ring.locate(idx, owner, rows)
        got = block[local]
        if inside is None:
            return got
        return jnp.where(inside.reshape(inside.shape + (1,) * (got.ndim - idx.ndim)), got, 0)

    def visit(turn, carry):
        block, acc = carry
        block = ring.shift(block)
        return block, acc + part(block, ring.owner(turn))

    _, acc = ring.fold(visit, (table, part(table, ring.me())), start=1)
    return acc


def candidates(own, listed, second):
    """A chunk's candidates, sorted per row: `listed` (rows, K) and their lists `second`
    (rows, K, K), as global indices, and which to drop (the row itself, `own`, and repeats)."""
    c = jnp.sort(jnp.concatenate([listed, second.reshape(listed.shape[0], -1)], axis=1), axis=1)
    repeat = jnp.concatenate([jnp.zeros_like(c[:, :1], bool), c[:, 1:] == c[:, :-1]], axis=1)
    return c, repeat | (c == own[:, None])


def descend(x, packing, ring=LOCAL_RING, *, sample: int | None = None,
            chunk_entries: int = CHUNK_ENTRIES, gather_floats: int = GATHER_FLOATS):
    """One NN-descent refresh of the lists `packing` (rows, K) of the rows x a device holds
    (global indices into the rows of x on every device of `ring`): `(values, indices)`
    (rows, K), each row's K best cosines among its candidates and their global indices, best
    first. `sample`: take only the first (nearest) `sample` of each partner's list (K + K
    sample candidates; None: all K). Padding rows (zeros) keep lists of real rows; their
    values are 0."""
    rows, k = packing.shape
    sample = k if sample is None else min(sample, k)
    width = k + k * sample
    per_chunk = max(1, min(rows, chunk_entries // width))
    tile = max(1, gather_floats // (width * x.shape[1]))
    own = ring.me() * rows + jnp.arange(rows, dtype=jnp.int32)
    chunks = -(-rows // per_chunk)

    def split(a, fill):
        pad = [(0, chunks * per_chunk - rows)] + [(0, 0)] * (a.ndim - 1)
        return jnp.pad(a, pad, constant_values=fill).reshape(chunks, per_chunk, *a.shape[1:])

    def one_chunk(args):
        xc, oc, pc = args
        c, drop = candidates(oc, pc, taken(packing[:, :sample], pc, ring))
        # Dropped slots gather a valid row (the first listed partner) and are then masked.
        s = kernels.gathered(xc, x, jnp.where(drop, pc[:, :1], c), ring, tile)
        values, at = lax.top_k(jnp.where(drop, -jnp.inf, s), k)
        return values, jnp.take_along_axis(c, at, axis=1)

    values, indices = lax.map(one_chunk, (split(x, 0), split(own, -1), split(packing, 0)))
    return values.reshape(-1, k)[:rows], indices.reshape(-1, k)[:rows]
