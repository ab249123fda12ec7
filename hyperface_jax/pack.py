"""`python -m hyperface_jax.pack --flagfile=configs/quickstart.flags`: the packing job.

Parses flags, builds the problem and the solver, runs the loop with progress, checkpoints
and exact figures, writes `embeddings.npy`, `report.json`, `curves.png` into --out_dir.
Re-running the same command on the same --out_dir resumes from the latest checkpoint.
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure,
130 interrupted (after saving a checkpoint).
"""

import json
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from tqdm import tqdm

from hyperface_jax import (
    bounds,
    checkpoint,
    cli,
    metrics,
    neighbor_lists,
    neighbors,
    optimizers,
    plots,
    sharding,
    solver,
)
from hyperface_jax.config import HELP_GROUPS, PackConfig, config_from_flags, define_flags
from hyperface_jax.files import InputError, atomic_write, save_embeddings, save_json
from hyperface_jax.problem import build_problem

# Flags that may change between a run and its resumption (they do not alter the state).
RUN_LENGTH_FLAGS = ("out_dir", "steps", "checkpoint_every", "max_to_keep", "log_every", "progress")


def build_optimizer(c: PackConfig, *, polish: bool = False):
    try:
        if polish:
            schedule = optax.constant_schedule(c.polish_learning_rate)
        else:
            schedule = optimizers.make_schedule(
                c.schedule, c.learning_rate, steps=c.steps, decay_rate=c.decay_rate,
                decay_every=c.decay_every, final_learning_rate=c.final_learning_rate)
        return optimizers.make_optimizer(c.optimizer, schedule, **c.optimizer_hyperparameters())
    except ValueError as e:
        raise InputError(str(e)) from None


def solver_config(c: PackConfig, *, polish: bool = False) -> solver.SolverConfig:
    return solver.SolverConfig(
        alpha=c.alpha,
        objective="max" if polish else c.objective,
        reduce="max" if polish else c.packing_reduce,
        temperature_start=c.temperature_start, temperature_end=c.temperature_end,
        anneal_steps=c.anneal_steps or c.steps,
        batch_size=c.batch_size, minibatch_update=c.minibatch_update,
        project_gradient=c.project_gradient, tile_size=tile_size_of(c),
        precision=c.matmul_precision, neighbor_list_size=c.neighbor_list_size,
        gallery_list_size=c.gallery_list_size, neighbor_refresh_every=c.neighbor_refresh_every)


def tile_size_of(c: PackConfig) -> int:
    return c.tile_size or neighbors.default_tile_size()


