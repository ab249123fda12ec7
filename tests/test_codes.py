import math

import numpy as np
import pytest

from hyperface_jax.baselines import codes
from hyperface_jax.measure import metrics


@pytest.mark.parametrize("m", [2, 4, 6])
def test_kerdock_bases_orthonormal_and_every_cross_inner_product_is_2_to_minus_m_half(m):
    bases = codes.kerdock_bases(m).astype(np.float64)
    d = 1 << m
    assert bases.shape == (d // 2 + 1, d, d)
    points = bases.reshape(-1, d)
    gram = points @ points.T
    for b in range(bases.shape[0]):
        block = slice(b * d, (b + 1) * d)
        np.testing.assert_allclose(gram[block, block], np.eye(d), atol=1e-6)
        gram[block, block] = 2.0 ** (-m / 2)
    np.testing.assert_allclose(np.abs(gram), 2.0 ** (-m / 2), atol=1e-6)


def test_all_8128_pairs_of_kerdock_forms_at_m8_are_bent():
    # |Walsh transform| of Q_u + Q_v flat at 2^(m/2) = 16 <=> bases u, v of R^256 unbiased.
    signs = 1.0 - 2.0 * codes.kerdock_forms(8).astype(np.float32)
    assert signs.shape == (128, 256)
    u, v = np.triu_indices(128, 1)
    walsh = (signs[u] * signs[v]) @ codes.sylvester_hadamard(256).astype(np.float32)
    np.testing.assert_array_equal(np.abs(walsh), 16.0)


def test_sylvester_hadamard_is_orthogonal():
    h = codes.sylvester_hadamard(64).astype(np.float64)
    np.testing.assert_array_equal(h @ h.T, 64 * np.eye(64))


@pytest.mark.parametrize("d", [8, 32])
def test_hadamard_code_worst_pair_by_the_blockwise_search(d):
    x = codes.hadamard_code(d)
    assert x.shape == (4 * d, d)
    figures = metrics.to_python(metrics.packing_figures(x, tile_size=37))
    assert figures["max_cos"] == pytest.approx(1 / math.sqrt(d), abs=1e-6)


@pytest.mark.parametrize("d", [8, 32])
def test_kerdock_code_size_and_worst_pair_by_the_blockwise_search(d):
    x = codes.kerdock_code(d)
    assert x.shape == (codes.kerdock_code_size(d), d)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    assert len(np.unique(x, axis=0)) == len(x)
    figures = metrics.to_python(metrics.packing_figures(x, tile_size=1000))
    assert figures["max_cos"] == pytest.approx(math.sqrt(2 / d), abs=1e-6)


def test_kerdock_code_in_512d_has_132096_points():
    assert codes.kerdock_code_size(512) == 132_096


@pytest.mark.parametrize("m", [3, 5, 7, 9])
def test_every_gold_word_has_one_of_the_three_gold_correlations(m):
    """The code is linear (a word plus a word is a word), so the 4^m - 1 non-zero words'
    correlations with the zero word are every pairwise correlation: all must be -1 or
    -1 +- 2^((m+1)/2), both extremes present (so no two words are equal: their sum would
    be a non-zero word of correlation 2^m - 1); the b = 0 block is the simplex code."""
    words = codes.gold_words(m)
    length = (1 << m) - 1
    assert words.shape == (4 ** m, length)
    correlation = length - 2 * words[1:].sum(axis=1, dtype=np.int64)
    step = 1 << ((m + 1) // 2)
    assert set(correlation.tolist()) == {-1, -1 + step, -1 - step}
    assert set(correlation[: (1 << m) - 1].tolist()) == {-1}
    assert codes.gold_worst_pair(m) == (step - 1) / length


def test_gold_code_worst_pair_by_the_blockwise_search_and_its_simplex_prefix():
    x = codes.gold_code(32)                               # m = 5: 1,024 points in 31 of 32-D
    assert x.shape == (1024, 32) and not x[:, 31:].any()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    figures = metrics.to_python(metrics.packing_figures(x, tile_size=300))
    assert figures["max_cos"] == pytest.approx(7 / 31, abs=1e-6)
    simplex = x[:32] @ x[:32].T
    np.testing.assert_allclose(simplex[~np.eye(32, dtype=bool)], -1 / 31, atol=1e-6)


def test_the_field_polynomials_are_primitive():
    # x generates GF(2^n)^*: x^(2^n - 1) = 1 and x^((2^n - 1) / p) != 1 for each prime p.
    for n in codes._IRREDUCIBLE:
        order = (1 << n) - 1
        primes = [p for p in range(2, order + 1) if order % p == 0
                  and all(p % q for q in range(2, int(p ** 0.5) + 1))]
        assert codes._gf_pow(2 if n > 1 else 1, order, n) == 1
        assert n == 1 or all(codes._gf_pow(2, order // p, n) != 1 for p in primes)


@pytest.mark.parametrize("n, name, worst", [
    (20, "gold", -1 / 31), (64, "cross-polytope", 0.0), (100, "hadamard", 1 / math.sqrt(32)),
    (128, "hadamard", 1 / math.sqrt(32)), (129, "gold", 7 / 31), (1024, "gold", 7 / 31)])
def test_algebraic_code_prefixes_keep_the_proven_worst_pair(n, name, worst):
    x, got_name, proven = codes.algebraic_code(n, 32)
    assert (x.shape, got_name) == ((n, 32), name)
    assert proven == pytest.approx(worst)
    figures = metrics.to_python(metrics.packing_figures(x))
    assert figures["max_cos"] == pytest.approx(worst, abs=1e-6)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="power-of-two"):
        codes.hadamard_code(48)
    with pytest.raises(ValueError, match="even m"):
        codes.kerdock_bases(3)
    with pytest.raises(ValueError, match="no algebraic code"):
        codes.algebraic_code(1025, 32)
    with pytest.raises(ValueError, match="odd m"):
        codes.gold_words(4)


def test_pack_init_code_starts_on_the_rotated_code_and_refuses_sizes_without_one(
        tmp_path, capsys):
    from hyperface_jax import pack, pack_references

    start = pack_references(100, 32, init="code", steps=0, restarts=2, log=lambda s: None)
    assert start.figures["max_cos"] == pytest.approx(1 / math.sqrt(32), abs=1e-6)  # Hadamard
    hadamard = codes.algebraic_code(100, 32)[0]
    assert np.abs(start.embeddings - hadamard).max() > 0.1    # rotated, not the raw code
    other = pack_references(100, 32, init="code", steps=0, seed=1, log=lambda s: None)
    assert np.abs(other.embeddings - start.embeddings).max() > 0.1
    capsys.readouterr()
    out = tmp_path / "none"
    assert pack.main(["pack", "--init=code", "--num_identities=300", "--dim=16",
                      f"--out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init=code: no algebraic code" in err[0]
    assert not out.exists() or not any(out.iterdir())
