"""Neighbour lists refreshed by their neighbours' neighbours (engine/nn_descent.py): never
worse than the list they replace, exact where the true neighbours are candidates, most true
neighbours recovered after the points move, and bitwise resumable in a pack run. The same
on 1, 2 and 4 devices: tests/test_sharding.py's listed features run with it."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from hyperface_jax import pack
from hyperface_jax.engine import kernels, nn_descent, sphere

K = 8


def _moved(n, d, noise, seed):
    """Unit rows, their exact top-K lists, and the rows moved by `noise`."""
    x = sphere.random_unit_vectors(jax.random.PRNGKey(seed), n, d)
    _, lists = kernels.top_k(x, x, K, True)
    moved = sphere.normalize_rows(x + noise * jax.random.normal(jax.random.PRNGKey(seed + 1),
                                                                (n, d)))
    return moved, lists


def _recall(lists, exact):
    return np.mean([len(set(a) & set(b)) for a, b in zip(np.asarray(lists), np.asarray(exact))]) / K


def test_a_descent_never_worsens_a_list_and_is_exact_where_the_true_neighbours_are_candidates():
    x, old = _moved(300, 16, 0.05, seed=2)
    values, new = jax.jit(nn_descent.descend)(x, old)
    new, old = np.asarray(new), np.asarray(old)
    # k-th best of a superset of the old list, for every k; the values are the rows' cosines.
    old_values = -np.sort(-np.asarray(kernels.gathered(x, x, old)), axis=1)
    assert np.all(np.asarray(values) >= old_values)
    assert np.mean(np.asarray(values)[:, -1] > old_values[:, -1]) > 0.5
    np.testing.assert_array_equal(values, kernels.gathered(x, x, new))
    assert all(len(set(row)) == K and i not in row for i, row in enumerate(new))
    # Rows whose true K nearest are all among the candidates get the exact list.
    exact_values, exact = map(np.asarray, kernels.top_k(x, x, K, True))
    covered = np.array([set(exact[i]) <= set(old[i]) | set(old[old[i]].ravel())
                        for i in range(len(x))])
    assert 0.2 < covered.mean() < 0.9  # both kinds of rows are tested
    np.testing.assert_array_equal(new[covered], exact[covered])
    np.testing.assert_allclose(np.asarray(values)[covered], exact_values[covered], atol=1e-6)
    assert not np.array_equal(new[~covered], exact[~covered])
    # Chunks and gather tiles of any size give the same lists (here: uneven, padded).
    small = nn_descent.descend(x, jnp.asarray(old), chunk_entries=7 * (K + K * K),
                               gather_floats=3 * (K + K * K) * 16)
    np.testing.assert_array_equal(small[1], new)
    np.testing.assert_array_equal(small[0], values)
    # A sample of each partner's list (its nearest 2): fewer candidates, still never worse.
    sampled = nn_descent.descend(x, jnp.asarray(old), sample=2)[0]
    assert np.all(np.asarray(sampled) >= old_values) and np.all(np.asarray(sampled) <= values)


def test_descent_recovers_most_true_neighbours_after_the_points_move():
    # Measured over seeds 0-3 (n=800, d=16, K=8, noise 0.05): stale 0.68, one descent
    # 0.83-0.84, two 0.87-0.88.
    x, stale = _moved(800, 16, 0.05, seed=0)
    _, exact = kernels.top_k(x, x, K, True)
    descend = jax.jit(nn_descent.descend)
    once = descend(x, stale)[1]
    twice = descend(x, once)[1]
    assert _recall(stale, exact) < 0.72
    assert _recall(once, exact) > 0.80
    assert _recall(twice, exact) > 0.85


def test_a_run_with_descents_resumes_bitwise_and_reports_them(tmp_path):
    flags = ["--num_identities=60", "--dim=8", "--alpha=0", "--log_every=10",
             "--checkpoint_every=10", "--progress=false", "--objective=logsumexp",
             "--temperature_end=100", "--anneal_steps=40", "--neighbor_list_size=6",
             "--neighbor_refresh_every=10", "--neighbor_descent_every=3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert pack.main(["pack", f"--out_dir={straight}", *flags, "--steps=40"]) == 0
    assert pack.main(["pack", f"--out_dir={resumed}", *flags, "--steps=20"]) == 0
    assert pack.main(["pack", f"--out_dir={resumed}", *flags, "--steps=40"]) == 0
    a = np.load(straight / "embeddings.npy")
    b = np.load(resumed / "embeddings.npy")
    assert a.tobytes() == b.tobytes()
    for out in (straight, resumed):
        audit = json.loads((out / "report.json").read_text())["neighbor_list_audit"]
        # Steps 3, 6, ..., 39 but 30 (an exact rebuild); rebuilds at 10, 20, 30.
        assert audit["descent_refreshes"] == 12 and audit["rebuilds_audited"] == 3


def test_descents_with_displacement_rebuilds_are_refused_in_one_line(tmp_path, capsys):
    assert pack.main(["pack", f"--out_dir={tmp_path / 'x'}", "--num_identities=30", "--dim=8",
                      "--alpha=0", "--steps=5", "--neighbor_list_size=4",
                      "--neighbor_rebuild=displacement", "--neighbor_descent_every=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--neighbor_descent_every needs --neighbor_rebuild=every" in err[0]
    assert not (tmp_path / "x").exists()


def test_a_negative_descent_period_is_refused(tmp_path, capsys):
    assert pack.main(["pack", f"--out_dir={tmp_path / 'x'}", "--num_identities=30", "--dim=8",
                      "--steps=5", "--neighbor_descent_every=-1"]) == 2
    assert "--neighbor_descent_every must be >= 0" in capsys.readouterr().err
