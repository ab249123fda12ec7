"""Packing figures estimated from a random sample of rows, for sizes where the exact
all-pairs search is out of reach (1M x 512 is ~1e15 flops).

A simple random sample of s rows (without replacement) is searched exactly against all n
rows: every sampled row gets its true nearest-neighbour cosine nn_i. Memory is
O(s x tile_size) (columns are visited tile by tile), work O(s n d).

What the sample says, and how sure it is (`estimate_figures`):

- Mean nearest-neighbour cosine: the sample mean of nn_i, with a Student-t interval
  including the finite-population correction sqrt((n - s) / (n - 1)). The n values nn_i
  are fixed numbers and only the sample is random, so this is the textbook interval of
  simple random sampling (it needs s large enough for the central limit theorem; s >= 100
  is the usual rule).
- Worst pair: the sample maximum is an exact *lower bound* of the true worst pair max_i nn_i,
  never an estimate that could be too high. No upper bound on the *value* can come from a
  sample without assumptions on the configuration (one pair of rows could sit anywhere),
  and a bootstrap of a maximum is known to be inconsistent, so none is given. What the
  sample does bound, exactly, is:
    * the chance that the lower bound *is* the worst pair: the worst pair's two rows both
      have nn = max, and the bound is exact as soon as either was sampled, which happens
      with probability 1 - (n-s)(n-s-1) / (n(n-1)) (about 2s/n);
    * how many rows can lie above it: with confidence c, fewer than a fraction
      1 - (1 - c)^(1/s) of the rows have nn above the sample maximum (the sample max is the
      top order statistic of s draws; sampling without replacement only tightens this).
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hyperface_jax.engine import kernels

DEFAULT_CONFIDENCE = 0.99


@partial(jax.jit, static_argnames=("tile_size", "count", "exclude_self"))
def sample_nearest(x: jax.Array, rows: jax.Array, *,
                   tile_size: int = kernels.DEFAULT_TILE_SIZE, count: int | None = None,
                   queries: jax.Array | None = None,
                   exclude_self: bool = True) -> tuple[jax.Array, jax.Array]:
    """Exact nearest-neighbour cosine and partner of x[rows] among the first `count` rows
    of x (default all; the rest is padding), itself excluded, visiting x in column tiles:
    the only buffer is (len(rows), tile_size). With `queries` (and exclude_self=False),
    those rows are searched against x instead (e.g. sampled rows against a gallery)."""
    n = x.shape[0] if count is None else count
    t = max(1, min(int(tile_size), n))
    num_tiles = -(-n // t)
    queries = x[rows] if queries is None else queries

    def visit(best, tile_index):
        # Tiles are slices of x, the last one shifted back to end at row n: no padded copy
        # of x (2 GB at 1M x 512); a column seen twice does not change a maximum. Each tile
        # is a block of the nearest-partner kernel, combined as the ring combines blocks.
        start = jnp.minimum(tile_index * t, n - t)
        block = lax.dynamic_slice_in_dim(x, start, t)
        found = kernels.nearest_in_block(queries, block, row_ids=rows if exclude_self else None,
                                         offset=start, tile_size=queries.shape[0])
        return kernels.keep_better(best, found), None

    start = (jnp.full(rows.shape, -jnp.inf, x.dtype), jnp.zeros(rows.shape, jnp.int32))
    best, _ = lax.scan(visit, start, jnp.arange(num_tiles))
    return best


def draw_sample(key: jax.Array, n: int, sample_size: int) -> jax.Array:
    """`sample_size` distinct row indices, uniformly at random."""
    if not 2 <= sample_size <= n:
        raise ValueError(f"need 2 <= sample size <= n = {n}, got {sample_size}")
    return jax.random.choice(key, n, (sample_size,), replace=False).astype(jnp.int32)


def estimate_figures(x: jax.Array, key: jax.Array, *, sample_size: int,
                     confidence: float = DEFAULT_CONFIDENCE,
                     tile_size: int = kernels.DEFAULT_TILE_SIZE) -> dict:
    """Worst pair and mean nearest-neighbour cosine of `x` from `sample_size` random rows,
    with the statements explained in the module docstring. Plain JSON-ready values."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rows = draw_sample(key, x.shape[0], sample_size)
    return summarize_rows(x, rows, confidence=confidence, tile_size=tile_size)


def summarize_rows(x: jax.Array, rows: jax.Array, *, count: int | None = None,
                   confidence: float = DEFAULT_CONFIDENCE,
                   tile_size: int = kernels.DEFAULT_TILE_SIZE) -> dict:
    """`summarize` of the sampled `rows` of x (its first `count` rows real, default all),
    each searched exactly, naming the pair behind the worst-pair lower bound."""
    nn, partner = jax.device_get(sample_nearest(x, rows, tile_size=tile_size, count=count))
    worst = int(np.argmax(nn))
    return summarize(np.asarray(nn, np.float64), x.shape[0] if count is None else count,
                     confidence=confidence,
                     worst_pair=(int(np.asarray(rows)[worst]), int(partner[worst])))


def summarize(nn: np.ndarray, n: int, *, confidence: float = DEFAULT_CONFIDENCE,
              worst_pair: tuple[int, int] | None = None) -> dict:
    """The estimates from the exact nearest-neighbour cosines `nn` of s rows sampled
    without replacement from n."""
    from scipy import stats  # here, not at the top: ~1 s of every CLI's start-up

    s = len(nn)
    mean = float(np.mean(nn))
    finite_population = math.sqrt((n - s) / (n - 1)) if n > 1 else 0.0
    half_width = (float(stats.t.ppf(0.5 + confidence / 2, s - 1))
                  * float(np.std(nn, ddof=1)) / math.sqrt(s) * finite_population)
    return {
        "estimated": True,
        "method": (f"exact search of {s} random rows (without replacement) against all {n} "
                   "rows"),
        "sample_size": s,
        "n": n,
        "confidence": confidence,
        "mean_nn_cos": mean,
        "mean_nn_cos_interval": [mean - half_width, mean + half_width],
        "max_cos_lower_bound": float(np.max(nn)),
        "max_cos_worst_pair_in_sample": list(worst_pair) if worst_pair else None,
        "probability_lower_bound_is_exact_at_least": 1.0 - (n - s) * (n - s - 1) / (n * (n - 1)),
        "fraction_of_rows_above_lower_bound_at_most": 1.0 - (1.0 - confidence) ** (1.0 / s),
    }
