"""Full-batch (paper Algorithm 1) and stochastic mini-batch (Algorithm 2) packing solvers.

One step: gradient of the HyperFace loss, an optax update (the tangent projection, when
asked for, is a transform chained into the optimizer: `optimizers.on_sphere`), rows
renormalised onto the sphere. The step is written once for every placement
(`placement.Local`, `placement.Sharded`): the placement is a value passed in, which runs the
loss on each device's rows and moves mini-batch rows. The whole solver state is one
pytree (`SolverState`), so `jit`, checkpointing and sharding see a single object, and a
step is a pure function of it: the same state gives the same next state.

Mini-batch mode samples `batch_size` distinct rows per step as a pure function of
(key, step): each epoch is a fresh permutation of the rows, cut into `n // batch_size`
consecutive batches, so every row is visited once per epoch whatever the device count.
What the step does to rows outside the batch is `minibatch_update`:

- ``"sparse"`` (default): only the batch rows and their optimizer state change; rows
  outside the batch stay where they are (lazy-Adam style: the shared step count still
  advances). Measured to pack better than "dense" (README, benchmarks/minibatch_update.py).
- ``"dense"``: the batch gradient is scattered into a zero gradient for all rows and the
  optimizer updates every row, so momentum keeps moving rows outside the batch.

With neighbour lists a mini-batch step is a *listed* one: each batch row's partners are
its K nearest rows of the whole set (lists rebuilt over all rows, as in full batch), not
the other batch rows; the whole set is held fixed in the step, so only batch rows get a
gradient. With complete lists it equals the exact search of the batch against all rows.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from hyperface_jax.engine import kernels, neighbor_lists, nn_descent, objective, pytrees, sphere
from hyperface_jax.engine.choices import MINIBATCH_UPDATES, NEIGHBOR_REBUILDS
from hyperface_jax.engine.placement import LOCAL


@pytrees.dataclass
class SolverState:
    embeddings: jax.Array  # (n, d) float32, unit rows (zero padding rows on a mesh)
    opt_state: Any  # the optax state for `embeddings`
    key: jax.Array  # raw uint32 PRNG key; batch k of step t uses fold_in(key, ...)
    step: jax.Array  # int32 scalar: number of steps taken
    lists: Any = None  # neighbor_lists.NeighborLists when neighbour lists are on


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    alpha: float = 0.5
    objective: str = "max"
    reduce: str = "mean"
    temperature_start: float = 1.0  # smooth objectives: annealed geometrically ...
    temperature_end: float = 1e4  # ... to this ...
    anneal_steps: int = 1  # ... over this many steps
    batch_size: int = 0  # 0 or n: full batch
    minibatch_update: str = "sparse"
    tile_size: int = kernels.DEFAULT_TILE_SIZE
    precision: Any = "highest"
    # Neighbour lists (see neighbor_lists): 0 = exact search every step.
    neighbor_list_size: int = 0
    gallery_list_size: int = 4
    neighbor_refresh_every: int = 20
    neighbor_rebuild: str = "every"
    # With the "every" rule: refresh the packing lists by their neighbours' neighbours
    # (`nn_descent`) every this many steps between exact rebuilds; 0 = never.
    neighbor_descent_every: int = 0

    @property
    def uses_lists(self) -> bool:
        return self.neighbor_list_size > 0

    @property
    def rebuilds_by_displacement(self) -> bool:
        return self.uses_lists and self.neighbor_rebuild == "displacement"

    @property
    def descends(self) -> bool:
        return self.uses_lists and self.neighbor_descent_every > 0


def step_of(state: SolverState) -> int:
    """The step count as a Python int (the same in every restart of a batched state)."""
    return int(jnp.ravel(state.step)[0])


def is_full_batch(config: SolverConfig, n: int) -> bool:
    return config.batch_size in (0, n)


def epoch_order(key: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """The permutation of the rows that epoch `epoch` walks through."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)


