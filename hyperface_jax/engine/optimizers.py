"""Optax optimizers and learning-rate schedules chosen by name.

`CATALOGUE` lists every optimizer our step can drive: the step calls
`update(gradient, state, params)` and nothing more (no loss value, no function to
re-evaluate, no per-example gradients), then renormalises each row. Optimizers that need
more are in `REFUSED`, each with its reason. A user's own optimizer is named
`module.path:factory`: `factory(schedule, **hyper)` must return an optax
GradientTransformation. Hyper-parameters are passed only when given, so each optimizer
keeps its own defaults otherwise, and one that does not take a given hyper-parameter is
refused (a silently ignored `momentum` would be a surprise).
"""

import dataclasses
import importlib
import inspect
from collections.abc import Callable

import jax
import optax
import optax.contrib

from hyperface_jax.engine import riemannian, sphere
from hyperface_jax.engine.choices import SCHEDULES

# The common ones (each is tested on a small packing in tests/test_solver.py).
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd", "lamb", "lion", "adafactor", "nadam",
              "adabelief", "adagrad", "yogi", "novograd")
# The hyper-parameter flags of PackConfig that an optimizer may take.
HYPER_FLAGS = ("b1", "b2", "eps", "weight_decay", "momentum", "nesterov", "decay")


def _parameters(factory) -> list[str]:
    if not callable(factory):
        return []
    try:
        return list(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return []


@dataclasses.dataclass(frozen=True)
class Entry:
    build: Callable[..., optax.GradientTransformation]  # build(schedule, **hyper)
    hyper: tuple[str, ...]  # the HYPER_FLAGS it takes
    note: str = ""  # what a user should know when reading its figures


def _optax(factory, note: str = "") -> Entry:
    params = _parameters(factory)
    return Entry(factory, tuple(h for h in HYPER_FLAGS if h in params), note)


def _betas(factory, note: str = "") -> Entry:
    """Optimizers taking `betas=(b1, b2)` (the D-Adaptation family)."""

    def build(schedule, b1=None, b2=None, **hyper):
        if b1 is not None or b2 is not None:
            hyper["betas"] = (0.9 if b1 is None else b1, 0.999 if b2 is None else b2)
        return factory(schedule, **hyper)

    params = _parameters(factory)
    return Entry(build, ("b1", "b2") + tuple(h for h in HYPER_FLAGS if h in params), note)


def _dog(schedule, eps=None):
    """DoG (Ivgi et al. 2023): distance over gradients; the learning rate multiplies it."""
    extra = {} if eps is None else {"eps": eps}
    return optax.chain(optax.scale_by_distance_over_gradients(**extra),
                       optax.scale_by_learning_rate(schedule))


def _mechanic(schedule, weight_decay=None):
    """Mechanic (Cutkosky et al. 2023) tuning the scale of Adam at this learning rate."""
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    return optax.contrib.mechanize(optax.adam(schedule), **extra)


def _riemannian(coordinatewise: bool):
    def build(schedule, b1=None, b2=None, eps=None):
        given = {k: v for k, v in (("b1", b1), ("b2", b2), ("eps", eps)) if v is not None}
        return riemannian.riemannian_adam(schedule, coordinatewise=coordinatewise, **given)
    return build


_CORE = ("adabelief", "adadelta", "adafactor", "adagrad", "adam", "adamax", "adamaxw",
         "adamw", "adan", "amsgrad", "fromage", "lamb", "lars", "lion", "nadam", "nadamw",
         "novograd", "optimistic_adam_v2", "optimistic_gradient_descent", "radam",
         "rmsprop", "sgd", "sign_sgd", "signum", "yogi")
_LR_FREE = "learning-rate free: the learning rate multiplies the step it finds (1 as published)"
_SCHEDULE_FREE = ("figures are those of the training iterate y (the solver evaluates its "
                  "parameters; the schedule-free average x is not extracted)")
CATALOGUE: dict[str, Entry] = {
    **{name: _optax(getattr(optax, name)) for name in _CORE},
    "noisy_sgd": Entry(lambda schedule: optax.noisy_sgd(schedule, key=jax.random.key(0)), (),
                       "gradient noise from a fixed key (0), not from the run's seed"),
    "acprop": _optax(optax.contrib.acprop),
    "ademamix": _optax(optax.contrib.ademamix),
    "simplified_ademamix": _optax(optax.contrib.simplified_ademamix),
    "adopt": _optax(optax.contrib.adopt),
    "cocob": _optax(optax.contrib.cocob, _LR_FREE),
    "dadapt_adamw": _betas(optax.contrib.dadapt_adamw,
                           _LR_FREE),
    "prodigy": _betas(optax.contrib.prodigy, _LR_FREE),
    "dog": Entry(_dog, ("eps",), _LR_FREE),
    "mechanic": Entry(_mechanic, ("weight_decay",), "learns the scale of Adam's step"),
    "madgrad": _optax(optax.contrib.madgrad),
    "muon": _optax(optax.contrib.muon,
                   "orthogonalises the (n, d) update matrix as a whole (Newton-Schulz)"),
    "schedule_free_adamw": _optax(optax.contrib.schedule_free_adamw, _SCHEDULE_FREE),
    "schedule_free_sgd": _optax(optax.contrib.schedule_free_sgd, _SCHEDULE_FREE),
    "riemannian_adam": Entry(_riemannian(False), ("b1", "b2", "eps"),
                             "moments in the tangent space, second moment per row"),
    "riemannian_adam_coordinatewise": Entry(
        _riemannian(True), ("b1", "b2", "eps"),
        "moments in the tangent space, second moment per coordinate (geoopt's choice)"),
}

_LOSS = "needs the loss value in update(); the step passes only the gradient"
REFUSED: dict[str, str] = {
    "lbfgs": "its line search needs the loss value and a function to re-evaluate it in "
             "update(); the step passes only the gradient",
    "dpsgd": "needs per-example gradients to clip; our loss is one sum over identities",
    "differentially_private_aggregate": "needs per-example gradients to clip",
    "polyak_sgd": _LOSS,
    "momo": _LOSS,
    "momo_adam": _LOSS,
    "reduce_on_plateau": _LOSS,
    "sophia": "needs a Hessian-diagonal estimator called with the loss function",
    "sam": "opaque mode needs a gradient function in update(); the other mode moves rows to "
           "the adversarial point and back through updates, which the renormalisation "
           "after every step does not undo exactly",
    "rprop": "takes a fixed learning rate, not a schedule",
    "sm3": "takes a fixed learning rate, not a schedule",
    "galore": "a low-rank projection of weight matrices; it has no meaning for rows of "
              "unit vectors and is not checked here",
}


def names() -> list[str]:
    return sorted(CATALOGUE)


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
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name in ("staircase", "exponential"):
        if decay_every < 1 or not 0 < decay_rate <= 1:
            raise ValueError(
                f"schedule={name} needs decay_every >= 1 and 0 < decay_rate <= 1, "
                f"got {decay_every} and {decay_rate}")
        return optax.exponential_decay(
            learning_rate, transition_steps=decay_every, decay_rate=decay_rate,
            staircase=name == "staircase")
    if name == "cosine":
        return optax.cosine_decay_schedule(
            learning_rate, decay_steps=max(1, steps), alpha=final_learning_rate / learning_rate)
    if name == "geometric":
        if final_learning_rate <= 0:
            raise ValueError("schedule=geometric needs final_learning_rate > 0")
        return optax.exponential_decay(
            learning_rate, transition_steps=max(1, steps),
            decay_rate=final_learning_rate / learning_rate)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def make_optimizer(name: str, schedule: optax.Schedule, **hyper) -> optax.GradientTransformation:
    """The catalogue's `name`, or a user's `module.path:factory`, built with the schedule
    and the hyper-parameters that are not None. ValueError names what is wrong."""
    given = {k: v for k, v in hyper.items() if v is not None}
    if ":" in name:
        return _user_optimizer(name, schedule, given)
    if name in REFUSED:
        raise ValueError(f"optimizer={name} cannot drive this step: {REFUSED[name]}; "
                         f"choose one of {', '.join(names())} or module.path:factory")
    if name not in CATALOGUE:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(names())} "
                         "or module.path:factory")
    entry = CATALOGUE[name]
    _refuse_unknown(name, given, entry.hyper)
    return entry.build(schedule, **given)


