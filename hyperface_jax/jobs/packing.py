"""The packing job (what `python -m hyperface_jax.pack` and `pack_references` run).

Builds the problem, the placement and the solver (`plan`), runs the loop with progress,
exact figures and checkpoints, writes `embeddings.npy`, `report.json`, `history.jsonl` and
`curves.png` into --out_dir. Re-running the same command on the same --out_dir resumes
from the latest checkpoint. The notebook API (`hyperface_jax.pack_references`) runs the
same `plan` and loop, in memory. Exit codes: 0 success, 2 bad input (one line on stderr,
nothing written), 1 failure (one line, e.g. a run that diverged; the last verified
checkpoint is kept, or nothing when there is none), 130 interrupted (after saving a
checkpoint). Every entry point (CLI and API) holds --out_dir's lock while it runs.
"""

import dataclasses
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from hyperface_jax import cli
from hyperface_jax.engine import kernels, mesh, neighbor_lists, optimizers, search, solver
from hyperface_jax.engine.placement import LOCAL, Sharded
from hyperface_jax.io import checkpoint, runs
from hyperface_jax.io.files import (
    InputError,
    RunFailed,
    atomic_write,
    save_embeddings,
    save_json,
    unit_row_error,
)
from hyperface_jax.jobs.config import PackConfig
from hyperface_jax.jobs.flag_errors import flag_error
from hyperface_jax.jobs.problem import Problem, build_problem, effective_config
from hyperface_jax.measure import bounds, estimates, metrics

# Flags that may change between a run and its resumption (they do not alter the state).
RUN_LENGTH_FLAGS = ("out_dir", "steps", "checkpoint_every", "max_to_keep", "log_every", "progress")
# Flags that choose where a run executes, not what it computes: a checkpoint written with
# one setting resumes with another.
PLACEMENT_FLAGS = ("devices", "coordinator_address", "num_processes", "process_id",
                   "distributed")
# The flags the optimizer's builders take as arguments of the same names.
OPTIMIZER_FLAGS = ("optimizer", "learning_rate", "schedule", "decay_every", "decay_rate",
                   "final_learning_rate", *optimizers.HYPER_FLAGS)
# Row norms further than this from 1 after a chunk mean the run has broken down.
NORM_TOLERANCE = 1e-3


# Planning: everything that can be checked before a file is written --------------------------

def build_optimizer(c: PackConfig, *, polish: bool = False) -> optax.GradientTransformation:
    try:
        if polish:
            schedule = optax.constant_schedule(c.polish_learning_rate)
        else:
            schedule = optimizers.make_schedule(
                c.schedule, c.learning_rate, steps=c.steps, decay_rate=c.decay_rate,
                decay_every=c.decay_every, final_learning_rate=c.final_learning_rate)
        base = optimizers.make_optimizer(c.optimizer, schedule, **c.optimizer_hyperparameters())
    except ValueError as e:
        raise flag_error(e, OPTIMIZER_FLAGS) from None
    return optimizers.on_sphere(base, project_gradient=c.project_gradient)


def tile_size_of(c: PackConfig) -> int:
    return c.tile_size or kernels.default_tile_size()


def solver_config(c: PackConfig, *, polish: bool = False) -> solver.SolverConfig:
    return solver.SolverConfig(
        alpha=c.alpha,
        objective="max" if polish else c.objective,
        reduce="max" if polish else c.packing_reduce,
        temperature_start=c.temperature_start, temperature_end=c.temperature_end,
        anneal_steps=c.anneal_steps or c.steps,
        batch_size=c.batch_size, minibatch_update=c.minibatch_update,
        tile_size=tile_size_of(c), precision=c.matmul_precision,
        neighbor_list_size=0 if polish else c.neighbor_list_size,
        gallery_list_size=c.gallery_list_size, neighbor_refresh_every=c.neighbor_refresh_every,
        neighbor_rebuild=c.neighbor_rebuild, neighbor_descent_every=c.neighbor_descent_every)


def horizon_flags(c: PackConfig) -> tuple[str, ...]:
    """Flags whose change on resume would silently change the run: --steps when it sets a
    schedule's horizon (cosine, geometric, or temperature annealing over --steps)."""
    annealed = c.objective != "max" and c.anneal_steps == 0
    return ("steps",) if c.schedule in ("cosine", "geometric") or annealed else ()


