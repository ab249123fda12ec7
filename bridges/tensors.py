"""JAX <-> torch by DLPack: zero-copy where it is safe, an explicit copy where aliasing
would surprise.

DLPack hands over the buffer itself: on the CPU (and on one GPU) both directions alias the
same memory, and frameworks do not honour a `copy=True` request there. So:

- `to_torch(x)` copies by default. torch code writes in place freely (`t /= n`), and a
  write through an aliasing tensor would change a JAX array, which JAX promises is
  immutable. Pass `copy=False` for a zero-copy view you only read (feeding a model).
- `to_jax(t)` is zero-copy by default: JAX never writes into its inputs. The one surprise
  left is torch writing into `t` afterwards, which the JAX array would then show; pass
  `copy=True` when `t` lives on and may be modified.
- Tensors that require grad are detached (DLPack refuses them); non-contiguous tensors
  are made contiguous first (a copy, so the result never aliases them).
- Arrays sharded over several devices are refused: gather them first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import torch


def to_torch(x: jax.Array, *, copy: bool = True) -> torch.Tensor:
    """A torch tensor with the values, dtype and shape of the JAX array `x` (on its
    device). `copy=False`: zero-copy, shares memory with `x`; do not write into it."""
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    if len(x.devices()) != 1:
        raise ValueError(f"to_torch needs an array on one device; this one is on "
                         f"{len(x.devices())} (gather it first)")
    t = torch.from_dlpack(x)
    return t.clone() if copy else t


def to_jax(t: torch.Tensor, *, copy: bool = False) -> jax.Array:
    """A JAX array with the values, dtype and shape of `t` (on its device). Zero-copy
    (shares memory with `t`) unless `copy=True` or `t` is not contiguous."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    x = jax.dlpack.from_dlpack(t)
    return jnp.array(x, copy=True) if copy else x


def shares_memory(x: jax.Array, t: torch.Tensor) -> bool:
    """True when `x` and `t` are views of the same buffer."""
    return x.unsafe_buffer_pointer() == t.data_ptr()
