"""Packing on many devices and hosts: references sharded by rows over a one-axis `Mesh`.

Layout. The references X (n x d), every optimizer-state leaf shaped like X, and the
gallery G (m x d) are split by rows over all devices of the mesh (axis ``"rows"``); each
device holds n/D rows of X and m/D rows of G. The PRNG key, the step and scalar optimizer
state are replicated. Nothing of size n x n, n x d or m x d is ever materialised on one
device during a step: the largest per-device buffer is a similarity tile of
min(tile_size, n/D) x n/D (docs/sharding.md has the measured figures).

Nearest neighbours by a ring. Each device searches its own rows against its own block, then
passes the block to the next device (`lax.ppermute`) D - 1 times, keeping the running
maximum, its global index and the partner vector itself. The backward pass of
``max_j <x_i, x_j>`` is ``x_j*`` for row i (the partner vector kept by the forward pass)
plus ``x_i`` scattered onto row j*, which may live on another device: the contributions
travel once more round the ring and each device adds those that land in its rows. Work per
device is O(n^2 d / D), traffic O(n d) per step; the same code serves the gallery term.

Mini-batch mode (paper Algorithm 2) samples the same rows as one device does
(`solver.batch_indices` is a pure function of (key, step)): every device fetches the batch
rows it owns, a `psum` assembles the B x d batch everywhere, each device takes its B/D
slice and runs the ring above on the batch, the gradient slices are gathered, and the
optimizer update of the batch rows (O(B d)) runs on every device before each writes back
the rows it owns. The update of the full arrays (full batch, or the dense mini-batch
update) runs outside `shard_map`, under `jit`'s automatic partitioning, so every optax
optimizer keeps its global semantics (e.g. whole-array norms in lamb).

Why `jax.shard_map` and not `jax.pmap`: pmap gives each device a separate program with a
leading device axis, needs the state reshaped to (D, n/D, d), and does not compose with
`jit`-partitioned code or with multi-host global arrays as directly; shard_map is one
`jit` program over global arrays whose shardings orbax saves and restores on any device
count, and it leaves the non-local parts (optimizer update, figures) to XLA's partitioner.

Multi-host: `initialize_distributed` calls `jax.distributed.initialize` from the flags or
the cluster's environment (TPU pods, SLURM, Open MPI, ...); every process runs the same
command and the mesh spans all processes' devices.
"""

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hyperface_jax import neighbors, objective, solver, sphere
from hyperface_jax.files import InputError

AXIS = "rows"
# Flags that choose where a run executes, not what it computes: a checkpoint written with
# one setting resumes with another.
PLACEMENT_FLAGS = ("devices", "coordinator_address", "num_processes", "process_id",
                   "distributed")


# Processes and devices --------------------------------------------------------------------

