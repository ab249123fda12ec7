"""Optax optimizers and learning-rate schedules chosen by name.

Any optax optimizer whose first argument is the learning rate can be named; the common
ones are listed in `OPTIMIZERS`. Hyper-parameters are passed only when given, so each
optimizer keeps optax's own defaults otherwise, and one that does not take a given
hyper-parameter is refused (a silently ignored `--momentum` would be a surprise).
"""

import inspect

import jax
import optax

from hyperface_jax import sphere

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd", "lamb", "lion", "adafactor", "nadam",
              "adabelief", "adagrad", "yogi", "novograd")
SCHEDULES = ("constant", "staircase", "exponential", "cosine", "geometric")


def make_schedule(
    name: str,
    learning_rate: float,
    *,
    steps: int,
    decay_rate: float = 0.5,
    decay_every: int = 1000,
    final_learning_rate: float = 0.0,
) -> optax.Schedule:
    """`constant`; `staircase`: lr x decay_rate every decay_every steps (the paper's);
    `exponential`: the same decay applied continuously; `cosine`: from lr down to
    final_learning_rate over `steps`; `geometric`: from lr to final_learning_rate by a
    constant factor per step over `steps`."""
    if learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {learning_rate}")
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name in ("staircase", "exponential"):
        if decay_every < 1 or not 0 < decay_rate <= 1:
            raise ValueError(
                f"--schedule={name} needs --decay_every >= 1 and 0 < --decay_rate <= 1, "
                f"got {decay_every} and {decay_rate}")
        return optax.exponential_decay(
            learning_rate, transition_steps=decay_every, decay_rate=decay_rate,
            staircase=name == "staircase")
    if name == "cosine":
        return optax.cosine_decay_schedule(
            learning_rate, decay_steps=max(1, steps), alpha=final_learning_rate / learning_rate)
    if name == "geometric":
        if final_learning_rate <= 0:
            raise ValueError("--schedule=geometric needs --final_learning_rate > 0")
        return optax.exponential_decay(
            learning_rate, transition_steps=max(1, steps),
            decay_rate=final_learning_rate / learning_rate)
    raise ValueError(f"unknown --schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def make_optimizer(name: str, schedule: optax.Schedule, **hyper) -> optax.GradientTransformation:
    """`optax.<name>(schedule, **hyper)` with the hyper-parameters that are not None."""
    factory = getattr(optax, name, None)
    params = _parameters(factory)
    if not params or params[0] != "learning_rate":
        raise ValueError(
            f"unknown --optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)} "
            "(or any optax optimizer taking a learning rate)")
    given = {k: v for k, v in hyper.items() if v is not None}
    refused = sorted(set(given) - set(params))
    if refused:
        flags = ", ".join(f"--{k}" for k in refused)
        raise ValueError(f"--optimizer={name} does not take {flags}")
    return factory(schedule, **given)


def _parameters(factory) -> list[str]:
    if not callable(factory):
        return []
    try:
        return list(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return []


def tangent_projection() -> optax.GradientTransformation:
    """Each row of the update projected onto the tangent space of the sphere at the
    matching row of the parameters (`sphere.tangent_component`): the Riemannian gradient
    of a function of unit rows. Chain it before an optimizer so that no optimizer spends
    its step (or its moments) moving points off the sphere."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("tangent_projection needs the parameters (the unit rows)")
        return jax.tree.map(sphere.tangent_component, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def on_sphere(optimizer: optax.GradientTransformation, *,
              project_gradient: bool = True) -> optax.GradientTransformation:
    """`optimizer` fed with tangent gradients (`--project_gradient`), or unchanged."""
    return optax.chain(tangent_projection(), optimizer) if project_gradient else optimizer