def option_defaults() -> dict:
    """Each pack option's default: a checkpoint written before an option existed ran with
    the behaviour its default keeps, so it resumes under that default."""
    return {f.name: f.default for f in dataclasses.fields(PackConfig)}


def run_identity(c: PackConfig, problem: Problem) -> dict:
    """What a resumed run must share with the run that wrote the checkpoints."""
    free = set(RUN_LENGTH_FLAGS + PLACEMENT_FLAGS) - set(horizon_flags(c))
    identity = {k: v for k, v in c.flag_values().items() if k not in free}
    identity.update(n=problem.n, d=problem.d, **problem.fingerprint())
    return identity


@dataclasses.dataclass
class Plan:
    """A packing job ready to run: the problem, where it runs, and its compiled parts."""
    config: PackConfig
    problem: Problem
    placement: Any
    state: solver.SolverState  # step 0, on the placement
    gallery: Any  # on the placement (None without one)
    runners: tuple  # (main, polish or None): run(state, gallery, num_steps)
    figures: Any  # figures(state) -> (dict of floats, index of the best restart)
    identity: dict
    compile_seconds: float

    @property
    def total_steps(self) -> int:
        return self.config.steps + self.config.polish_steps

    def runner_at(self, step: int):
        return self.runners[0] if step < self.config.steps else self.runners[1]


def check_sparse(c: PackConfig, optimizer, n: int, d: int) -> None:
    """A user's optimizer must run on (n, d) rows; sparse mini-batch updates need an
    optimizer state that is per-row or shared (not a factored one): refused up front, from
    the state's shapes alone."""
    try:
        optimizers.check_user_optimizer(c.optimizer, optimizer, (n, d))
    except ValueError as e:
        raise InputError(str(e)) from None
    if c.batch_size in (0, n) or c.minibatch_update != "sparse":
        return
    state = jax.eval_shape(optimizer.init, jax.ShapeDtypeStruct((n, d), jnp.float32))
    try:
        solver.check_sparse_compatible(state, (n, d))
    except ValueError as e:
        raise InputError(f"--optimizer={c.optimizer}: {flag_error(e, ('minibatch_update',))}") \
            from None


def join_distributed(c: PackConfig) -> None:
    """Join a multi-process run when the placement flags ask (idempotent); before any JAX
    call, and before the out_dir lock, whose holder is the runtime's process 0."""
    try:
        mesh.initialize_distributed(c.coordinator_address, c.num_processes, c.process_id,
                                    c.distributed)
    except ValueError as e:
        raise flag_error(e, PLACEMENT_FLAGS) from None


def make_placement(c: PackConfig):
    """`LOCAL`, or a `Sharded` placement over --devices (joining a multi-process run first
    when asked)."""
    join_distributed(c)
    try:
        devices = mesh.make_mesh(c.devices)
    except ValueError as e:
        raise flag_error(e, PLACEMENT_FLAGS) from None
    return LOCAL if devices is None else Sharded(devices)


def _initial_state(problem: Problem, optimizer, config, placement, gallery):
    """The step-0 state, built where its rows live (no device holds another's rows)."""
    batched = problem.restarts > 1

    # The gallery is an argument, not a closed-over constant: on several processes it spans
    # devices this process cannot address, and jit refuses to embed such an array.
    def init(x, gallery):
        return solver.init_state(x, optimizer, problem.batch_key, gallery, config,
                                 placement=placement, count=problem.n, gallery_count=problem.m)
    init = jax.vmap(init, in_axes=(0, None)) if batched else init
    x = placement.put(problem.inits if batched else problem.init, problem.n, batched)
    layout = placement.shardings(jax.eval_shape(init, x, gallery), placement.padded(problem.n),
                                 batched)
    return jax.jit(init, out_shardings=layout)(x, gallery)


def _figures_fn(c: PackConfig, problem: Problem, placement):
    """`figures(state, gallery) -> (dict of floats, index of the best restart)`: exact over
    every row, or (--figure_sample) from the same random rows at every call."""
    if c.figure_sample:
        one = jax.jit(partial(_sampled_figures, rows=_figure_rows(c, problem), n=problem.n,
                              m=problem.m, alpha=c.alpha, reduce=c.packing_reduce,
                              tile_size=tile_size_of(c)))
    else:
        one = jax.jit(partial(metrics.figures, placement=placement, count=problem.n,
                              gallery_count=problem.m, alpha=c.alpha, reduce=c.packing_reduce,
                              tile_size=tile_size_of(c)))
    if problem.restarts == 1:
        return lambda state, g: ({k: float(v) for k, v in jax.device_get(
            one(state.embeddings, g)).items()}, 0)
    batched = jax.jit(jax.vmap(one, in_axes=(0, None)))

    def figures(state, g):
        values = jax.device_get(batched(state.embeddings, g))
        best = int(np.argmin(values["max_cos"]))
        return {k: float(v[best]) for k, v in values.items()}, best
    return figures