def initialize_distributed(c) -> None:
    """Join a multi-process run when the flags (or --distributed) ask for one.

    Must run before anything touches a JAX backend. Explicit: --coordinator_address with
    --num_processes and --process_id. Automatic: --distributed alone lets JAX read the
    cluster's environment (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes).
    """
    if not (c.coordinator_address or c.distributed):
        if c.num_processes or c.process_id >= 0:
            raise InputError("--num_processes/--process_id need --coordinator_address "
                             "(or --distributed for cluster auto-detection)")
        return
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if c.coordinator_address:
        if c.num_processes < 1 or not 0 <= c.process_id < c.num_processes:
            raise InputError(
                f"--coordinator_address={c.coordinator_address} needs --num_processes >= 1 and "
                f"0 <= --process_id < --num_processes, got {c.num_processes} and {c.process_id}")
        kwargs = dict(coordinator_address=c.coordinator_address,
                      num_processes=c.num_processes, process_id=c.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not join the multi-process run ({first[:200]})") from None


def make_mesh(devices: str) -> Mesh | None:
    """The one-axis mesh for --devices ('all' or a count); None for the single-device path.

    With one device the existing single-device solver runs (docs/sharding.md: the ring on a
    mesh of one gives the same numbers at the same speed, but lacks restarts and neighbour
    lists).
    """
    available = jax.devices()
    if devices == "all":
        count = len(available)
    else:
        try:
            count = int(devices)
        except ValueError:
            raise InputError(f"--devices must be 'all' or a positive count, got {devices!r}")\
                from None
        if not 1 <= count <= len(available):
            raise InputError(f"--devices={count} but {len(available)} device(s) are available "
                             f"({jax.default_backend()}); pass --devices=all or a smaller count")
        if jax.process_count() > 1 and count != len(available):
            raise InputError(f"--devices={count} in a run of {jax.process_count()} processes; "
                             "multi-process runs use every device: pass --devices=all")
    if count == 1 and jax.process_count() == 1:
        return None
    return Mesh(np.asarray(available[:count]), (AXIS,))


def is_writer() -> bool:
    """Process 0 alone writes outputs (every process takes part in checkpoints)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (no-op in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_compatible(c, n: int, restarts: int, mesh: Mesh) -> None:
    """Settings the sharded solver does not support, refused with the fix."""
    size = mesh.size
    if restarts > 1:
        raise InputError(f"--restarts={restarts} is not supported on {size} devices; "
                         "pass --restarts=1 or --devices=1")
    if c.neighbor_list_size:
        raise InputError(f"--neighbor_list_size is not supported on {size} devices yet; "
                         "pass --neighbor_list_size=0 or --devices=1")
    if n % size:
        raise InputError(
            f"n={n} identities do not split evenly over {size} devices; choose "
            f"--num_identities divisible by {size} or --devices dividing {n}")
    if c.batch_size not in (0, n) and c.batch_size % size:
        raise InputError(
            f"--batch_size={c.batch_size} does not split evenly over {size} devices; choose a "
            f"multiple of {size} (e.g. {c.batch_size // size * size or size})")


# Placement --------------------------------------------------------------------------------

def rows_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(state, mesh: Mesh):
    """Leaves shaped like the embeddings are split by rows; the rest is replicated."""
    shape = jnp.shape(state.embeddings)
    return jax.tree.map(
        lambda a: rows_sharding(mesh) if jnp.shape(a) == shape else replicated(mesh), state)


def _put(array, sharding):
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_state(state, mesh: Mesh):
    """A host-side (or single-device) state placed on the mesh; every process passes the same
    values (they are pure functions of the seed and the input files)."""
    return jax.tree.map(_put, state, state_shardings(state, mesh))


def init_state(embeddings, optimizer, key, mesh: Mesh):
    """`solver.init_state` on the mesh: the host's rows go straight to their devices and the
    optimizer state is created sharded, so no device holds a full (n, d) array."""
    x = _put(embeddings, rows_sharding(mesh))
    key = _put(key, replicated(mesh))

    def init(x, key):
        return solver.init_state(x, optimizer, key)

    shardings = state_shardings(jax.eval_shape(init, x, key), mesh)
    return jax.jit(init, out_shardings=shardings)(x, key)


def put_gallery(gallery, mesh: Mesh):
    """The gallery split by rows, padded to a multiple of the device count with copies of its
    first row (a duplicate never changes a nearest-neighbour value)."""
    if gallery is None:
        return None
    gallery = np.asarray(gallery, np.float32)
    pad = -gallery.shape[0] % mesh.size
    if pad:
        gallery = np.concatenate([gallery, np.repeat(gallery[:1], pad, axis=0)])
    return _put(gallery, rows_sharding(mesh))


def to_host(array) -> np.ndarray:
    """The full array on every process (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


# The ring ---------------------------------------------------------------------------------

def _shift(a, size: int):
    """Device i sends `a` to device i + 1 (mod size)."""
    return lax.ppermute(a, AXIS, [(i, (i + 1) % size) for i in range(size)])


def _ring_search(x, y, exclude_self, size, tile_size, precision):
    """For each local row of x: the largest <x_i, y_j> over the rows of y on every device,
    its global row index and the row y_j itself. Ties go to the lowest global index, as
    `jnp.argmax` does on one device."""
    me = lax.axis_index(AXIS)
    rows = y.shape[0]
    v, j = neighbors.nearest_neighbors(x, y, exclude_self=exclude_self, tile_size=tile_size,
                                       precision=precision)
    first = (y, v, me * rows + j, y[j])

    def visit(k, carry):
        block, best, best_index, best_vector = carry
        block = _shift(block, size)
        v, j = neighbors.nearest_neighbors(x, block, tile_size=tile_size, precision=precision)
        index = ((me - k) % size) * rows + j
        better = (v > best) | ((v == best) & (index < best_index))
        return (block, jnp.where(better, v, best), jnp.where(better, index, best_index),
                jnp.where(better[:, None], block[j], best_vector))

    _, v, index, vector = lax.fori_loop(1, size, visit, first)
    return v, index, vector


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def ring_nearest(x, y, exclude_self, size, tile_size, precision):
    """``(max_j <x_i, y_j>, global argmax)`` for the local rows of x against the rows of y on
    all `size` devices of the mesh axis (inside `shard_map`); differentiable in x and y.
    With ``exclude_self``, y is x and row i never matches itself."""
    v, index, _ = _ring_search(x, y, exclude_self, size, tile_size, precision)
    return v, index


def _ring_fwd(x, y, exclude_self, size, tile_size, precision):
    v, index, vector = _ring_search(x, y, exclude_self, size, tile_size, precision)
    return (v, index), (x, y, index, vector)


def _ring_bwd(exclude_self, size, tile_size, precision, residuals, cotangents):
    x, y, index, vector = residuals
    g = cotangents[0][:, None].astype(x.dtype)
    rows = y.shape[0]
    me = lax.axis_index(AXIS)

    def deliver(_, carry):
        contribution, target, dy = carry
        local = target - me * rows
        local = jnp.where((local >= 0) & (local < rows), local, rows)  # `rows`: dropped
        dy = dy.at[local].add(contribution, mode="drop")
        return _shift(contribution, size), _shift(target, size), dy

    _, _, dy = lax.fori_loop(0, size, deliver, (g * x, index, jnp.zeros_like(y)))
    return g * vector, dy


ring_nearest.defvjp(_ring_fwd, _ring_bwd)


def _smooth_block(x, y, temperature, kind, own, tile_size, precision):
    """Per local row, log sum_j exp(t h(<x_i, y_j>)) over one block y of partners; the self
    pairs are left out when `own` (a traced bool: y is x)."""
    n = x.shape[0]
    tiles, t = neighbors._tiles(x, tile_size)
    columns = jnp.arange(y.shape[0])

    def one_tile(args):
        tile_index, xt = args
        c = neighbors.similarity(xt, y, precision)
        self_pair = own & ((tile_index * t + jnp.arange(t))[:, None] == columns[None, :])
        z = jnp.where(self_pair, -jnp.inf, temperature * neighbors.pair_energy(c, kind))
        return jax.nn.logsumexp(z, axis=1)

    return lax.map(one_tile, (jnp.arange(tiles.shape[0]), tiles)).reshape(-1)[:n]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def ring_smooth(x, temperature, kind, size, tile_size, precision):
    """`neighbors.smooth_nearest_self` for the local rows of x against the rows of x on all
    devices (inside `shard_map`): per-block logsumexps combined along the ring."""
    def visit(k, carry):
        block, total = carry
        part = _smooth_block(x, block, temperature, kind, k == 0, tile_size, precision)
        return _shift(block, size), jnp.logaddexp(total, part)

    start = jnp.full_like(x[:, 0], -jnp.inf)
    _, total = lax.fori_loop(0, size, visit, (x, start))
    return total / temperature


def _ring_smooth_fwd(x, temperature, kind, size, tile_size, precision):
    values = ring_smooth(x, temperature, kind, size, tile_size, precision)
    return values, (x, temperature, values)


def _ring_smooth_bwd(kind, size, tile_size, precision, residuals, g):
    """The softmax weights of every pair, block by block round the ring: the local rows'
    gradient stays here, each visiting block's gradient travels with it and is home after
    `size` shifts."""
    x, temperature, values = residuals
    n, d = x.shape
    tiles, t = neighbors._tiles(x, tile_size)
    pad = tiles.shape[0] * t - n
    g_tiles = jnp.pad(g, (0, pad)).reshape(-1, t)  # padded rows carry g = 0
    v_tiles = jnp.pad(values, (0, pad)).reshape(-1, t)

    def visit(k, carry):
        block, d_block, dx = carry
        columns = jnp.arange(block.shape[0])

        def one_tile(d_block, args):
            tile_index, xt, gt, vt = args
            c = neighbors.similarity(xt, block, precision)
            self_pair = (k == 0) & ((tile_index * t + jnp.arange(t))[:, None] == columns[None, :])
            z = jnp.where(self_pair, -jnp.inf, temperature * neighbors.pair_energy(c, kind))
            w = (jnp.exp(z - temperature * vt[:, None]) * neighbors._pair_energy_slope(c, kind)
                 * gt[:, None])
            return (d_block + neighbors._dot(w.T, xt, precision),
                    neighbors._dot(w, block, precision))

        d_block, dx_tiles = lax.scan(
            one_tile, d_block, (jnp.arange(tiles.shape[0]), tiles, g_tiles, v_tiles))
        dx = dx + dx_tiles.reshape(-1, d)[:n]
        return _shift(block, size), _shift(d_block, size), dx

    _, d_home, dx = lax.fori_loop(0, size, visit, (x, jnp.zeros_like(x), jnp.zeros_like(x)))
    return dx + d_home, jnp.zeros_like(temperature)


ring_smooth.defvjp(_ring_smooth_fwd, _ring_smooth_bwd)


def _local_loss_and_grad(x, gallery, step, total_rows, config, size):
    """Inside shard_map: the HyperFace loss of all rows (replicated) and its gradient for the
    local rows `x` (`solver.make_step`'s loss_and_grad, on the ring)."""

    def loss(x):
        if config.objective == "max":
            v, _ = ring_nearest(x, x, True, size, config.tile_size, config.precision)
            if config.reduce == "mean":
                packing = lax.psum(jnp.sum(v), AXIS) / total_rows
            else:
                # The global maximum with jnp.max's gradient: shared equally by tied rows.
                top = v == lax.pmax(lax.stop_gradient(jnp.max(v)), AXIS)
                packing = lax.psum(jnp.sum(jnp.where(top, v, 0.0)), AXIS) / lax.psum(
                    jnp.sum(top), AXIS)
        else:
            temperature = jnp.asarray(objective.annealed_temperature(
                step, start=config.temperature_start, end=config.temperature_end,
                anneal_steps=config.anneal_steps), x.dtype)
            v = ring_smooth(x, temperature, config.objective, size, config.tile_size,
                            config.precision)
            if config.reduce == "mean":
                packing = lax.psum(jnp.sum(v), AXIS) / total_rows
            else:  # (1/t) logsumexp over all rows, as `objective.reduce_packing`
                top = lax.pmax(lax.stop_gradient(jnp.max(temperature * v)), AXIS)
                packing = (top + jnp.log(lax.psum(jnp.sum(jnp.exp(temperature * v - top)),
                                                  AXIS))) / temperature
        if gallery is None:
            regulariser = jnp.zeros((), x.dtype)
        else:
            near, _ = ring_nearest(x, gallery, False, size, config.tile_size, config.precision)
            regulariser = lax.psum(jnp.sum(1.0 - near), AXIS) / total_rows
        total = packing + config.alpha * regulariser
        return total, objective.LossTerms(total, packing, regulariser)

    (_, terms), g = jax.value_and_grad(loss, has_aux=True)(x)
    if config.project_gradient:
        g = sphere.tangent_component(g, x)
    return terms, g


def _owned(rows, local_rows):
    """Local positions of the global `rows` this device holds; `local_rows` where it does not."""
    local = rows - lax.axis_index(AXIS) * local_rows
    return jnp.where((local >= 0) & (local < local_rows), local, local_rows)


# Steps ------------------------------------------------------------------------------------

def make_step(optimizer, config: solver.SolverConfig, n: int, mesh: Mesh):
    """`step(state, gallery) -> (state, LossTerms)` on row-sharded state and gallery, the same
    mathematics as `solver.make_step` (pure, not yet jitted)."""
    if config.minibatch_update not in solver.MINIBATCH_UPDATES:
        raise ValueError(f"unknown --minibatch_update {config.minibatch_update!r}")
    objective.check_objective(config.objective)
    size = mesh.size
    full = solver.is_full_batch(config, n)
    local_rows = n // size
    smap = partial(jax.shard_map, mesh=mesh)

    def full_loss_and_grad(x, gallery, step):
        body = partial(_local_loss_and_grad, total_rows=n, config=config, size=size)
        specs = (P(AXIS), None if gallery is None else P(AXIS), P())
        return smap(body, in_specs=specs, out_specs=(P(), P(AXIS)))(x, gallery, step)

    def batch_loss_and_grad(x, rows, gallery, step):
        """The batch rows (replicated, B x d), their loss and gradient (split by rows)."""
        batch = rows.shape[0]
        block = batch // size

        def body(x, rows, gallery, step):
            at = _owned(rows, local_rows)
            mine = jnp.where((at < local_rows)[:, None], x[jnp.minimum(at, local_rows - 1)], 0)
            xb = lax.psum(mine, AXIS)  # exactly the batch rows: one owner each, others add 0
            part = lax.dynamic_slice_in_dim(xb, lax.axis_index(AXIS) * block, block)
            terms, g = _local_loss_and_grad(part, gallery, step, batch, config, size)
            return terms, xb, g

        specs = (P(AXIS), P(), None if gallery is None else P(AXIS), P())
        return smap(body, in_specs=specs, out_specs=(P(), P(), P(AXIS)))(x, rows, gallery, step)

    def take_rows(a, rows):
        def body(a, rows):
            at = _owned(rows, local_rows)
            mine = jnp.where((at < local_rows)[:, None], a[jnp.minimum(at, local_rows - 1)], 0)
            return lax.psum(mine, AXIS)
        return smap(body, in_specs=(P(AXIS), P()), out_specs=P())(a, rows)

    def put_rows(a, rows, values):
        def body(a, rows, values):
            return a.at[_owned(rows, local_rows)].set(values, mode="drop")
        return smap(body, in_specs=(P(AXIS), P(), P()), out_specs=P(AXIS))(a, rows, values)

    def apply(x, g, opt_state):
        updates, opt_state = optimizer.update(g, opt_state, x)
        return sphere.normalize_rows(optax.apply_updates(x, updates)), opt_state

    def step(state: solver.SolverState, gallery):
        x = state.embeddings
        shape = x.shape
        if full:
            terms, g = full_loss_and_grad(x, gallery, state.step)
            x, opt_state = apply(x, g, state.opt_state)
        else:
            rows = solver.batch_indices(state.key, state.step, n, config.batch_size)
            terms, xb, g_rows = batch_loss_and_grad(x, rows, gallery, state.step)
            if config.minibatch_update == "dense":
                g = put_rows(jnp.zeros_like(x), rows, g_rows)
                x, opt_state = apply(x, g, state.opt_state)
            else:
                is_row = partial(solver._is_row_leaf, shape=shape)
                row_state = jax.tree.map(
                    lambda a: take_rows(a, rows) if is_row(a) else a, state.opt_state)
                new_rows, row_state = apply(xb, g_rows, row_state)
                x = put_rows(x, rows, new_rows)
                opt_state = jax.tree.map(
                    lambda a, b: put_rows(a, rows, b) if is_row(a) else b,
                    state.opt_state, row_state)
        return state.replace(embeddings=x, opt_state=opt_state, step=state.step + 1), terms

    return step


def make_runner(optimizer, config: solver.SolverConfig, n: int, mesh: Mesh, shardings):
    """`run(state, gallery, num_steps) -> (state, LossTerms)`, jitted, like
    `solver.make_runner`; `shardings` (from `state_shardings`) pins the output layout."""
    step = make_step(optimizer, config, n, mesh)

    def run(state, gallery, num_steps):
        zero = jnp.zeros((), state.embeddings.dtype)
        terms = objective.LossTerms(zero, zero, zero)
        return lax.fori_loop(0, num_steps, lambda _, c: step(c[0], gallery), (state, terms))

    terms_sharding = objective.LossTerms(*[replicated(mesh)] * 3)
    return jax.jit(run, out_shardings=(shardings, terms_sharding))


def make_figures(mesh: Mesh, *, alpha: float, reduce: str, tile_size: int):
    """`figures(embeddings, gallery) -> (dict of floats, 0)`, as pack's figures function:
    `metrics.packing_figures` with the exact searches done on the ring (full float32
    precision), so no device holds X or an n x n block for the figures either."""
    from hyperface_jax import metrics

    size = mesh.size
    hi = lax.Precision.HIGHEST

    def nearest(x, gallery):
        nn, _, _ = _ring_search(x, x, True, size, tile_size, hi)
        if gallery is None:
            return nn, None
        return nn, _ring_search(x, gallery, False, size, tile_size, hi)[0]

    @jax.jit
    def figures(x, gallery):
        specs = P(AXIS), None if gallery is None else P(AXIS)
        nn, near = jax.shard_map(nearest, mesh=mesh, in_specs=specs, out_specs=specs)(x, gallery)
        return metrics.figures_from_nearest(nn, near, alpha=alpha, reduce=reduce)

    return lambda x, gallery: (metrics.to_python(figures(x, gallery)), 0)


_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "pred": 1, "s8": 1,
                "u8": 1, "f64": 8, "s64": 8, "u64": 8}


def largest_array_bytes(compiled) -> int:
    """Bytes of the largest array in a compiled program; for a sharded program that is the
    SPMD-partitioned module, i.e. per device (together with `compiled.memory_analysis()`)."""
    best = 0
    kinds = "|".join(_DTYPE_BYTES)
    for kind, dims in re.findall(rf"\b({kinds})\[([\d,]*)\]", compiled.as_text()):
        size = _DTYPE_BYTES[kind]
        for dim in filter(None, dims.split(",")):
            size *= int(dim)
        best = max(best, size)
    return best
