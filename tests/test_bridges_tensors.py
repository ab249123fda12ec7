"""bridges.tensors: DLPack round trips keep dtype, shape and values; aliasing is as
documented (zero-copy to JAX, a copy to torch unless asked otherwise)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bridges.tensors import shares_memory, to_jax, to_torch

DTYPES = [(jnp.float32, torch.float32), (jnp.float16, torch.float16),
          (jnp.bfloat16, torch.bfloat16)]


@pytest.mark.parametrize("jdtype,tdtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4), (7,), ()])
def test_round_trip_keeps_dtype_shape_and_values(jdtype, tdtype, shape):
    values = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    x = jnp.asarray(values, dtype=jdtype)
    t = to_torch(x)
    assert t.dtype == tdtype and tuple(t.shape) == shape
    assert torch.equal(t, torch.tensor(values).to(tdtype))
    back = to_jax(t)
    assert back.dtype == jdtype and back.shape == shape
    assert bool(jnp.array_equal(back, x))


def test_to_torch_copies_by_default_so_in_place_writes_leave_jax_alone():
    x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    t = to_torch(x)
    assert not shares_memory(x, t)
    t.mul_(10)
    assert float(x[1, 2]) == 5.0 and float(t[1, 2]) == 50.0


def test_to_torch_zero_copy_on_request_aliases():
    x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    t = to_torch(x, copy=False)
    assert shares_memory(x, t)


def test_to_jax_is_zero_copy_by_default_and_copy_true_detaches_memory():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    shared = to_jax(t)
    owned = to_jax(t, copy=True)
    assert shares_memory(shared, t) and not shares_memory(owned, t)
    t[0, 0] = 42.0
    # The documented aliasing: the zero-copy array shows torch's later write, the copy not.
    assert float(shared[0, 0]) == 42.0 and float(owned[0, 0]) == 0.0


def test_requires_grad_tensors_are_detached():
    w = torch.linspace(-1, 1, 5, requires_grad=True)
    y = w * 2
    x = to_jax(y)
    np.testing.assert_array_equal(np.asarray(x), (np.linspace(-1, 1, 5) * 2).astype(np.float32))
    assert w.grad is None and y.requires_grad


def test_non_contiguous_tensors_are_made_contiguous_and_not_aliased():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    view = t.T
    assert not view.is_contiguous()
    x = to_jax(view)
    assert x.shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(x), view.numpy())
    t[0, 1] = -1.0
    assert float(x[1, 0]) == 1.0