def batch_indices(key: jax.Array, step: jax.Array, n: int, batch_size: int,
                  order: jax.Array | None = None) -> jax.Array:
    """The rows of mini-batch `step`: a slice of the permutation of the rows for its epoch
    (`order`, when the caller already holds that epoch's permutation)."""
    per_epoch = n // batch_size
    epoch, slot = jnp.divmod(step, per_epoch)
    if order is None:
        order = epoch_order(key, epoch, n)
    return lax.dynamic_slice(order, (slot * batch_size,), (batch_size,))


def check_sparse_compatible(opt_state, shape) -> None:
    """Row-sparse updates need every optimizer-state leaf to be per-row (a 2-D array with
    one row per embedding: (n, d), or (n, 1) for a per-row statistic such as Riemannian
    Adam's second moment) or shared (no axis of length n); factored states (adafactor's
    (n,) and (d,) factors) are neither."""
    n = shape[0]
    for leaf in jax.tree.leaves(opt_state):
        s = tuple(jnp.shape(leaf))
        if not _is_row_leaf(leaf, shape) and n in s:
            raise ValueError(
                f"this optimizer keeps a state of shape {s} that is neither per-row nor shared; "
                "use minibatch_update=dense with it")


def _is_row_leaf(leaf, shape) -> bool:
    s = tuple(jnp.shape(leaf))
    return len(s) == len(shape) and s[0] == shape[0]


def partner_search(config: SolverConfig, count: int, gallery_count: int | None,
                   placement=LOCAL):
    """`find(x, gallery) -> (neighbor_lists.Partners, margins)`: fresh neighbour lists of every
    row by exact search, on the placement's rows (`count` real rows, `gallery_count`
    gallery rows), and each row's margins (`neighbor_lists.search_partners`: the smooth
    objectives keep their whole top K, the hard maximum its nearest partner)."""
    k = min(config.neighbor_list_size, count - 1)
    kg = min(config.gallery_list_size, gallery_count or 1)
    displacement = config.rebuilds_by_displacement

    def local(x, gallery):
        search = placement.search(count, gallery_count, config.tile_size, config.precision)
        return neighbor_lists.search_partners(
            x, gallery, k, kg, search, spare=displacement and k < count - 1,
            gallery_spare=displacement and gallery_count is not None and kg < gallery_count,
            whole_list=config.objective != "max")

    return placement.rowwise(local, in_rows=(True, True), out_rows=True)


def partner_descent(config: SolverConfig, placement=LOCAL):
    """`descend(x, packing) -> packing`: the packing lists of every row refreshed by their
    neighbours' neighbours (`nn_descent.descend`), on the placement's rows."""
    def local(x, packing):
        return nn_descent.descend(x, packing, placement.search(
            None, None, config.tile_size, config.precision).ring)[1]

    return placement.rowwise(local, in_rows=(True, True), out_rows=True)


def stale_check(config: SolverConfig, count: int, gallery_count: int | None,
                placement=LOCAL):
    """`check(x, lists) -> bool scalar`: `neighbor_lists.may_be_stale` over every real row
    of the placement."""
    def local(x, anchor, margins):
        search = placement.search(count, gallery_count, config.tile_size, config.precision)
        return neighbor_lists.may_be_stale(x, anchor, margins, search, config.precision)

    run = placement.rowwise(local, in_rows=(True, True, True), out_rows=False)
    return lambda x, lists: run(x, lists.anchor, lists.margins)


def init_state(embeddings, optimizer: optax.GradientTransformation, key: jax.Array | int,
               gallery=None, config: SolverConfig | None = None, *, placement=LOCAL,
               count: int | None = None, gallery_count: int | None = None):
    """Step-0 state; `key` (or an int seed) drives the mini-batch order. With a `config`
    that uses neighbour lists, the lists are built here by exact search. `count` and
    `gallery_count` are the real (unpadded) row counts; by default all rows are real."""
    embeddings = jnp.asarray(embeddings, jnp.float32)
    if isinstance(key, int):
        key = jax.random.PRNGKey(key)
    lists = None
    if config is not None and config.uses_lists:
        count = embeddings.shape[0] if count is None else count
        if gallery is not None and gallery_count is None:
            gallery_count = gallery.shape[0]
        find = partner_search(config, count, gallery_count, placement)
        partners, margins = find(embeddings, gallery)
        lists = (neighbor_lists.fresh(partners, margins, embeddings)
                 if config.rebuilds_by_displacement
                 else neighbor_lists.fresh(partners, descending=config.descends))
    return SolverState(
        embeddings=embeddings,
        opt_state=optimizer.init(embeddings),
        key=key,
        step=jnp.zeros((), jnp.int32),
        lists=lists,
    )


