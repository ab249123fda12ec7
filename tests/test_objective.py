"""The blockwise objective and its gather-only VJP against dense autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperface_jax.baselines import dense_baseline
from hyperface_jax.engine import kernels, objective, sphere

SHAPES = [  # n, m, d, tile (tiles that do not divide n included)
    (7, 5, 3, 3),
    (37, 23, 8, 5),
    (64, 100, 16, 17),
    (130, 41, 32, 1024),
    (257, 300, 64, 64),
]


def _points(seed, n, d):
    return sphere.random_unit_vectors(jax.random.PRNGKey(seed), n, d)


@pytest.mark.parametrize("n,m,d,tile", SHAPES)
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_loss_and_gradients_equal_dense_autodiff(n, m, d, tile, reduce):
    x, g = _points(n, n, d), _points(1000 + m, m, d)

    def ours(x, g):
        return objective.hyperface_loss(x, g, 0.5, reduce=reduce, tile_size=tile)[0]

    def dense(x, g):
        return dense_baseline.dense_hyperface_loss(x, g, 0.5, reduce=reduce)[0]

    value, grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(x, g)
    value_ref, grads_ref = jax.jit(jax.value_and_grad(dense, argnums=(0, 1)))(x, g)
    np.testing.assert_allclose(value, value_ref, rtol=1e-6)
    for ours_g, ref_g in zip(grads, grads_ref):
        np.testing.assert_allclose(ours_g, ref_g, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(grads[0]).max()) > 0  # a zero gradient would pass trivially


@pytest.mark.parametrize("n,d,tile", [(50, 4, 7), (300, 16, 128)])
def test_loss_without_gallery_equals_dense(n, d, tile):
    x = _points(3, n, d)
    ours = jax.jit(jax.grad(lambda x: objective.hyperface_loss(x, None, 0.0, tile_size=tile)[0]))(x)
    dense = jax.jit(jax.grad(lambda x: dense_baseline.dense_hyperface_loss(x, None, 0.0)[0]))(x)
    np.testing.assert_allclose(ours, dense, rtol=1e-5, atol=1e-7)


def test_nearest_neighbors_match_dense_argmax():
    x, y = _points(0, 101, 12), _points(1, 77, 12)
    values, idx = kernels.nearest_neighbors(x, x, exclude_self=True, tile_size=10)
    s = np.asarray(x) @ np.asarray(x).T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_array_equal(idx, s.argmax(1))
    np.testing.assert_allclose(values, s.max(1), rtol=1e-6)
    values, idx = kernels.nearest_neighbors(x, y, tile_size=33)
    c = np.asarray(x) @ np.asarray(y).T
    np.testing.assert_array_equal(idx, c.argmax(1))


def test_self_search_never_returns_self():
    x = _points(5, 64, 3)
    _, idx = kernels.nearest_neighbors(x, x, exclude_self=True, tile_size=9)
    assert not np.any(np.asarray(idx) == np.arange(64))


def test_blockwise_gradient_never_holds_an_n_by_n_matrix():
    """The compiled loss-and-gradient program's scratch memory stays far below n x n floats,
    while the dense formulation needs several n x n buffers."""
    n, d, tile = 4096, 64, 256
    x = jnp.zeros((n, d))

    def temp_bytes(f):
        return jax.jit(jax.value_and_grad(f)).lower(x, x).compile().memory_analysis() \
            .temp_size_in_bytes

    ours = temp_bytes(lambda x, g: objective.hyperface_loss(x, g, 0.5, tile_size=tile)[0])
    dense = temp_bytes(lambda x, g: dense_baseline.dense_hyperface_loss(x, g, 0.5)[0])
    nn_bytes = n * n * 4
    assert ours < nn_bytes / 4, (ours, nn_bytes)
    assert dense >= nn_bytes, (dense, nn_bytes)


def _dense_smooth(x, temperature, kind):
    c = x @ x.T
    z = temperature * kernels.pair_energy(c, kind)
    z = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, z)
    return jax.nn.logsumexp(z, axis=1) / temperature


# One tile (n <= tile: cosines kept, one backward product) and several tiles (recomputed).
@pytest.mark.parametrize("n,d,tile", [(40, 8, 40), (41, 8, 9)])
@pytest.mark.parametrize("kind", kernels.SMOOTH_KINDS)
def test_smooth_maximum_and_gradient_equal_dense_autodiff(n, d, tile, kind):
    x = _points(n + d, n, d)
    weights = jax.random.uniform(jax.random.key(1), (n,))  # unequal cotangents per row

    def ours(x):
        return jnp.sum(weights * kernels.smooth(x, 20.0, kind, tile_size=tile))

    def dense(x):
        return jnp.sum(weights * _dense_smooth(x, 20.0, kind))

    value, grad = jax.jit(jax.value_and_grad(ours))(x)
    value_ref, grad_ref = jax.jit(jax.value_and_grad(dense))(x)
    np.testing.assert_allclose(value, value_ref, rtol=1e-6)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(grad).max()) > 1e-2
