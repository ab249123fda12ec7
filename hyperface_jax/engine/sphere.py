"""Points on the unit hypersphere: normalisation, tangent projection, random draws."""

import jax
import jax.numpy as jnp

# Rows shorter than this are treated as zero vectors (they have no direction).
MIN_NORM = 1e-12


def normalize_rows(x: jax.Array) -> jax.Array:
    """Each row scaled to unit Euclidean norm."""
    norms = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norms, MIN_NORM)


def tangent_component(g: jax.Array, x: jax.Array) -> jax.Array:
    """The part of each row of `g` orthogonal to the unit row of `x` (Riemannian gradient).

    Equals the gradient of f(normalize(x)) at unit x, so an optimizer fed with it cannot
    spend its step moving points off the sphere (renormalisation would undo that part
    anyway, and with per-coordinate scaling such as Adam's it can pull points together).
    """
    return g - jnp.sum(g * x, axis=-1, keepdims=True) * x


def random_unit_vectors(key: jax.Array, n: int, d: int, dtype=jnp.float32) -> jax.Array:
    """`n` points drawn uniformly on the unit sphere in `d` dimensions."""
    return normalize_rows(jax.random.normal(key, (n, d), dtype))


def cos_to_degrees(c):
    """Angle in degrees between unit vectors whose inner product is `c`."""
    return jnp.degrees(jnp.arccos(jnp.clip(c, -1.0, 1.0)))
