import jax
import numpy as np
import pytest

from hyperface_jax.research import ivf


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n, d, clusters, spread, seed=0):
    """Rows around `clusters` random centres (face embeddings cluster by identity); numpy,
    so the tests compile only what they test."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(clusters, d)))
    label = rng.integers(0, clusters, n)
    return _unit(centres[label] + spread / np.sqrt(d) * rng.normal(size=(n, d)))


def _exact_top_k(x, k):
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


def test_overflow_is_flagged_rebuilt_and_probing_every_cell_finds_the_exact_top_k():
    x = _clustered(600, 8, clusters=3, spread=0.3)
    exact = _exact_top_k(x, 5)
    values, indices, info = ivf.approximate_top_k(x, 5, key=jax.random.key(2), num_cells=9,
                                                  nprobe=9, capacity_factor=0.2)
    assert info["rebuilt_after_overflow"]
    np.testing.assert_array_equal(np.asarray(indices), exact)
    chosen = np.take_along_axis(x @ x.T, exact, axis=1)
    np.testing.assert_allclose(np.asarray(values), chosen, atol=1e-6)

    # The same lists by hand (same shapes: compiled once): the first capacity overflowed
    # and kept what fitted, the rebuilt one holds every row once, in its nearest cell.
    centroids = ivf.spherical_kmeans(x, jax.random.key(2), num_cells=9)
    small = ivf.build_lists(x, centroids, capacity=14)  # ceil(0.2 * 600 / 9)
    kept = int(np.minimum(np.asarray(small.counts), 14).sum())
    assert bool(small.overflow) and int(np.sum(np.asarray(small.members) < 600)) == kept < 600
    lists = ivf.build_lists(x, centroids, capacity=info["capacity"])
    members = np.asarray(lists.members)
    assert not bool(lists.overflow)
    np.testing.assert_array_equal(np.sort(members[members < 600]), np.arange(600))
    cell = np.asarray(ivf.assign_cells(x, centroids))
    for c in range(9):
        assert set(members[c][members[c] < 600]) == set(np.flatnonzero(cell == c))


def test_shipped_settings_reach_recall_095_on_clustered_rows():
    x = _clustered(3000, 32, clusters=60, spread=1.0)
    exact = _exact_top_k(x, 10)
    _, indices, info = ivf.approximate_top_k(x, 10, key=jax.random.key(0))
    assert info["nprobe"] == 8 and info["num_cells"] == 55
    assert ivf.recall(indices, exact) >= 0.95
    assert not np.any(np.asarray(indices) == np.arange(3000)[:, None])  # never itself


def test_bad_settings_are_refused():
    x = np.zeros((50, 4), np.float32)  # refused before any computation
    with pytest.raises(ValueError, match="nprobe"):
        ivf.approximate_top_k(x, 3, key=jax.random.key(0), num_cells=5, nprobe=6)
    with pytest.raises(ValueError, match="k < n"):
        ivf.approximate_top_k(x, 50, key=jax.random.key(0), nprobe=2)