def make_step(optimizer: optax.GradientTransformation, config: SolverConfig, n: int, *,
              placement=LOCAL, gallery_count: int | None = None):
    """`step(state, gallery, order=None) -> (state, LossTerms)`, pure (not yet jitted).

    `n` and `gallery_count` are the real row counts (the placement may pad its arrays);
    `gallery_count` defaults to the rows of the gallery passed to the step.
    """
    if config.minibatch_update not in MINIBATCH_UPDATES:
        raise ValueError(
            f"unknown minibatch_update {config.minibatch_update!r}; "
            f"choose one of {', '.join(MINIBATCH_UPDATES)}")
    full = is_full_batch(config, n)
    if config.neighbor_rebuild not in NEIGHBOR_REBUILDS:
        raise ValueError(f"unknown neighbor_rebuild {config.neighbor_rebuild!r}; "
                         f"choose one of {', '.join(NEIGHBOR_REBUILDS)}")
    if config.descends and config.rebuilds_by_displacement:
        raise ValueError("refreshes by neighbours' neighbours need neighbor_rebuild='every' "
                         "(the displacement bound needs exact margins)")
    objective.check_objective(config.objective)
    smooth = config.objective != "max"

    def real_gallery_rows(gallery):
        """The gallery's real (unpadded) rows: `gallery_count`, or all its rows."""
        if gallery_count is not None or gallery is None:
            return gallery_count
        return gallery.shape[0]

    def gradient(x, gallery, step, partners, count, listed_rows=None):
        """Loss terms over `count` real rows of x, and the gradient of every row of x.
        `listed_rows`: the rows the lists index when they are not x (a listed mini-batch:
        the whole set, held fixed: only the batch rows get a gradient)."""
        m = real_gallery_rows(gallery)
        temperature = objective.annealed_temperature(
            step, start=config.temperature_start, end=config.temperature_end,
            anneal_steps=config.anneal_steps) if smooth else jnp.float32(0)

        def local(x, gallery, partners, temperature, listed_rows):
            search = placement.search(count, m, config.tile_size, config.precision)
            if listed_rows is not None:
                listed_rows = lax.stop_gradient(listed_rows)

            def loss(x):
                return objective.hyperface_loss(
                    x, gallery, config.alpha, objective=config.objective,
                    reduce=config.reduce, temperature=temperature if smooth else None,
                    search=search, lists=partners, listed_rows=listed_rows, count=count)

            (_, terms), g = jax.value_and_grad(loss, has_aux=True)(x)
            return terms, g

        return placement.rowwise(local, in_rows=(True, True, True, False, True),
                                 out_rows=(False, True))(x, gallery, partners, temperature,
                                                         listed_rows)

    def apply(x, g, opt_state):
        updates, opt_state = optimizer.update(g, opt_state, x)
        return sphere.normalize_rows(optax.apply_updates(x, updates)), opt_state

    def refreshed(state, gallery):
        """The neighbour lists for this step: rebuilt (and audited) when the displacement
        bound says one may be stale, or every `neighbor_refresh_every` steps; between
        rebuilds, refreshed by neighbours' neighbours every `neighbor_descent_every` steps."""
        m = real_gallery_rows(gallery)
        x = state.embeddings
        if config.rebuilds_by_displacement:
            due = stale_check(config, n, m, placement)(x, state.lists)
        else:
            due = (state.step > 0) & (state.step % config.neighbor_refresh_every == 0)
        find = partner_search(config, n, m, placement)

        def rebuild():
            partners, margins = find(x, gallery)
            if not config.rebuilds_by_displacement:
                return neighbor_lists.audited(state.lists, partners, n)
            return neighbor_lists.audited(state.lists, partners, n, margins, x)

        def between():
            if not config.descends:
                return state.lists
            descend = partner_descent(config, placement)
            return lax.cond(
                (state.step > 0) & (state.step % config.neighbor_descent_every == 0),
                lambda: neighbor_lists.descended(state.lists, descend(x, state.lists.packing)),
                lambda: state.lists)

        return lax.cond(due, rebuild, between)

    def step(state: SolverState, gallery, order=None):
        """`order`: optionally, the current epoch's row permutation (mini-batch mode)."""
        x = state.embeddings
        lists = state.lists
        if full:
            partners = None
            if config.uses_lists:
                lists = refreshed(state, gallery)
                partners = neighbor_lists.Partners(lists.packing, lists.gallery)
            terms, g = gradient(x, gallery, state.step, partners, n)
            x, opt_state = apply(x, g, state.opt_state)
        else:
            rows = batch_indices(state.key, state.step, n, config.batch_size, order)
            xb = placement.take_rows(x, rows)
            partners = listed_rows = None
            if config.uses_lists:
                # A listed mini-batch: the batch rows' partners are their listed nearest
                # rows of the whole set (not the other batch rows), at their current place.
                lists = refreshed(state, gallery)
                partners = neighbor_lists.Partners(
                    placement.take_rows(lists.packing, rows),
                    None if lists.gallery is None else placement.take_rows(lists.gallery, rows))
                listed_rows = x
            terms, g_rows = gradient(xb, gallery, state.step, partners, config.batch_size,
                                     listed_rows)
            if config.minibatch_update == "dense":
                g = placement.put_rows(jnp.zeros_like(x), rows, g_rows)
                x, opt_state = apply(x, g, state.opt_state)
            else:
                shape = x.shape
                row_state = jax.tree.map(
                    lambda a: placement.take_rows(a, rows) if _is_row_leaf(a, shape) else a,
                    state.opt_state)
                new_rows, row_state = apply(xb, g_rows, row_state)
                x = placement.put_rows(x, rows, new_rows)
                opt_state = jax.tree.map(
                    lambda a, b: placement.put_rows(a, rows, b) if _is_row_leaf(a, shape) else b,
                    state.opt_state, row_state)
        return state.replace(embeddings=x, opt_state=opt_state, step=state.step + 1,
                             lists=lists), terms

    return step


