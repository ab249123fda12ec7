"""The kernels round a ring of 4 devices, primitive by primitive, against the same kernels on
one device (a ring of one block): values, global indices and gradients, with padding rows.

Forced host devices need XLA_FLAGS before jax is imported, so the ring runs in one
subprocess (4 forced CPU devices) that reports the largest differences as JSON.
"""

import json

import pytest
from conftest import python_on_devices

SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from hyperface_jax.engine import kernels, sphere
from hyperface_jax.engine.placement import pad_rows
from hyperface_jax.engine.ring import AXIS, Ring

n, m, d, tile = 30, 21, 6, 5  # padded to 32 and 24 rows: 8 and 6 a device, ragged tiles
ring = Ring(4)
mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
keys = jax.random.split(jax.random.key(0), 6)
x = sphere.random_unit_vectors(keys[0], n, d)
g = sphere.random_unit_vectors(keys[1], m, d)
idx = jax.random.randint(keys[2], (n, 4), 0, m)
w = jax.random.normal(keys[3], (n, 5))  # unequal cotangents per row and output column
xp, gp, idxp, wp = pad_rows(x, 32), pad_rows(g, 24), pad_rows(idx, 32), pad_rows(w, 32)

# name: (local(x, g, idx), ring(x, g, idx) on each device's rows, differentiable)
PRIMITIVES = {
    "nearest_self": (lambda x, g, i: kernels.nearest(x, x, True, tile_size=tile),
                     lambda x, g, i: kernels.nearest(x, x, True, ring, tile, "highest", n), True),
    "nearest_gallery": (lambda x, g, i: kernels.nearest(x, g, False, tile_size=tile),
                        lambda x, g, i: kernels.nearest(x, g, False, ring, tile, "highest", m),
                        True),
    "smooth_logsumexp": (lambda x, g, i: kernels.smooth(x, 10.0, "logsumexp", tile_size=tile),
                         lambda x, g, i: kernels.smooth(x, 10.0, "logsumexp", ring, tile,
                                                        "highest", n), True),
    "smooth_riesz": (lambda x, g, i: kernels.smooth(x, 10.0, "riesz", tile_size=tile),
                     lambda x, g, i: kernels.smooth(x, 10.0, "riesz", ring, tile, "highest", n),
                     True),
    "top_k_self": (lambda x, g, i: kernels.top_k(x, x, 5, True, tile_size=tile),
                   lambda x, g, i: kernels.top_k(x, x, 5, True, ring, tile, "highest", n), False),
    "top_k_gallery": (lambda x, g, i: kernels.top_k(x, g, 3, False, tile_size=tile),
                      lambda x, g, i: kernels.top_k(x, g, 3, False, ring, tile, "highest", m),
                      False),
    "gathered": (lambda x, g, i: kernels.gathered(x, g, i, tile_size=tile),
                 lambda x, g, i: kernels.gathered(x, g, i, ring, tile), True),
}


def values(out):
    return out[0] if isinstance(out, tuple) else out


def weighted(out, w):
    v = values(out)
    return jnp.sum(w[:, :v.shape[1]] * v) if v.ndim == 2 else jnp.sum(w[:, 0] * v)


def outputs_and_gradients(fn, w, differentiable, *args):
    # fn's outputs and, when differentiable, the gradient in x and g of a weighted sum of
    # its values: one compiled program.
    if not differentiable:
        return jax.jit(fn)(*args), None
    def loss(x, g, i):
        out = fn(x, g, i)
        return weighted(out, w), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(*args)
    return out, grads


report = {}
for name, (local, on_ring, differentiable) in PRIMITIVES.items():
    ring_fn = jax.shard_map(on_ring, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(AXIS)),
                            out_specs=P(AXIS))
    ours, dl = outputs_and_gradients(local, w, differentiable, x, g, idx)
    theirs, dr = outputs_and_gradients(ring_fn, wp, differentiable, xp, gp, idxp)
    r = {"values": float(jnp.max(jnp.abs(values(ours) - values(theirs)[:n]))),
         "value_size": float(jnp.max(jnp.abs(values(ours))))}
    if isinstance(ours, tuple):  # global indices of the partners
        r["indices_equal"] = bool(jnp.all(ours[1] == theirs[1][:n]))
    if differentiable:
        r["gradient"] = max(float(jnp.max(jnp.abs(a - b[:a.shape[0]]))) for a, b in zip(dl, dr))
        r["gradient_size"] = max(float(jnp.max(jnp.abs(a))) for a in dl)
        r["padding_gradient"] = max(float(jnp.max(jnp.abs(b[a.shape[0]:])))
                                    for a, b in zip(dl, dr))
    report[name] = r
print(json.dumps(report))
"""

NAMES = ["nearest_self", "nearest_gallery", "smooth_logsumexp", "smooth_riesz", "top_k_self",
         "top_k_gallery", "gathered"]


@pytest.fixture(scope="module")
def ring_report():
    r = python_on_devices(SCRIPT, devices=4)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", NAMES)
def test_each_kernel_round_four_devices_equals_one_device_in_values_and_gradients(
        ring_report, name):
    r = ring_report[name]
    assert r["values"] < 1e-6 * max(1.0, r["value_size"]), r
    assert r.get("indices_equal", True), r
    if "gradient" in r:
        assert r["gradient_size"] > 1e-2, r  # a zero gradient would pass trivially
        assert r["gradient"] < 1e-5 * max(1.0, r["gradient_size"]), r
        assert r["padding_gradient"] == 0.0, r
