"""Packing quality: the bound on the worst pair, and known optimal codes from random starts."""

import math

import numpy as np
import pytest

from hyperface_jax import pack
from hyperface_jax.measure.bounds import bound_max_cos, levenshtein_bound


@pytest.mark.parametrize("n,d,expected", [
    (12, 3, 1 / math.sqrt(5)),  # icosahedron: attains Levenshtein's bound
    (16, 5, 1 / 5),  # Clebsch configuration
    (27, 6, 1 / 4),  # Schlaefli configuration
    (56, 7, 1 / 3),  # Gosset
    (240, 8, 1 / 2),  # E8 roots
    (196560, 24, 1 / 2),  # Leech lattice minimal vectors
    (4, 3, -1 / 3), (17, 16, -1 / 16),  # simplices
    (6, 3, 0.0), (128, 64, 0.0), (100, 64, 0.0),  # Rankin
    (7, 2, math.cos(2 * math.pi / 7)),  # heptagon
])
def test_bound_on_the_worst_pair_matches_known_values(n, d, expected):
    assert bound_max_cos(n, d) == pytest.approx(expected, abs=1e-9)


def test_bound_grows_with_n_and_sits_below_the_24_cell():
    values = [bound_max_cos(n, 512) for n in (1025, 2000, 10_000, 100_000)]
    assert all(0 < a < b for a, b in zip(values, values[1:]))
    assert 0.45 < bound_max_cos(24, 4) < 0.5  # the 24-cell (0.5) is not tight
    # Levenshtein's function counts the points it allows: 2d at s = 0, d + 1 at s = -1/d.
    assert levenshtein_bound(10, 0.0) == pytest.approx(20)
    assert levenshtein_bound(10, -0.1) == pytest.approx(11)


@pytest.mark.parametrize("n,d,restarts,optimum", [
    (12, 3, 1, 1 / math.sqrt(5)),  # icosahedron
    (24, 4, 32, 0.5),  # 24-cell: a few per cent of random starts reach it
    (6, 5, 1, -1 / 5),  # simplex
    (17, 16, 1, -1 / 16),  # simplex
    (128, 64, 1, 0.0),  # cross-polytope
])
def test_known_optimal_codes_from_random_starts(tmp_path, n, d, restarts, optimum):
    code = pack.main(["pack", "--flagfile=configs/spherical_codes.flags",
                      f"--out_dir={tmp_path}", f"--num_identities={n}", f"--dim={d}",
                      f"--restarts={restarts}", "--progress=false"])
    assert code == 0
    x = np.load(tmp_path / "embeddings.npy").astype(np.float64)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    assert s.max() <= optimum + 1e-3
    assert s.max() >= bound_max_cos(n, d) - 1e-5
