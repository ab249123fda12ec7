"""The dense baseline: straightforward implementations, the yardstick for tests and benchmarks.

Materialises the n x n and n x m cosine matrices and lets autodiff differentiate through
`max`. Correct and simple, O(n^2) memory: use it on small inputs only. Written in plain
`jnp`, apart from the engine's kernels and reductions, so that tests comparing the engine
with it compare two independent codes.
"""

import jax.numpy as jnp
from jax import lax

from hyperface_jax.engine.objective import LossTerms


def dense_nearest_self_similarity(x, precision=lax.Precision.HIGHEST):
    s = jnp.dot(x, x.T, precision=precision)
    s = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, s)
    return jnp.max(s, axis=1)


def dense_nearest_similarity(x, y, precision=lax.Precision.HIGHEST):
    return jnp.max(jnp.dot(x, y.T, precision=precision), axis=1)


def dense_packing(nearest, reduce="mean"):
    """The packing term: the mean of the rows' nearest cosines (the paper's) or the worst
    (`jnp.max`: autodiff shares the gradient between tied rows)."""
    if reduce == "mean":
        return jnp.mean(nearest)
    if reduce == "max":
        return jnp.max(nearest)
    raise ValueError(f"unknown reduce {reduce!r}")


def dense_hyperface_loss(x, gallery, alpha, *, reduce="mean", precision=lax.Precision.HIGHEST):
    packing = dense_packing(dense_nearest_self_similarity(x, precision), reduce)
    if gallery is None:
        regulariser = jnp.zeros((), x.dtype)
    else:
        regulariser = jnp.mean(1.0 - dense_nearest_similarity(x, gallery, precision))
    total = packing + alpha * regulariser
    return total, LossTerms(total, packing, regulariser)


def make_dense_runner(optimizer, *, alpha, reduce="mean", precision=lax.Precision.HIGHEST):
    """Full-batch steps of the dense formulation: `run(x, opt_state, gallery, num_steps)`.

    The same update as `solver.make_step` in full-batch mode (optax update, with the
    tangent projection when the optimizer chains it: `optimizers.on_sphere`;
    renormalisation), with the gradient taken by autodiff through the dense matrices: the
    baseline that tests and benchmarks compare the solver with.
    """
    import jax
    import optax

    from hyperface_jax.engine import sphere

    def step(carry, gallery):
        x, opt_state = carry
        g = jax.grad(lambda x: dense_hyperface_loss(
            x, gallery, alpha, reduce=reduce, precision=precision)[0])(x)
        updates, opt_state = optimizer.update(g, opt_state, x)
        return sphere.normalize_rows(optax.apply_updates(x, updates)), opt_state

    @jax.jit
    def run(x, opt_state, gallery, num_steps):
        return lax.fori_loop(0, num_steps, lambda _, c: step(c, gallery), (x, opt_state))

    return run
