import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperface_jax.engine import kernels, sphere
from hyperface_jax.measure import estimates

N, D, SAMPLE = 20_000, 32, 300


@pytest.fixture(scope="module")
def cloud():
    """20k random unit rows in 32-D and their exact nearest-neighbour cosines."""
    x = sphere.random_unit_vectors(jax.random.key(7), N, D)
    nn, partner = kernels.nearest_neighbors(x, x, exclude_self=True, tile_size=4096)
    return x, np.asarray(nn, np.float64), np.asarray(partner)


def test_sample_search_equals_the_exact_search_on_the_sampled_rows(cloud):
    x, nn, partner = cloud
    rows = estimates.draw_sample(jax.random.key(3), N, 257)
    assert len(np.unique(np.asarray(rows))) == 257
    values, partners = estimates.sample_nearest(x, rows, tile_size=999)  # ragged last tile
    np.testing.assert_allclose(np.asarray(values), nn[np.asarray(rows)], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(partners), partner[np.asarray(rows)])


def test_intervals_hold_the_exact_figures_in_19_of_20_seeds(cloud):
    x, nn, _ = cloud
    true_mean, true_max = nn.mean(), nn.max()
    mean_covered = above_covered = 0
    for seed in range(20):
        rows = np.asarray(estimates.draw_sample(jax.random.key(seed), N, SAMPLE))
        e = estimates.summarize(nn[rows], N)
        lo, hi = e["mean_nn_cos_interval"]
        mean_covered += lo <= true_mean <= hi
        assert e["max_cos_lower_bound"] <= true_max  # a bound, in every seed
        above = np.mean(nn > e["max_cos_lower_bound"])
        above_covered += above <= e["fraction_of_rows_above_lower_bound_at_most"]
    assert mean_covered >= 19
    assert above_covered >= 19


def test_estimate_figures_from_the_sample_search_match_the_summary_of_exact_values(cloud):
    x, nn, partner = cloud
    key = jax.random.key(11)
    e = estimates.estimate_figures(x, key, sample_size=SAMPLE, tile_size=4096)
    rows = np.asarray(estimates.draw_sample(key, N, SAMPLE))
    expected = estimates.summarize(nn[rows], N)
    assert e["mean_nn_cos"] == pytest.approx(expected["mean_nn_cos"], abs=1e-6)
    assert e["max_cos_lower_bound"] == pytest.approx(expected["max_cos_lower_bound"], abs=1e-6)
    i, j = e["max_cos_worst_pair_in_sample"]
    assert float(jnp.dot(x[i], x[j])) == pytest.approx(e["max_cos_lower_bound"], abs=1e-6)
    assert e["estimated"] is True
    assert e["probability_lower_bound_is_exact_at_least"] == pytest.approx(
        1 - (N - SAMPLE) * (N - SAMPLE - 1) / (N * (N - 1)))


def test_a_planted_worst_pair_is_found_when_one_of_its_rows_is_sampled():
    x = sphere.random_unit_vectors(jax.random.key(0), 500, 16)
    x = x.at[123].set(sphere.normalize_rows(x[45:46] + 0.01)[0])
    e = estimates.summarize(
        np.asarray(estimates.sample_nearest(x, jnp.array([123, 7, 300]))[0]), 500)
    assert e["max_cos_lower_bound"] > 0.999


def test_bad_sample_sizes_are_refused():
    with pytest.raises(ValueError, match="sample size"):
        estimates.draw_sample(jax.random.key(0), 10, 11)
