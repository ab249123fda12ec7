"""Approximate neighbour lists: inverted lists over spherical k-means cells, in JAX.

Rows are assigned to the nearest of C centroids (spherical k-means: centroids are
normalised means of their cells). Each cell keeps the indices of its rows in a fixed-size
slot array (static shapes, so it compiles once and runs on every backend; a row beyond a
cell's capacity is dropped and the `overflow` flag is set, which the host checks and then
rebuilds with a larger capacity, as jax-md's neighbour lists do). A row's candidates are the
rows of the `nprobe` cells whose centroids are nearest to its own cell's centroid (its own
cell first): all rows of one cell share their candidates, so one cell's search is a single
(capacity x nprobe*capacity) matrix product. Work is ~n * nprobe * capacity * d instead of
the exact search's n^2 d.

This is an approximation; its recall (the share of each row's exact top-K found) depends on
the data: high where rows cluster (real face embeddings, low intrinsic dimension), low for
near-uniform points in high dimension, where a row's nearest neighbours are barely nearer
to its centroid than any other row (docs/frontier.md gives measured figures).
"""

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hyperface_jax.engine import kernels


class InvertedLists(NamedTuple):
    centroids: jax.Array  # (C, d) unit rows
    members: jax.Array    # (C, capacity) int32 row indices; n marks an empty slot
    counts: jax.Array     # (C,) int32 rows assigned to each cell (may exceed capacity)
    overflow: jax.Array   # bool: some cell had more rows than slots (rows were dropped)


def assign_cells(x: jax.Array, centroids: jax.Array,
                 tile_size: int = kernels.DEFAULT_TILE_SIZE) -> jax.Array:
    """Index of each row's nearest centroid (blockwise, no n x C matrix beyond a tile)."""
    return kernels.nearest_neighbors(x, centroids, tile_size=tile_size)[1]


@partial(jax.jit, static_argnames=("num_cells", "iterations", "tile_size"))
def spherical_kmeans(x: jax.Array, key: jax.Array, *, num_cells: int, iterations: int = 10,
                     tile_size: int = kernels.DEFAULT_TILE_SIZE) -> jax.Array:
    """(num_cells, d) centroids: random distinct rows, then Lloyd steps with normalised
    means; a cell that empties keeps its previous centroid."""
    n = x.shape[0]
    start = x[jax.random.choice(key, n, (num_cells,), replace=False)]

    def step(centroids, _):
        cell = assign_cells(x, centroids, tile_size)
        sums = jax.ops.segment_sum(x, cell, num_segments=num_cells)
        norms = jnp.linalg.norm(sums, axis=1, keepdims=True)
        moved = sums / jnp.maximum(norms, 1e-12)
        return jnp.where(norms > 1e-12, moved, centroids), None

    centroids, _ = lax.scan(step, start, None, length=iterations)
    return centroids


@partial(jax.jit, static_argnames=("capacity", "tile_size"))
def build_lists(x: jax.Array, centroids: jax.Array, *, capacity: int,
                tile_size: int = kernels.DEFAULT_TILE_SIZE) -> InvertedLists:
    """Each row in the slot array of its nearest centroid's cell."""
    n, num_cells = x.shape[0], centroids.shape[0]
    members, counts = _slots(assign_cells(x, centroids, tile_size), num_cells, capacity, n)
    return InvertedLists(centroids, members, counts, jnp.max(counts) > capacity)


def nearest_cells(x: jax.Array, centroids: jax.Array, nprobe: int,
                  tile_size: int = kernels.DEFAULT_TILE_SIZE) -> jax.Array:
    """(n, nprobe) indices of each row's nearest centroids, nearest first."""
    return kernels.map_similarity_tiles(x, centroids, lambda s, xt: lax.top_k(s, nprobe)[1],
                                          tile_size=tile_size).astype(jnp.int32)


def _slots(cell: jax.Array, num_cells: int, capacity: int, empty: int):
    """(num_cells, capacity) slot array of the entries of each cell (entry ids are the
    positions in `cell`; `empty` marks a free slot), and the count per cell."""
    order = jnp.argsort(cell, stable=True)
    counts = jnp.bincount(cell, length=num_cells).astype(jnp.int32)
    starts = jnp.cumsum(counts) - counts
    slot = jnp.arange(cell.shape[0]) - starts[cell[order]]  # rank within the cell
    slots = jnp.full((num_cells, capacity), empty, jnp.int32)
    return slots.at[cell[order], slot].set(order.astype(jnp.int32), mode="drop"), counts


