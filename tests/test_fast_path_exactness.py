"""Exactness of the fast paths: blockwise solver vs dense autodiff, neighbour lists,
reduced matmul precision (issue 8, target 2 and 4). Speed itself is measured in
benchmarks/, never here."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_module
from jax import lax

from hyperface_jax.baselines import dense_baseline
from hyperface_jax.engine import kernels, neighbor_lists, optimizers, solver, sphere
from hyperface_jax.jobs import packing
from hyperface_jax.jobs.config import make_config
from hyperface_jax.measure import metrics


def _problem(n, m, d, seed=0):
    x = sphere.random_unit_vectors(jax.random.PRNGKey(seed), n, d)
    g = sphere.random_unit_vectors(jax.random.PRNGKey(seed + 1), m, d)
    return x, g


def _adam():
    return optimizers.on_sphere(optax.adam(optax.exponential_decay(0.01, 100, 0.5,
                                                                   staircase=True)))


def _run_exact(x, g, steps, opt, **config):
    cfg = solver.SolverConfig(alpha=0.5, **config)
    state = solver.init_state(x, opt, 0, g, cfg)
    state, _ = solver.make_runner(opt, cfg, x.shape[0])(state, g, jnp.int32(steps))
    return state


def _run_dense(x, g, steps, opt):
    xd, _ = dense_baseline.make_dense_runner(opt, alpha=0.5)(x, opt.init(x), g, jnp.int32(steps))
    return xd


def test_exact_solver_tracks_dense_autodiff_at_issue_size():
    # n = m = 2,000, d = 128: trajectories agree to 1e-4 until the first near-tie of an
    # arg-max flips; the dense formulation then diverges from itself as much (slow test).
    x, g = _problem(2000, 2000, 128)
    opt = _adam()
    ours = _run_exact(x, g, 50, opt, tile_size=512).embeddings
    dense = _run_dense(x, g, 50, opt)
    assert float(jnp.max(jnp.abs(ours - dense))) < 1e-4


@pytest.mark.slow
def test_after_200_steps_the_solver_is_as_close_to_dense_as_dense_is_to_itself():
    """The mean nearest-neighbour under Adam is chaotic: a rounding-level change (the same dense
    computation on row-permuted input) moves the 200-step embeddings by ~0.1. The
    exact solver must be no further from dense than that, with the same figures."""
    n, m, d = 2000, 2000, 128
    x, g = _problem(n, m, d)
    opt = _adam()
    ours = _run_exact(x, g, 200, opt, tile_size=512).embeddings
    dense = _run_dense(x, g, 200, opt)
    perm = np.random.RandomState(0).permutation(n)
    dense_perm = _run_dense(x[perm], g, 200, opt)[np.argsort(perm)]
    spread = float(jnp.max(jnp.abs(dense_perm - dense)))
    assert float(jnp.max(jnp.abs(ours - dense))) <= 2 * spread + 1e-4
    f_ours = metrics.to_python(metrics.packing_figures(ours, g, alpha=0.5))
    f_dense = metrics.to_python(metrics.packing_figures(dense, g, alpha=0.5))
    for name in ("mean_nn_cos", "mean_gallery_cos", "loss"):
        assert abs(f_ours[name] - f_dense[name]) < 1e-3, name


def test_top_k_neighbors_match_a_full_sort():
    x, y = _problem(130, 90, 8, seed=3)
    idx = np.asarray(kernels.top_k(x, x, 6, exclude_self=True, tile_size=17)[1])
    s = np.array(x @ x.T)
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-s, axis=1)[:, :6])
    idx = np.asarray(kernels.top_k(x, y, 4, tile_size=32)[1])
    np.testing.assert_array_equal(idx, np.argsort(-np.asarray(x @ y.T), axis=1)[:, :4])


def test_grouped_arg_max_and_top_k_equal_the_plain_ones_with_ties():
    # Small integers: every product is exact, ties are everywhere, and -inf fills a column
    # group, so only exact tie-breaking (the lowest column, as jnp.argmax / lax.top_k) passes.
    s = jax.random.randint(jax.random.PRNGKey(4), (40, 600), -3, 4).astype(jnp.float32)
    s = s.at[:, 60:120].set(-jnp.inf).at[7].set(-jnp.inf)
    assert kernels.group_width(600, kernels.ARGMAX_GROUP) > 1
    assert 1 < kernels.top_k_group_width(600, 5) and 600 // kernels.top_k_group_width(600, 5) >= 5
    v, j = kernels.row_argmax(s)
    np.testing.assert_array_equal(j, jnp.argmax(s, axis=1))
    np.testing.assert_array_equal(v, jnp.max(s, axis=1))
    for k in (1, 5, 20):
        for got, want in zip(kernels.row_top_k(s, k), lax.top_k(s, k), strict=True):
            np.testing.assert_array_equal(got, want)
    # through the kernels, rows against themselves (self pairs skipped) and duplicated rows
    x = jax.random.randint(jax.random.PRNGKey(5), (150, 8), -2, 3).astype(jnp.float32)
    x = jnp.concatenate([x, x[:30]])
    dense = jnp.where(jnp.eye(180, dtype=bool), -jnp.inf, x @ x.T)
    for got, want in zip(kernels.top_k(x, x, 6, exclude_self=True, tile_size=64),
                         lax.top_k(dense, 6), strict=True):
        np.testing.assert_array_equal(got, want)
    v, j = kernels.nearest(x, x, True, tile_size=64)
    np.testing.assert_array_equal(j, jnp.argmax(dense, axis=1))
    np.testing.assert_array_equal(v, jnp.max(dense, axis=1))


def test_gathered_similarity_and_its_gradient_equal_a_plain_gather():
    x, y = _problem(70, 40, 6, seed=5)
    idx = jax.random.randint(jax.random.PRNGKey(9), (70, 5), 0, 40)
    w = jax.random.normal(jax.random.PRNGKey(2), (70, 5))

    def ours(x, y):
        return jnp.sum(w * kernels.gathered(x, y, idx, tile_size=16))

    def plain(x, y):
        return jnp.sum(w * jnp.einsum("nd,nkd->nk", x, y[idx]))

    np.testing.assert_allclose(ours(x, y), plain(x, y), rtol=1e-6)
    for a, b in zip(jax.grad(ours, (0, 1))(x, y), jax.grad(plain, (0, 1))(x, y)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_complete_neighbor_lists_reproduce_the_exact_solver():
    # Lists that hold every partner and every gallery row lose nothing: same trajectory.
    x, g = _problem(120, 60, 8, seed=7)
    opt = _adam()
    exact = _run_exact(x, g, 30, opt, tile_size=32).embeddings
    listed = _run_exact(x, g, 30, opt, tile_size=32, neighbor_list_size=119,
                        gallery_list_size=60, neighbor_refresh_every=7)
    np.testing.assert_allclose(listed.embeddings, exact, atol=1e-5)
    audit = neighbor_lists.audit(listed.lists)
    assert audit["rebuilds_audited"] == 4  # steps 7, 14, 21, 28
    assert audit["max_share_rows_missed"] == 0.0


def _listed_minibatch_reference(x, g, steps, lr, batch, key, objective, temperature):
    """Each step: the batch rows against every other row of the whole set (held fixed) and
    every gallery row, plain SGD on the batch rows only, rows renormalised."""
    n = x.shape[0]

    def loss(xb, x, rows):
        c = jnp.where(jnp.arange(n)[None, :] == rows[:, None], -jnp.inf, xb @ x.T)
        per_row = (jnp.max(c, 1) if objective == "max"
                   else jax.nn.logsumexp(temperature * c, 1) / temperature)
        return jnp.mean(per_row) + 0.5 * jnp.mean(1.0 - jnp.max(xb @ g.T, 1))

    for s in range(steps):
        rows = solver.batch_indices(key, jnp.int32(s), n, batch)
        xb = x[rows] - lr * jax.grad(loss)(x[rows], x, rows)
        x = x.at[rows].set(xb / jnp.linalg.norm(xb, axis=1, keepdims=True))
    return x


@pytest.mark.parametrize("objective", ["max", "logsumexp"])
def test_a_listed_minibatch_with_complete_lists_equals_the_exact_computation(objective):
    # Lists holding every row: each batch row sees the whole set, as an exact search would.
    x, g = _problem(60, 20, 8, seed=3)
    opt = optax.sgd(1.0)
    cfg = solver.SolverConfig(alpha=0.5, batch_size=16, objective=objective,
                              temperature_start=30.0, temperature_end=30.0,
                              neighbor_list_size=59, gallery_list_size=20,
                              neighbor_refresh_every=4)
    state = solver.init_state(x, opt, 5, g, cfg)
    state, _ = solver.make_runner(opt, cfg, 60)(state, g, jnp.int32(12))
    ref = _listed_minibatch_reference(x, g, 12, 1.0, 16, state.key, objective, 30.0)
    assert float(jnp.max(jnp.abs(ref - x))) > 0.05  # the rows did move
    np.testing.assert_allclose(state.embeddings, ref, atol=2e-6)


def test_a_listed_minibatch_with_short_lists_packs_and_is_audited():
    x, g = _problem(400, 50, 16, seed=4)
    opt = _adam()
    cfg = solver.SolverConfig(alpha=0.0, batch_size=100, objective="logsumexp",
                              temperature_start=10.0, temperature_end=100.0, anneal_steps=200,
                              neighbor_list_size=8, gallery_list_size=2,
                              neighbor_refresh_every=20)
    state = solver.init_state(x, opt, 0, None, cfg)
    state, _ = solver.make_runner(opt, cfg, 400)(state, None, jnp.int32(200))
    before = metrics.to_python(metrics.packing_figures(x))
    after = metrics.to_python(metrics.packing_figures(state.embeddings))
    assert after["max_cos"] < before["max_cos"] - 0.1
    assert after["mean_nn_cos"] < before["mean_nn_cos"] - 0.1
    assert neighbor_lists.audit(state.lists)["rebuilds_audited"] == 9  # steps 20, ..., 180


def test_short_lists_are_audited_when_partners_leave_them():
    x, g = _problem(400, 50, 16, seed=1)
    opt = optax.adam(0.05)
    state = _run_exact(x, g, 40, opt, tile_size=128, neighbor_list_size=1,
                       gallery_list_size=1, neighbor_refresh_every=10)
    audit = neighbor_lists.audit(state.lists)
    assert audit["rebuilds_audited"] == 3
    assert 0.0 < audit["mean_share_rows_missed"] <= audit["max_share_rows_missed"] <= 1.0


def test_lists_rebuilt_by_displacement_are_complete_whenever_used():
    # A problem where a fixed schedule lets nearest partners leave the lists: with the
    # displacement bound, every list a step uses holds the exact nearest partner and
    # nearest gallery row, and the trajectory is the exact solver's.
    x, g = _problem(100, 30, 6, seed=3)
    opt = _adam()
    steps = 30
    every = _run_exact(x, g, steps, opt, tile_size=64, neighbor_list_size=4,
                       gallery_list_size=2, neighbor_refresh_every=10)
    assert neighbor_lists.audit(every.lists)["max_share_rows_missed"] > 0.0

    cfg = solver.SolverConfig(alpha=0.5, tile_size=64, neighbor_list_size=4,
                              gallery_list_size=2, neighbor_rebuild="displacement")
    step = solver.make_step(opt, cfg, 100)

    def checked(state, _):
        """One step, and whether the lists it used held every exact nearest row."""
        rows = state.embeddings
        state, _ = step(state, g)
        s = jnp.where(jnp.eye(100, dtype=bool), -jnp.inf, rows @ rows.T)
        held = (jnp.any(state.lists.packing == jnp.argmax(s, 1)[:, None], axis=1)
                & jnp.any(state.lists.gallery == jnp.argmax(rows @ g.T, 1)[:, None], axis=1))
        return state, jnp.all(held)

    state, held = jax.jit(lambda s: lax.scan(checked, s, None, length=steps))(
        solver.init_state(x, opt, 0, g, cfg))
    assert np.all(held)
    exact = _run_exact(x, g, steps, opt, tile_size=64).embeddings
    np.testing.assert_allclose(state.embeddings, exact, atol=1e-5)
    audit = neighbor_lists.audit(state.lists, steps)
    assert audit["rebuild"] == "displacement"
    assert 0 < audit["rebuilds_audited"] < steps  # rebuilt when needed, not every step
    # The audit looks at the lists a rebuild replaces, at the step the bound replaced them
    # (after the rows moved, before any use): what the bound caught, far below what the
    # fixed schedule let through.
    missed_every = neighbor_lists.audit(every.lists)["max_share_rows_missed"]
    assert audit["max_share_rows_missed"] < 0.25 * missed_every


def test_displacement_margins_are_the_gaps_to_the_best_unlisted_partner():
    x, g = _problem(40, 12, 5, seed=2)
    s = np.array(x @ x.T)
    np.fill_diagonal(s, -np.inf)
    top = -np.sort(-s, axis=1)
    sg = -np.sort(-np.asarray(x @ g.T), axis=1)
    search = solver.LOCAL.search(40, 12, 16, "highest")

    @jax.jit
    def both(x, g):
        return [neighbor_lists.search_partners(x, g, 3, 2, search, spare=True,
                                               gallery_spare=True, whole_list=whole)
                for whole in (False, True)] + [
            neighbor_lists.search_partners(x, g, 39, 12, search)]

    *spared, (_, complete) = both(x, g)
    for (partners, margins), first in zip(spared, (0, 2), strict=True):
        np.testing.assert_allclose(margins[:, 0], top[:, first] - top[:, 3], atol=1e-6)
        np.testing.assert_allclose(margins[:, 1], sg[:, 0] - sg[:, 2], atol=1e-6)
        assert partners.packing.shape == (40, 3) and partners.gallery.shape == (40, 2)
    assert np.all(np.isinf(complete))  # nothing left unlisted: never a rebuild


def test_bfloat16_search_picks_a_near_maximum_and_reports_its_exact_cosine():
    x, y = _problem(500, 300, 64, seed=4)
    exact_vals, exact_idx = kernels.nearest_neighbors(x, y, tile_size=128)
    vals, idx = kernels.nearest_neighbors(x, y, tile_size=128, precision="bfloat16")
    true_cos = jnp.sum(x * y[idx], axis=1)
    np.testing.assert_allclose(vals, true_cos, rtol=1e-6)  # value of the chosen pair, in f32
    gap = np.asarray(exact_vals - vals)
    assert gap.min() >= -1e-6 and gap.max() < 2e-2  # bf16 has 8 bits of mantissa
    assert np.mean(np.asarray(idx == exact_idx)) > 0.8  # most choices are the exact arg-max


def _pack(out, **flags):
    c = make_config(out_dir=str(out), num_identities=300, dim=32, alpha=0.0, steps=150,
                    log_every=150, progress=False, learning_rate=0.01, **flags)
    return packing.run(c, log=lambda msg: None)


@pytest.fixture(scope="module")
def highest_report(tmp_path_factory):
    return _pack(tmp_path_factory.mktemp("highest"), matmul_precision="highest")


def _dots_differ_from_highest(precision) -> bool:
    """Whether this backend computes similarities at `precision` other than at highest
    (on the CPU, high and default are bitwise equal to highest: nothing to pin there)."""
    x, y = _problem(256, 256, 64, seed=11)
    return not np.array_equal(np.asarray(kernels.similarity(x, y, precision)),
                              np.asarray(kernels.similarity(x, y, "highest")))


@pytest.mark.parametrize("precision", ["high", "default", "bfloat16"])
def test_matmul_precision_changes_the_packing_only_slightly(tmp_path, request, precision):
    if not _dots_differ_from_highest(precision):
        pytest.skip(f"on {jax.default_backend()}, dots at precision={precision} are bitwise "
                    "equal to highest: the test could not fail here")
    highest_report = request.getfixturevalue("highest_report")
    report = _pack(tmp_path, matmul_precision=precision)
    a, b = highest_report["figures"], report["figures"]
    assert b["max_cos"] < report["initial_figures"]["max_cos"] - 0.1
    assert abs(a["mean_nn_cos"] - b["mean_nn_cos"]) < 0.01
    assert report["flags"]["matmul_precision"] == precision


@pytest.mark.parametrize("batch", ["0", "100"])  # full batch and a listed mini-batch
def test_pack_cli_reports_the_neighbor_list_audit(tmp_path, batch):
    out = tmp_path / "lists"
    r = run_module("hyperface_jax.pack", f"--out_dir={out}", "--num_identities=300", "--dim=32",
                   "--alpha=0", "--steps=60", "--log_every=30", "--noprogress",
                   "--neighbor_list_size=8", "--neighbor_refresh_every=10",
                   f"--batch_size={batch}")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    audit = report["neighbor_list_audit"]
    assert audit["rebuilds_audited"] == 5 and audit["rebuild"] == "every"
    assert "descent_refreshes" not in audit  # off by default (tests/test_nn_descent.py)
    assert audit["rebuilds_per_100_steps"] == pytest.approx(100 * 5 / 60)
    assert report["figures"]["max_cos"] < report["initial_figures"]["max_cos"]


@pytest.mark.parametrize("flags,message", [
    (["--matmul_precision=fp8"], "--matmul_precision=fp8: value should be one of"),
    (["--neighbor_list_size=-1"], "--neighbor_list_size must be >= 0"),
])
def test_bad_speed_flags_exit_2(tmp_path, flags, message):
    r = run_module("hyperface_jax.pack", f"--out_dir={tmp_path / 'x'}", "--num_identities=300",
                   "--dim=8", "--alpha=0", "--steps=5", *flags)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_an_unknown_rebuild_rule_is_refused_in_one_line():
    from hyperface_jax.io.files import InputError
    from hyperface_jax.jobs import problem

    c = make_config(num_identities=30, dim=8, neighbor_list_size=4, neighbor_rebuild="often")
    with pytest.raises(InputError, match="--neighbor_rebuild=often: value should be one of "
                                         "<displacement|every>"):
        problem.check_settings(c)
