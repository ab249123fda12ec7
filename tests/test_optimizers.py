"""The optimizer catalogue: refusals with reasons, a user's own optimizer by import path,
Riemannian Adam's tangent moments, and the tuning statistics (search draws, time to
target, performance profile)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyperface_jax import pack
from hyperface_jax.engine import optimizers, riemannian, solver, sphere
from hyperface_jax.io.files import InputError
from hyperface_jax.measure import metrics
from hyperface_jax.research import search_spaces, tuning

TINY = ["--num_identities=16", "--dim=4", "--alpha=0", "--steps=10", "--log_every=5",
        "--checkpoint_every=10", "--progress=false", "--learning_rate=0.05"]

USER_MODULE = '''
import optax

def my_sgd(learning_rate, momentum=None):
    return optax.sgd(learning_rate, momentum=momentum)

def not_a_transform(learning_rate):
    return {"lr": learning_rate}

def broken(learning_rate):
    raise RuntimeError("boom")

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_optimizers.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_optimizers"


def _random(seed, n, d):
    return sphere.random_unit_vectors(jax.random.PRNGKey(seed), n, d)


def _run(opt, x0, steps):
    """`steps` full-batch steps with the tangent projection chained first, as pack does."""
    opt = optimizers.on_sphere(opt)
    cfg = solver.SolverConfig(alpha=0.0)
    state, _ = solver.make_runner(opt, cfg, x0.shape[0])(solver.init_state(x0, opt, 0), None,
                                                         steps)
    return state.embeddings


def test_user_optimizer_by_import_path_equals_the_same_optax_optimizer(user_module):
    schedule = optimizers.make_schedule("constant", 0.5, steps=20)
    mine = optimizers.make_optimizer(f"{user_module}:my_sgd", schedule, momentum=0.9)
    theirs = optimizers.make_optimizer("sgd", schedule, momentum=0.9)
    x0 = _random(0, 16, 4)
    np.testing.assert_array_equal(_run(mine, x0, 20), _run(theirs, x0, 20))
    with pytest.raises(ValueError, match="does not take b1"):
        optimizers.make_optimizer(f"{user_module}:my_sgd", schedule, b1=0.9)


def test_pack_runs_a_user_optimizer(user_module, tmp_path):
    out = tmp_path / "run"
    assert pack.main(["pack", f"--out_dir={out}", f"--optimizer={user_module}:my_sgd",
                      "--momentum=0.9", *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["flags"]["optimizer"] == f"{user_module}:my_sgd"
    assert report["figures"]["mean_nn_cos"] < report["initial_figures"]["mean_nn_cos"]


@pytest.mark.parametrize("name, words", [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("{m}:missing", "has no callable 'missing'"),
    ("{m}:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
    ("{m}:not_a_transform", "returned dict, not an optax GradientTransformation"),
    ("{m}:broken", "RuntimeError: boom"),
    ("lbfgs", "cannot drive this step: its line search needs the loss value"),
    ("dpsgd", "cannot drive this step: needs per-example gradients"),
    ("adamm", "unknown --optimizer 'adamm'"),
])
def test_bad_optimizers_exit_2_with_one_line_naming_the_reason(user_module, tmp_path, capsys,
                                                               name, words):
    out = tmp_path / "run"
    code = pack.main(["pack", f"--out_dir={out}", f"--optimizer={name.format(m=user_module)}",
                      *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    if ":" not in name:  # the refusal lists what can run
        assert "adam, adamax" in err[0] and "riemannian_adam" in err[0]
    assert not out.exists()


def test_every_refused_optimizer_gives_its_reason():
    schedule = optax.constant_schedule(0.1)
    for name, reason in optimizers.REFUSED.items():
        with pytest.raises(ValueError, match="cannot drive this step") as e:
            optimizers.make_optimizer(name, schedule)
        assert reason in str(e.value)
    assert not set(optimizers.REFUSED) & set(optimizers.CATALOGUE)


# The catalogue beyond the common optimizers (those are run in tests/test_solver.py).
@pytest.mark.parametrize("name, rate", [
    ("riemannian_adam", 0.05), ("riemannian_adam_coordinatewise", 0.05), ("prodigy", 1.0),
    ("schedule_free_adamw", 0.05), ("muon", 0.05), ("dog", 1.0), ("mechanic", 0.05),
])
def test_catalogue_optimizers_improve_a_small_packing(name, rate):
    x0 = _random(2, 32, 6)
    opt = optimizers.make_optimizer(name, optimizers.make_schedule("constant", rate, steps=60))
    x = _run(opt, x0, 60)
    before = metrics.to_python(metrics.packing_figures(x0, None))["mean_nn_cos"]
    after = metrics.to_python(metrics.packing_figures(x, None))["mean_nn_cos"]
    assert after < before - 0.05, (before, after)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=1), 1.0, rtol=1e-5)


def test_riemannian_adam_keeps_its_moment_tangent_and_normalises_each_row():
    x = _random(0, 8, 5)
    g = jax.random.normal(jax.random.PRNGKey(1), (8, 5))
    t = riemannian.scale_by_riemannian_adam(b1=0.9, b2=0.999, eps=0.0)
    step, state = t.update(g, t.init(x), x)
    tangent_g = sphere.tangent_component(g, x)
    # First step: m-hat = v-hat^(1/2) * direction, so each row is the unit tangent direction.
    np.testing.assert_allclose(step, tangent_g / jnp.linalg.norm(tangent_g, axis=1,
                                                                 keepdims=True), atol=1e-5)
    np.testing.assert_allclose(jnp.sum(state.mu * x, axis=1), 0.0, atol=1e-6)
    assert state.nu.shape == (8, 1)
    # Next point: the stored moment is carried over by projection onto its tangent space.
    y = sphere.normalize_rows(x - 0.3 * step)
    step2, state2 = t.update(jnp.zeros_like(g), state, y)
    np.testing.assert_allclose(state2.mu, 0.9 * sphere.tangent_component(state.mu, y),
                               atol=1e-6)
    np.testing.assert_allclose(jnp.sum(step2 * y, axis=1), 0.0, atol=1e-5)


def test_search_space_draws_are_seeded_inside_their_ranges_and_checked():
    space = {"learning_rate": (1e-4, 1.0, "log"), "b2": (0.9, 0.9999, "log1m"),
             "momentum": (0.0, 0.5, "linear")}
    a = tuning.draw_trials(space, 16, seed=3)
    assert a == tuning.draw_trials(space, 16, seed=3) != tuning.draw_trials(space, 16, seed=4)
    for trial in a:
        for flag, (low, high, _) in space.items():
            assert low <= trial[flag] <= high and trial[flag] != 1.0
    logs = np.log10([t["learning_rate"] for t in a])  # quasi-random: every decade visited
    assert {int(np.floor(v)) for v in logs} >= {-4, -3, -2, -1}
    for name in search_spaces.SEARCH_SPACES:
        tuning.check_space(name, search_spaces.space_of(name))
    for bad, words in [({"learning_rate": (0.0, 1.0, "log")}, "bad range"),
                       ({"learning_rate": (1e-3, 1.0, "cubic")}, "scale in"),
                       ({"learning_rate": (1e-3, 1.0, "log"), "seed": (0, 1, "linear")},
                        "not tunable")]:
        with pytest.raises(InputError, match=words):
            tuning.check_space("x", bad)


def test_time_to_target_and_performance_profile_on_planted_cases():
    history = [{"step": 0, "seconds": 0.0, "max_cos": 0.9},
               {"step": 50, "seconds": 1.5, "max_cos": 0.5},
               {"step": 100, "seconds": 3.0, "max_cos": 0.4}]
    assert tuning.time_to_target(history, 0.5) == {"step": 50, "seconds": 1.5}
    assert tuning.time_to_target(history, 0.3) == {"step": None, "seconds": None}
    hits = [{"step": 50, "seconds": 1.5}, {"step": None, "seconds": None},
            {"step": 100, "seconds": 3.0}]
    summary = tuning.summarise_time_to_target(hits)
    assert summary == {"reached": 2, "of": 3, "median_steps": 100.0, "median_seconds": 3.0}
    costs = {"w1": {"a": 1.0, "b": 2.0}, "w2": {"a": 3.0, "b": 1.5}, "w3": {"a": None, "b": 4}}
    profile = tuning.performance_profile(costs, [1.0, 2.0, 10.0])
    assert profile == {"a": [1 / 3, 2 / 3, 2 / 3], "b": [2 / 3, 1.0, 1.0]}
    mean, interval = tuning.mean_and_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and interval == pytest.approx([2 - 4.302653 / math.sqrt(3),
                                                      2 + 4.302653 / math.sqrt(3)], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", optimizers.names())
def test_every_catalogue_optimizer_improves_a_small_packing(name):
    # The learning rate: the geometric middle of the optimizer's search range.
    low, high, _ = search_spaces.space_of(name)["learning_rate"]
    rate = math.sqrt(low * high)
    x0 = _random(2, 32, 6)
    opt = optimizers.make_optimizer(name, optimizers.make_schedule("constant", rate, steps=60))
    x = _run(opt, x0, 60)
    before = metrics.to_python(metrics.packing_figures(x0, None))["mean_nn_cos"]
    after = metrics.to_python(metrics.packing_figures(x, None))["mean_nn_cos"]
    assert after < before, (before, after)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