def _figure_rows(c: PackConfig, problem: Problem):
    """The rows --figure_sample searches: drawn once from the seed, the same at every step
    (build_problem has checked that there are that many rows)."""
    key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 1)
    return estimates.draw_sample(key, problem.n, c.figure_sample)


def _sampled_nearest(x, gallery, rows, n, m, tile_size):
    """Each sampled row's exact nearest-neighbour cosine among the n real rows, and to the
    m real gallery rows (None without a gallery)."""
    nn, _ = estimates.sample_nearest(x, rows, tile_size=tile_size, count=n)
    if gallery is None:
        return nn, None
    near, _ = estimates.sample_nearest(gallery, rows, tile_size=tile_size, count=m,
                                       queries=x[rows], exclude_self=False)
    return nn, near


def _sampled_figures(x, gallery, *, rows, n, m, alpha, reduce, tile_size):
    nn, near = _sampled_nearest(x, gallery, rows, n, m, tile_size)
    return metrics.figures_from_nearest(nn, near, alpha=alpha, reduce=reduce)


def figure_estimates(p: "Plan", state, best: int) -> dict | None:
    """With --figure_sample: what the sample says about the final rows and how sure it is
    (`estimates.summarize`: the worst pair's lower bound, the mean's interval)."""
    c = p.config
    if not c.figure_sample:
        return None
    x = state.embeddings if p.problem.restarts == 1 else state.embeddings[best]
    return estimates.summarize_rows(x, _figure_rows(c, p.problem), count=p.problem.n,
                                    tile_size=tile_size_of(c))


def plan(c: PackConfig, *, gallery=None, init=None) -> Plan:
    """Validate `c` (and in-memory `gallery` / `init` arrays, which take the place of the
    files), place the problem and compile its runners. Writes nothing."""
    c = effective_config(c, has_gallery=gallery is not None or bool(c.gallery))
    placement = make_placement(c)  # first: joining a multi-process run precedes any JAX call
    problem = build_problem(c, gallery=gallery, init=init)
    optimizer = build_optimizer(c)
    config = solver_config(c)
    check_sparse(c, optimizer, problem.n, problem.d)
    placed_gallery = placement.put_gallery(problem.gallery)
    state = _initial_state(problem, optimizer, config, placement, placed_gallery)

    t = time.perf_counter()
    no_steps = jnp.int32(0)

    def compiled(optimizer, config):
        run = solver.make_runner(optimizer, config, problem.n, restarts=problem.restarts,
                                 placement=placement, gallery_count=problem.m,
                                 template=state, donate=True)
        return run.lower(state, placed_gallery, no_steps).compile()

    runners = (compiled(optimizer, config),
               compiled(build_optimizer(c, polish=True), solver_config(c, polish=True))
               if c.polish_steps else None)
    return Plan(c, problem.shapes_only(), placement, state, placed_gallery, runners,
                _figures_fn(c, problem, placement), run_identity(c, problem),
                time.perf_counter() - t)


# The run: checkpoints, history, the loop, the report -----------------------------------------

class History:
    """Exact figures every --log_every steps, in memory and (with a path) in a JSON-lines
    file that a resumed run truncates to its checkpoint."""

    def __init__(self, path: Path | None, upto: int, writer: bool):
        self.path, self.writer = path, writer
        self.entries = _read_history(path, upto) if path else []
        if path and writer:
            save_json_lines(path, self.entries)

    def record(self, entry: dict) -> dict:
        self.entries.append(entry)
        if self.path and self.writer:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry, allow_nan=False) + "\n")
        return entry

    @property
    def seconds(self) -> float:
        return self.entries[-1]["seconds"] if self.entries else 0.0