def make_runner(optimizer: optax.GradientTransformation, config: SolverConfig, n: int, *,
                restarts: int = 1, placement=LOCAL, gallery_count: int | None = None,
                template=None, donate: bool = False):
    """`run(state, gallery, num_steps) -> (state, LossTerms of the last step)`, jitted.

    `num_steps` is a traced value (a while loop), so every chunk length shares one
    compiled program and a resumed run executes exactly the same code. With
    ``restarts > 1`` the state carries a leading restart axis and the loop is vmapped.
    With `donate` the state argument is donated (its buffers are reused for the result,
    so the n x d state is not copied per call: pass a state you no longer need; `pack`
    does); `template` (a state or its shapes) pins the output layout on a mesh.
    """
    step = make_step(optimizer, config, n, placement=placement, gallery_count=gallery_count)
    minibatch = not is_full_batch(config, n)
    per_epoch = n // config.batch_size if minibatch else 1

    def run(state, gallery, num_steps):
        zero = jnp.zeros((), state.embeddings.dtype)
        terms = objective.LossTerms(zero, zero, zero, zero)
        if not minibatch:
            return lax.fori_loop(0, num_steps, lambda _, c: step(c[0], gallery), (state, terms))

        # The epoch's permutation (O(n log n)) is drawn once per epoch, not once per step,
        # so a mini-batch step costs O(B^2 d + B m d) whatever n; the rows are the same as
        # `batch_indices(key, step, ...)` gives, so resuming anywhere is unchanged.
        def order_at(s):
            return epoch_order(state.key, s // per_epoch, n)

        def body(_, c):
            state, terms, order = c
            order = lax.cond(state.step % per_epoch == 0, lambda: order_at(state.step),
                             lambda: order)
            state, terms = step(state, gallery, order)
            return state, terms, order

        state, terms, _ = lax.fori_loop(0, num_steps, body,
                                        (state, terms, order_at(state.step)))
        return state, terms

    if restarts > 1:
        run = jax.vmap(run, in_axes=(0, None, None))
    return placement.jit(run, template, donate=donate)
