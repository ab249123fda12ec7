import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperface_jax import ivf, sphere
from hyperface_jax.neighbor_lists import top_k_neighbors


def _clustered(n, d, clusters, spread, seed=0):
    """Rows around `clusters` random centres (face embeddings cluster by identity)."""
    keys = jax.random.split(jax.random.key(seed), 3)
    centres = sphere.random_unit_vectors(keys[0], clusters, d)
    label = jax.random.randint(keys[1], (n,), 0, clusters)
    noise = spread / np.sqrt(d) * jax.random.normal(keys[2], (n, d))
    return sphere.normalize_rows(centres[label] + noise)


def test_probing_every_cell_finds_the_exact_top_k():
    x = sphere.random_unit_vectors(jax.random.key(1), 600, 8)
    exact = top_k_neighbors(x, x, 5, exclude_self=True)
    values, indices, info = ivf.approximate_top_k(x, 5, key=jax.random.key(2), num_cells=9,
                                                  nprobe=9)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(exact))
    chosen = jnp.take_along_axis(x @ x.T, exact, axis=1)
    np.testing.assert_allclose(np.asarray(values), np.asarray(chosen), atol=1e-6)


def test_shipped_settings_reach_recall_095_on_clustered_rows():
    x = _clustered(3000, 32, clusters=60, spread=1.0)
    exact = top_k_neighbors(x, x, 10, exclude_self=True)
    _, indices, info = ivf.approximate_top_k(x, 10, key=jax.random.key(0))
    assert info["nprobe"] == 8 and info["num_cells"] == 55
    assert ivf.recall(indices, exact) >= 0.95
    assert not np.any(np.asarray(indices) == np.arange(3000)[:, None])  # never itself


def test_overflowing_cells_are_flagged_and_the_driver_rebuilds_them():
    x = _clustered(500, 8, clusters=3, spread=0.3)
    centroids = ivf.spherical_kmeans(x, jax.random.key(0), num_cells=10)
    lists = ivf.build_lists(x, centroids, capacity=5)  # the driver's first capacity below
    assert bool(lists.overflow) and int(lists.counts.sum()) == 500
    kept = int(np.minimum(np.asarray(lists.counts), 5).sum())  # 5 slots kept per cell
    assert int(np.sum(np.asarray(lists.members) < 500)) == kept < 500
    exact = top_k_neighbors(x, x, 4, exclude_self=True)
    _, indices, info = ivf.approximate_top_k(x, 4, key=jax.random.key(0), num_cells=10,
                                             nprobe=10, capacity_factor=0.1)
    assert info["rebuilt_after_overflow"]
    assert ivf.recall(indices, exact) == 1.0


def test_lists_hold_every_row_once_when_nothing_overflows():
    x = sphere.random_unit_vectors(jax.random.key(3), 300, 6)
    centroids = ivf.spherical_kmeans(x, jax.random.key(0), num_cells=7)
    lists = ivf.build_lists(x, centroids, capacity=300)
    members = np.asarray(lists.members)
    assert not bool(lists.overflow)
    np.testing.assert_array_equal(np.sort(members[members < 300]), np.arange(300))
    cell = np.asarray(ivf.assign_cells(x, centroids))
    for c in range(7):
        assert set(members[c][members[c] < 300]) == set(np.flatnonzero(cell == c))


def test_bad_settings_are_refused():
    x = sphere.random_unit_vectors(jax.random.key(0), 50, 4)
    with pytest.raises(ValueError, match="nprobe"):
        ivf.approximate_top_k(x, 3, key=jax.random.key(0), num_cells=5, nprobe=6)
    with pytest.raises(ValueError, match="k < n"):
        ivf.approximate_top_k(x, 50, key=jax.random.key(0), nprobe=2)