@partial(jax.jit, static_argnames=("k", "nprobe", "query_capacity", "tile_size"))
def search_lists(x: jax.Array, lists: InvertedLists, *, k: int, nprobe: int,
                 query_capacity: int,
                 tile_size: int = kernels.DEFAULT_TILE_SIZE):
    """Each row's k best candidates among the rows of its `nprobe` nearest cells: cosines
    (n, k) and indices (n, k), best first, self excluded (slots beyond the candidates
    found hold -inf and index n), and a flag: some cell was probed by more than
    `query_capacity` rows (their probes of it were dropped; rebuild larger).

    Cell-major, so every product is dense: cell c is searched once, by all the rows that
    probe it, as one (query_capacity x capacity) product; each row then merges its nprobe
    partial top-k lists."""
    n = x.shape[0]
    num_cells, capacity = lists.members.shape
    hi = lax.Precision.HIGHEST
    probes = nearest_cells(x, lists.centroids, nprobe, tile_size)        # (n, nprobe)
    entries = n * nprobe                                                 # (row, probe) pairs
    queries, query_counts = _slots(probes.reshape(-1), num_cells, query_capacity, entries)
    padded = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])  # row n: empty slot
    kc = min(k, capacity)

    def one_cell(args):
        entry, members = args
        rows = jnp.where(entry < entries, entry // nprobe, n)
        s = kernels.similarity(padded[rows], padded[members], hi)
        invalid = (members[None, :] == n) | (members[None, :] == rows[:, None])
        values, at = lax.top_k(jnp.where(invalid, -jnp.inf, s), kc)
        return values, jnp.where(jnp.isfinite(values), members[at], n)

    values, indices = lax.map(one_cell, (queries, lists.members))
    flat = queries.reshape(-1)   # scatter to (row, probe) entries; empty slots are dropped
    per_entry_values = jnp.full((entries, kc), -jnp.inf, x.dtype).at[flat].set(
        values.reshape(-1, kc), mode="drop")
    per_entry_indices = jnp.full((entries, kc), n, jnp.int32).at[flat].set(
        indices.reshape(-1, kc).astype(jnp.int32), mode="drop")
    merged_values, at = lax.top_k(per_entry_values.reshape(n, nprobe * kc), min(k, nprobe * kc))
    merged_indices = jnp.take_along_axis(per_entry_indices.reshape(n, nprobe * kc), at, axis=1)
    pad = k - merged_values.shape[1]
    if pad:
        merged_values = jnp.pad(merged_values, ((0, 0), (0, pad)), constant_values=-jnp.inf)
        merged_indices = jnp.pad(merged_indices, ((0, 0), (0, pad)), constant_values=n)
    return merged_values, merged_indices, jnp.max(query_counts) > query_capacity


def default_num_cells(n: int) -> int:
    return max(1, round(math.sqrt(n)))


def approximate_top_k(x: jax.Array, k: int, *, key: jax.Array, num_cells: int = 0,
                      nprobe: int = 8, iterations: int = 10, capacity_factor: float = 1.5,
                      tile_size: int = kernels.DEFAULT_TILE_SIZE):
    """Host driver: k-means, lists, search; rebuilds the lists with the largest cell's size
    as capacity when a cell overflowed. Returns (values, indices, info)."""
    n = x.shape[0]
    num_cells = num_cells or default_num_cells(n)
    if not 1 <= nprobe <= num_cells <= n:
        raise ValueError(f"need 1 <= nprobe <= num_cells <= n, got nprobe={nprobe}, "
                         f"num_cells={num_cells}, n={n}")
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < n = {n}, got k={k}")
    centroids = spherical_kmeans(x, key, num_cells=num_cells, iterations=iterations,
                                 tile_size=tile_size)
    capacity = max(1, math.ceil(capacity_factor * n / num_cells))
    lists = build_lists(x, centroids, capacity=capacity, tile_size=tile_size)
    rebuilt = bool(lists.overflow)
    if rebuilt:  # as jax-md: reallocate to the size seen, and redo
        capacity = _round_up(int(jnp.max(lists.counts)), 8)
        lists = build_lists(x, centroids, capacity=capacity, tile_size=tile_size)
    query_capacity = max(1, math.ceil(capacity_factor * n * nprobe / num_cells))
    values, indices, overflow = search_lists(x, lists, k=k, nprobe=nprobe,
                                             query_capacity=query_capacity, tile_size=tile_size)
    if bool(overflow):
        counts = jnp.bincount(nearest_cells(x, centroids, nprobe, tile_size).reshape(-1),
                              length=num_cells)
        query_capacity = _round_up(int(jnp.max(counts)), 8)
        values, indices, overflow = search_lists(
            x, lists, k=k, nprobe=nprobe, query_capacity=query_capacity, tile_size=tile_size)
        rebuilt = True
    if bool(lists.overflow) or bool(overflow):
        raise RuntimeError("inverted lists still overflow after a rebuild (a bug)")
    info = {"num_cells": num_cells, "nprobe": nprobe, "capacity": capacity,
            "query_capacity": query_capacity, "rebuilt_after_overflow": rebuilt,
            "largest_cell": int(jnp.max(lists.counts))}
    return values, indices, info


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def recall(approximate: jax.Array, exact: jax.Array) -> float:
    """Share of the exact top-K indices (n, K) found in the approximate lists (n, K')."""
    a, e = np.asarray(approximate), np.asarray(exact)
    found = (e[:, :, None] == a[:, None, :]).any(axis=2)
    return float(found.mean())