def _refuse_unknown(name: str, given: dict, accepted) -> None:
    refused = sorted(set(given) - set(accepted))
    if refused:
        raise ValueError(f"optimizer={name} does not take {', '.join(refused)}")


def _user_optimizer(name: str, schedule, given: dict) -> optax.GradientTransformation:
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's bad path or module
        raise ValueError(f"optimizer={name}: cannot import {module_name!r} "
                         f"({type(e).__name__}: {e})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"optimizer={name}: {module_name} has no callable {attribute!r}")
    try:
        signature = inspect.signature(factory)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        accepted = HYPER_FLAGS if takes_any else tuple(signature.parameters)
    except (TypeError, ValueError):
        accepted = HYPER_FLAGS
    _refuse_unknown(name, given, accepted)
    try:
        transform = factory(schedule, **given)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - sys.exit(0) in it is no success
        raise ValueError(f"optimizer={name}: factory(schedule) failed "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(transform, optax.GradientTransformation):
        raise ValueError(f"optimizer={name}: factory returned {type(transform).__name__}, "
                         "not an optax GradientTransformation")
    return transform


def check_user_optimizer(name: str, transform: optax.GradientTransformation,
                         shape: tuple[int, ...]) -> None:
    """Run a user's optimizer (`module.path:factory`) on abstract float32 rows of `shape`:
    its `init` and `update` must trace and the update must have the rows' shape and
    dtype. ValueError naming what failed (their code is called before any compilation, so
    a bug in it is one line, not a traceback from inside the solver)."""
    if ":" not in name:
        return
    rows = jax.ShapeDtypeStruct(shape, jax.numpy.float32)
    try:
        state = jax.eval_shape(transform.init, rows)
        updates, _ = jax.eval_shape(transform.update, rows, state, rows)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure of the user's code
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"optimizer={name}: its init/update failed on {shape} float32 "
                         f"rows ({type(e).__name__}: {first})") from None
    shape_of = getattr(updates, "shape", None)
    if shape_of != shape or getattr(updates, "dtype", None) != rows.dtype:
        got = (f"{shape_of} {updates.dtype}" if shape_of is not None
               else type(updates).__name__)
        raise ValueError(f"optimizer={name}: its update returned {got} for {shape} float32 "
                         "rows; an update has the shape and dtype of the parameters")


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
    """`optimizer` fed with tangent gradients (`project_gradient`), or unchanged."""
    return optax.chain(tangent_projection(), optimizer) if project_gradient else optimizer
