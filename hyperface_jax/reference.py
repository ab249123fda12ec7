"""Straightforward dense implementations: the yardstick for tests and benchmarks.

Materialises the n x n and n x m cosine matrices and lets autodiff differentiate through
`max`. Correct and simple, O(n^2) memory: use it on small inputs only.
"""

import jax.numpy as jnp
from jax import lax

from hyperface_jax.objective import LossTerms, reduce_packing


def dense_nearest_self_similarity(x, precision=lax.Precision.HIGHEST):
    s = jnp.dot(x, x.T, precision=precision)
    s = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, s)
    return jnp.max(s, axis=1)


def dense_nearest_similarity(x, y, precision=lax.Precision.HIGHEST):
    return jnp.max(jnp.dot(x, y.T, precision=precision), axis=1)


def dense_hyperface_loss(x, gallery, alpha, *, reduce="mean", precision=lax.Precision.HIGHEST):
    packing = reduce_packing(dense_nearest_self_similarity(x, precision), reduce)
    if gallery is None:
        regulariser = jnp.zeros((), x.dtype)
    else:
        regulariser = jnp.mean(1.0 - dense_nearest_similarity(x, gallery, precision))
    total = packing + alpha * regulariser
    return total, LossTerms(total, packing, regulariser)