def _next_boundary(step: int, c: PackConfig) -> int:
    def up(k):
        return (step // k + 1) * k
    ends = [c.steps + c.polish_steps] + ([c.steps] if step < c.steps else [])
    return min(up(c.log_every), up(c.checkpoint_every), *ends)


def _read_history(path: Path, upto: int) -> list[dict]:
    """Logged figures of earlier sessions up to the restored step (a torn last line from a
    kill is dropped)."""
    if not path.exists():
        return []
    history = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("step", upto + 1) <= upto:
            history.append(entry)
    return history


def _initial_state(problem, optimizer, config):
    gallery = None if problem.gallery is None else jnp.asarray(problem.gallery)
    init = partial(solver.init_state, optimizer=optimizer, key=problem.batch_key,
                   gallery=gallery, config=config)
    if problem.restarts == 1:
        return jax.jit(init)(problem.init)
    return jax.jit(jax.vmap(init))(jnp.asarray(problem.inits))


def _make_figures(c: PackConfig, restarts: int):
    """`figures(embeddings, gallery) -> (dict of floats, index of the best restart)`."""
    one = partial(metrics.packing_figures, alpha=c.alpha, reduce=c.packing_reduce,
                  tile_size=tile_size_of(c))
    if restarts == 1:
        fn = jax.jit(one)
        return lambda x, g: (metrics.to_python(fn(x, g)), 0)
    batched = jax.jit(jax.vmap(one, in_axes=(0, None)))

    def figures(x, g):
        values = jax.device_get(batched(x, g))
        best = int(np.argmin(values["max_cos"]))
        return {k: float(v[best]) for k, v in values.items()}, best
    return figures


def run(c: PackConfig, *, log=None) -> dict:
    """Run (or resume) a packing job; returns the report that is also written to disk."""
    started = time.time()
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    sharding.initialize_distributed(c)  # sharding: before any JAX computation
    writer = sharding.is_writer()  # sharding: process 0 alone writes outputs
    if not writer:
        log = lambda msg: None
    problem = build_problem(c)
    optimizer = build_optimizer(c)
    config = solver_config(c)
    n, d, restarts = problem.n, problem.d, problem.restarts
    total_steps = c.steps + c.polish_steps
    mesh = sharding.make_mesh(c.devices)  # sharding: None means the single-device path
    if mesh is None:
        state = _initial_state(problem, optimizer, config)
    else:  # sharding: each device builds only its rows of the state
        sharding.check_compatible(c, n, restarts, mesh)
        state = sharding.init_state(problem.init, optimizer, problem.batch_key, mesh)
    if not solver.is_full_batch(config, n) and c.minibatch_update == "sparse":
        try:
            solver.check_sparse_compatible(optimizer.init(problem.init), (n, d))
        except ValueError as e:
            raise InputError(f"--optimizer={c.optimizer}: {e}") from None
    polish_optimizer = build_optimizer(c, polish=True) if c.polish_steps else None

    placement = RUN_LENGTH_FLAGS + sharding.PLACEMENT_FLAGS  # sharding: not part of the run
    identity = {k: v for k, v in c.flag_values().items() if k not in placement}
    identity.update(n=n, d=d, **problem.fingerprint())
    out = Path(c.out_dir)
    checkpoint.check_same_run(out / "checkpoints", identity)

    # Inputs are valid: from here on, files are written.
    out.mkdir(parents=True, exist_ok=True)
    manager = checkpoint.open_manager(out / "checkpoints", max_to_keep=c.max_to_keep)
    if writer:
        checkpoint.record_run(out / "checkpoints", identity)
    restored = checkpoint.restore_latest(manager, state)
    if restored is not None:
        state = restored
    step = solver.step_of(state)
    if step > total_steps:
        raise InputError(f"{out} holds a checkpoint at step {step}, beyond --steps + "
                         f"--polish_steps = {total_steps}; raise --steps or use a new --out_dir")
    resumed_from = step if restored is not None else None
    if resumed_from is not None:
        log(f"resuming from the checkpoint at step {step} in {out / 'checkpoints'}")

    gallery = None if problem.gallery is None else jnp.asarray(problem.gallery)
    m = 0 if gallery is None else int(gallery.shape[0])
    if mesh is not None:  # sharding: split by rows, padded to a multiple of the mesh size
        gallery = sharding.put_gallery(problem.gallery, mesh)
    figures_of = _make_figures(c, restarts)
    if mesh is not None:  # sharding: the exact searches on the ring
        figures_of = sharding.make_figures(mesh, alpha=c.alpha, reduce=c.packing_reduce,
                                           tile_size=tile_size_of(c))
    history_path = out / "history.jsonl"
    history = _read_history(history_path, step)
    stepped_before = history[-1]["seconds"] if history else 0.0
    sharding.barrier("history read")  # sharding: every process read it before it changes
    if writer:
        save_json_lines(history_path, history)

    def make_runner(optimizer, config):
        if mesh is None:
            return solver.make_runner(optimizer, config, n, restarts=restarts)
        return sharding.make_runner(optimizer, config, n, mesh,
                                    sharding.state_shardings(state, mesh))

    t = time.perf_counter()
    no_steps = jnp.int32(0)
    run_main = make_runner(optimizer, config).lower(
        state, gallery, no_steps).compile()
    run_polish = None
    if polish_optimizer is not None:
        run_polish = make_runner(polish_optimizer, solver_config(c, polish=True)).lower(
            state, gallery, no_steps).compile()
    compile_seconds = time.perf_counter() - t

    def record(state, seconds):
        figures, best = figures_of(state.embeddings, gallery)
        entry = {"step": step, "seconds": round(seconds, 4), **figures}
        if restarts > 1:
            entry["restart"] = best
        history.append(entry)
        if writer:
            with open(history_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        return entry

    if not history:
        record(state, 0.0)
    first = history[-1]
    log(f"n={n} d={d} m={m} "
        f"{'full batch' if solver.is_full_batch(config, n) else f'batch {c.batch_size}'} "
        f"objective={c.objective} restarts={restarts} "
        f"backend={jax.default_backend()} devices={jax.device_count()} "
        f"step {step}: max_cos={first['max_cos']:.4f} mean_nn_cos={first['mean_nn_cos']:.4f}")

    stepping = 0.0
    steps_run = 0
    bar = tqdm(total=total_steps, initial=step, disable=not (c.progress and writer), unit="step",
               dynamic_ncols=True, file=sys.stderr)
    try:
        while step < total_steps:
            target = _next_boundary(step, c)
            run_steps = run_main if step < c.steps else run_polish
            t = time.perf_counter()
            state, _ = run_steps(state, gallery, jnp.int32(target - step))
            jax.block_until_ready(state)
            stepping += time.perf_counter() - t
            steps_run += target - step
            bar.update(target - step)
            step = target
            if step % c.log_every == 0 or step in (c.steps, total_steps):
                entry = record(state, stepped_before + stepping)
                bar.set_postfix(max_cos=f"{entry['max_cos']:.4f}",
                                mean_nn=f"{entry['mean_nn_cos']:.4f}")
                if not c.progress:
                    log(f"step {step}: loss={entry['loss']:.5f} max_cos={entry['max_cos']:.5f} "
                        f"mean_nn_cos={entry['mean_nn_cos']:.5f}")
            if step % c.checkpoint_every == 0 or step == total_steps:
                checkpoint.save(manager, state)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli.sigterm_as_interrupt)
        bar.close()
        log(f"interrupted at step {step}: saving a checkpoint to resume from")
        checkpoint.save(manager, state)
        manager.wait_until_finished()
        raise KeyboardInterrupt from None
    finally:
        bar.close()
    checkpoint.save(manager, state)
    manager.wait_until_finished()
    manager.close()

    if history[-1]["step"] != step:
        record(state, stepped_before + stepping)
    final = {k: v for k, v in history[-1].items() if k not in ("step", "seconds", "restart")}
    best = history[-1].get("restart", 0)
    embeddings = state.embeddings if restarts == 1 else state.embeddings[best]
    if mesh is not None:
        embeddings = sharding.to_host(embeddings)  # a collective: every process calls it
    bound = bounds.bound_max_cos(n, d)
    report = {
        "figures": final,
        "initial_figures": {k: v for k, v in history[0].items()
                            if k not in ("step", "seconds", "restart")},
        "bound_max_cos": bound,
        "gap_to_bound": final["max_cos"] - bound,
        "n": n, "d": d, "m": m,
        "steps": step,
        "restart_kept": best if restarts > 1 else None,
        "neighbor_list_audit": (None if state.lists is None else neighbor_lists.audit(
            state.lists if restarts == 1 else jax.tree.map(lambda a: a[best], state.lists))),
        "resumed_from_step": resumed_from,
        "flags": c.flag_values(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "sharded_over_devices": 1 if mesh is None else mesh.size,
        "devices": [str(dev) for dev in jax.devices()],
        "wall_seconds": round(time.time() - started, 3),
        "compile_seconds": round(compile_seconds, 3),
        "seconds_per_step": round(stepping / steps_run, 6) if steps_run else None,
        "stepping_seconds_total": round(stepped_before + stepping, 3),
        "history": history,
    }
    if not writer:
        return report
    save_embeddings(out / "embeddings.npy", np.asarray(embeddings))
    save_json(out / "report.json", report)
    plots.packing_curves(history, out / "curves.png",
                         title=f"n={n}, d={d}, alpha={c.alpha}, {c.optimizer}, {c.objective}",
                         bound=bound)
    log(f"done: step {step} max_cos={final['max_cos']:.5f} (bound {bound:.5f}) "
        f"mean_nn_cos={final['mean_nn_cos']:.5f} min_angle={final['min_angle_deg']:.2f} deg "
        f"-> {out}")
    return report


def save_json_lines(path: Path, entries: list[dict]) -> None:
    """Rewrite a JSON-lines file atomically (drops lines past a restored checkpoint)."""
    text = "".join(json.dumps(e) + "\n" for e in entries)
    atomic_write(path, lambda f: f.write(text.encode()))


def make_flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    define_flags(fv)
    return fv


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(argv, make_flag_values(), lambda fv: run(config_from_flags(fv)),
                        help_groups=HELP_GROUPS)


if __name__ == "__main__":
    sys.exit(main())
