"""Riemannian Adam on a product of unit spheres (one sphere per row), as optax transforms.

Becigneul and Ganea (2019), "Riemannian adaptive optimization methods": on a product of
manifolds, Adam's first moment is a tangent vector that must be carried from one point to
the next (parallel transport), and the second moment is one number per factor (here per
row: the squared norm of the row's Riemannian gradient), not one per coordinate, because
coordinates have no meaning on a sphere.

Our choices, stated: the transport is the projection onto the new tangent space (the
usual practical stand-in for parallel transport, as in geoopt's RiemannianAdam); it is
applied lazily, at the start of the next step, to the stored moment (the same operation,
since the next step's parameters are the new point). The retraction is the solver's
renormalisation of each row after the update (not the exponential map).
`coordinatewise=True` keeps Adam's per-coordinate second moment (geoopt's choice) and
projects the scaled step back onto the tangent space.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hyperface_jax.engine import sphere


class RiemannianAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_riemannian_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                             coordinatewise: bool = False) -> optax.GradientTransformation:
    """Adam's direction with the first moment kept in the tangent space of each row."""

    def second_moment_like(p):
        return jnp.zeros_like(p) if coordinatewise else jnp.zeros(p.shape[:-1] + (1,), p.dtype)

    def init(params):
        return RiemannianAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(second_moment_like, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("riemannian_adam needs the parameters (the unit rows)")
        x = jax.tree.map(sphere.normalize_rows, params)
        g = jax.tree.map(sphere.tangent_component, updates, x)
        # Transport of the moment from the previous point: projection onto T_x.
        mu = jax.tree.map(lambda m, g, x: b1 * sphere.tangent_component(m, x) + (1 - b1) * g,
                          state.mu, g, x)

        def square(g):
            return g * g if coordinatewise else jnp.sum(g * g, axis=-1, keepdims=True)

        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * square(g), state.nu, g)
        count = optax.safe_increment(state.count)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)
        step = jax.tree.map(lambda m, v, x: sphere.tangent_component(
            (m / c1) / (jnp.sqrt(v / c2) + eps), x), mu, nu, x)
        return step, RiemannianAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def riemannian_adam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9,
                    b2: float = 0.999, eps: float = 1e-8, *,
                    coordinatewise: bool = False) -> optax.GradientTransformation:
    """Riemannian Adam (per-row second moment unless `coordinatewise`), descending."""
    return optax.chain(
        scale_by_riemannian_adam(b1, b2, eps, coordinatewise=coordinatewise),
        optax.scale_by_learning_rate(learning_rate))