def _read_history(path: Path, upto: int) -> list[dict]:
    """Logged figures of earlier sessions up to the restored step. A torn last line (a
    kill while appending) is dropped; any other line that is not an entry is refused."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    history = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        entry = _history_entry(line)
        if entry is None:
            if number == len(lines):  # no newline after it: torn
                continue
            raise InputError(f"{path} line {number} is not a logged step ({line[:40]!r}); "
                             "delete the file to resume without the earlier figures, or "
                             "use a new --out_dir")
        if entry["step"] <= upto:
            history.append(entry)
    return history


def _history_entry(line: bytes) -> dict | None:
    """The entry a history line holds, None if it holds none."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None
    numbers = ("seconds", "max_cos", "mean_nn_cos")
    if not (isinstance(entry, dict) and type(entry.get("step")) is int
            and all(isinstance(entry.get(k), (int, float)) for k in numbers)):
        return None
    return entry


def save_json_lines(path: Path, entries: list[dict]) -> None:
    """Rewrite a JSON-lines file atomically (drops lines past a restored checkpoint)."""
    text = "".join(json.dumps(e) + "\n" for e in entries)
    atomic_write(path, lambda f: f.write(text.encode()))


def next_boundary(step: int, c: PackConfig) -> int:
    """The next step at which the loop logs, checkpoints, or switches to polishing."""
    def up(k):
        return (step // k + 1) * k
    ends = [c.steps + c.polish_steps] + ([c.steps] if step < c.steps else [])
    return min(up(c.log_every), up(c.checkpoint_every), *ends)


@partial(jax.jit, static_argnums=1)
def _health(x, n: int):
    """Of the n real rows (padding rows dropped): (all entries finite, largest |row norm - 1|,
    every row zero), as scalars."""
    x = x[..., :n, :]
    norms = jnp.linalg.norm(x, axis=-1)
    return (jnp.isfinite(x).all(), jnp.max(jnp.abs(norms - 1.0)), jnp.all(norms == 0))


def check_finite(embeddings, n: int, step: int, c: PackConfig) -> None:
    """Stop a run whose rows are no longer finite unit vectors (exit 1, one line)."""
    finite, off, zero = jax.device_get(_health(embeddings, n))
    if finite and off <= NORM_TOLERANCE:
        return
    what = "every row collapsed to zero" if zero else "rows are no longer finite unit vectors"
    suspects = [f"--learning_rate={c.learning_rate}"]
    if c.gallery:
        suspects.append(f"--alpha={c.alpha}")
    if c.objective != "max":
        suspects.append(f"--temperature_end={c.temperature_end}")
    raise RunFailed(f"the run diverged by step {step}: {what}; check {', '.join(suspects)}")


def run_loop(p: Plan, state, step: int, history: History, *, save, log, progress: bool):
    """Advance `state` from `step` to the end in chunks: figures every --log_every steps,
    `save(state)` every --checkpoint_every steps and at the end; a first Ctrl-C/SIGTERM
    stops at the end of the current chunk (saved), a second stops at once."""
    c, stepping, steps_run, terms = p.config, 0.0, 0, None
    start_seconds = history.seconds
    bar = tqdm(total=p.total_steps, initial=step, disable=not progress, unit="step",
               dynamic_ncols=True, file=sys.stderr)
    with cli.deferred_interrupts() as interrupt, bar:
        while step < p.total_steps:
            target = next_boundary(step, c)
            t = time.perf_counter()
            new_state, terms = p.runner_at(step)(state, p.gallery, jnp.int32(target - step))
            state = jax.block_until_ready(new_state)
            stepping += time.perf_counter() - t
            check_finite(state.embeddings, p.problem.n, target, c)
            bar.update(target - step)
            steps_run, step = steps_run + target - step, target
            if step % c.log_every == 0 or step in (c.steps, p.total_steps):
                entry = record(p, state, step, start_seconds + stepping, history)
                bar.set_postfix(max_cos=f"{entry['max_cos']:.4f}",
                                mean_nn=f"{entry['mean_nn_cos']:.4f}")
                if not progress:
                    log(f"step {step}: loss={entry['loss']:.5f} max_cos={entry['max_cos']:.5f} "
                        f"mean_nn_cos={entry['mean_nn_cos']:.5f}")
            if step % c.checkpoint_every == 0 or step == p.total_steps:
                save(state)
            if interrupt.requested and step < p.total_steps:
                save(state)
                if history.entries[-1]["step"] != step:
                    record(p, state, step, start_seconds + stepping, history)
                log(f"interrupted: saved a checkpoint at step {step}; re-run the same command "
                    "to resume")
                raise KeyboardInterrupt
    return state, terms, stepping, steps_run


def record(p: Plan, state, step: int, seconds: float, history: History) -> dict:
    figures, best = p.figures(state, p.gallery)
    entry = {"step": step, "seconds": round(seconds, 4), **figures}
    if p.problem.restarts > 1:
        entry["restart"] = best
    return history.record(entry)


def make_report(p: Plan, history: History, *, step, started, stepping, steps_run,
                resumed_from, last_terms, lists_audit, estimated=None) -> dict:
    c, problem = p.config, p.problem
    final = _figures_only(history.entries[-1])
    bound = bounds.bound_max_cos(problem.n, problem.d)
    optimised = None
    if last_terms is not None:
        best = history.entries[-1].get("restart", 0)
        pick = (lambda a: float(np.ravel(a)[best]))
        smoothed = c.objective != "max" and step <= c.steps  # polishing: the hard maximum
        temperature = pick(last_terms.temperature) if smoothed else None
        optimised = {"objective": c.objective if step <= c.steps else "max (polish)",
                     "reduce": c.packing_reduce if step <= c.steps else "max",
                     "temperature": temperature,
                     "loss": pick(last_terms.total), "packing": pick(last_terms.packing),
                     "regulariser": pick(last_terms.regulariser),
                     "note": "the optimised objective at the start of the last step; "
                             "figures.loss is the packing_objective's loss, exact"}
    return {
        "figures": final,
        # --figure_sample: figures (and history) are sample statistics; max_cos is a lower
        # bound of the worst pair (gap_to_bound too); the statements are under "estimates".
        "figures_are_estimates": estimated is not None,
        "estimates": estimated,
        "initial_figures": _figures_only(history.entries[0]),
        "optimised_loss": optimised,
        "packing_objective": search.packing_objective(c.packing_reduce),
        "bound_max_cos": bound,
        "gap_to_bound": final["max_cos"] - bound,
        "n": problem.n, "d": problem.d, "m": problem.m,
        "steps": step,
        "restart_kept": history.entries[-1].get("restart") if problem.restarts > 1 else None,
        "neighbor_list_audit": lists_audit,
        "resumed_from_step": resumed_from,
        "flags": c.flag_values(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "sharded_over_devices": p.placement.size,
        "devices": [str(dev) for dev in jax.devices()],
        "wall_seconds": round(time.time() - started, 3),
        "compile_seconds": round(p.compile_seconds, 3),
        "seconds_per_step": round(stepping / steps_run, 6) if steps_run else None,
        "stepping_seconds_total": round(history.seconds, 3),
        "history": history.entries,
    }


def _figures_only(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("step", "seconds", "restart")}


def final_embeddings(p: Plan, state, best: int) -> np.ndarray:
    """The kept restart's rows on the host, without padding (a collective on a mesh)."""
    x = state.embeddings if p.problem.restarts == 1 else state.embeddings[best]
    return p.placement.to_host(x)[: p.problem.n]


def check_outputs(embeddings: np.ndarray, report: dict) -> None:
    """What pack promises: finite unit rows and finite figures (else exit 1)."""
    finite, off, _ = unit_row_error(embeddings)
    if not finite or off > NORM_TOLERANCE:
        raise RunFailed("the final embeddings are not finite unit rows; nothing was written")
    bad = [k for k, v in report["figures"].items() if not math.isfinite(v)]
    if bad:
        raise RunFailed(f"the final figures {bad} are not finite; nothing was written")


def run(c: PackConfig, *, log=None) -> dict:
    """Run (or resume) a packing job; returns the report that is also written to disk."""
    return run_job(c, log=log)[0]


def run_job(c: PackConfig, *, log=None, gallery=None, init=None) -> tuple[dict, np.ndarray]:
    """Run (or resume) a packing job: (report, embeddings without padding). With
    --out_dir, outputs and checkpoints are written there, under its lock (whichever entry
    point started the job: the first process of a multi-process run holds it); without
    (the API), nothing is written. In-memory `gallery` / `init` arrays take the place of
    the files."""
    if not c.out_dir:
        return _run_job(c, log=log, gallery=gallery, init=init)
    join_distributed(c)  # the runtime's process index decides who locks
    with runs.claimed(c.out_dir, "--out_dir", primary=mesh.is_writer()), \
            checkpoint.quiet_library_errors():
        return _run_job(c, log=log, gallery=gallery, init=init)


def _run_job(c: PackConfig, *, log, gallery, init) -> tuple[dict, np.ndarray]:
    started = time.time()
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    p = plan(c, gallery=gallery, init=init)
    writer = mesh.is_writer()  # process 0 alone writes outputs
    if not writer:
        log = lambda msg: None  # noqa: E731
    out = Path(c.out_dir) if c.out_dir else None
    state, manager, resumed_from = p.state, None, None
    if out is not None:
        state, manager, resumed_from = checkpoint.resume(out, p.state, p.identity,
                                                         total_steps=p.total_steps,
                                                         writer=writer, log=log,
                                                         max_to_keep=c.max_to_keep,
                                                         defaults=option_defaults())
    p.state = None  # the step-0 state: donated below, or superseded by a checkpoint
    step = solver.step_of(state)
    # A run that starts over keeps no history of an earlier attempt.
    history = History(out / "history.jsonl" if out else None,
                      step if resumed_from is not None else -1, writer)
    mesh.barrier("history read")
    if not history.entries:
        record(p, state, step, 0.0, history)
    _log_start(p, step, history.entries[-1], log)

    def save(state):
        if manager is not None:  # written before the run goes on: the host copy of the
            checkpoint.save(manager, state)  # state is freed at once (peak memory at 1M)
            manager.wait_until_finished()
    try:
        state, terms, stepping, steps_run = run_loop(
            p, state, step, history, save=save, log=log, progress=c.progress and writer)
    except RunFailed as e:
        kept = ("nothing was written" if manager is None
                else checkpoint.discard_unresumable(out, manager))
        manager = None
        raise RunFailed(f"{e} ({kept})") from None
    except BaseException:  # an interrupt (its checkpoint saved) or a failed save
        if manager is not None:
            checkpoint.close_after_failure(manager)
        raise
    if manager is not None:
        manager.close()
    step = solver.step_of(state)
    if history.entries[-1]["step"] != step:
        record(p, state, step, history.seconds, history)
    best = history.entries[-1].get("restart", 0)
    audit = None
    if state.lists is not None:
        lists = state.lists if p.problem.restarts == 1 else jax.tree.map(lambda a: a[best],
                                                                         state.lists)
        audit = neighbor_lists.audit(lists, steps=min(step, c.steps))
    report = make_report(p, history, step=step, started=started, stepping=stepping,
                         steps_run=steps_run, resumed_from=resumed_from, last_terms=terms,
                         lists_audit=audit, estimated=figure_estimates(p, state, best))
    embeddings = final_embeddings(p, state, best)
    del state  # the device state (2-3 x n x d floats) is not needed for the writing below
    check_outputs(embeddings, report)
    if out is not None and writer:
        write_outputs(out, p, report, embeddings)
    log(f"done: step {step} max_cos={report['figures']['max_cos']:.5f} "
        f"(bound {report['bound_max_cos']:.5f}) mean_nn_cos={report['figures']['mean_nn_cos']:.5f}"
        f" min_angle={report['figures']['min_angle_deg']:.2f} deg" + (f" -> {out}" if out else ""))
    return report, embeddings


def _log_start(p: Plan, step: int, first: dict, log) -> None:
    c, pr = p.config, p.problem
    mode = "full batch" if solver.is_full_batch(solver_config(c), pr.n) else f"batch {c.batch_size}"
    log(f"n={pr.n} d={pr.d} m={pr.m} {mode} objective={c.objective} restarts={pr.restarts} "
        f"backend={jax.default_backend()} devices={p.placement.size} "
        f"step {step}: max_cos={first['max_cos']:.4f} mean_nn_cos={first['mean_nn_cos']:.4f}")


def write_outputs(out: Path, p: Plan, report: dict, embeddings: np.ndarray) -> None:
    """embeddings.npy, report.json and curves.png, each written atomically."""
    from hyperface_jax.io import plots  # matplotlib: here, not in every command's start-up

    c, pr = p.config, p.problem
    save_embeddings(out / "embeddings.npy", embeddings)
    save_json(out / "report.json", report)
    plots.packing_curves(report["history"], out / "curves.png",
                         title=f"n={pr.n}, d={pr.d}, alpha={c.alpha}, {c.optimizer}, "
                               f"{c.objective}", bound=report["bound_max_cos"])
