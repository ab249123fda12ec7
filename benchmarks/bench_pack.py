"""Packing speed and scale against a dense autodiff baseline, in one run (issue 8).

    python benchmarks/bench_pack.py --part=quality    # time to quality, n = m = 5,000
    python benchmarks/bench_pack.py --part=exactness  # exact solver vs dense, n = m = 2,000
    python benchmarks/bench_pack.py --part=memory     # peak memory, s/step up to n = 100,000
    python benchmarks/bench_pack.py                   # all three, one table each

Figures are ratios measured in the same process on the same machine (wall seconds of
the stepping, plus the solver's initial state, e.g. its first neighbour-list search: exact
figures for the curves are computed between timed chunks and not counted). Results are
printed as Markdown and written to --out_dir (JSON, PNG).

A quality variant is a name of VARIANTS or a pack flagfile (`label=path.flags`, or a path
ending in .flags, labelled by its name): the recipe flags of the file (optimizer, schedule,
steps, objective, temperatures, lists, mini-batches, precision ...) run on the benchmark's
random start and gallery, so a shipped config is measured as it is. `--dense_from` reuses
the dense curve of an earlier run's bench_pack.json (for searching recipes; the table then
says so): a published ratio runs the dense baseline in the same run.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hyperface_jax.baselines import dense_baseline  # noqa: E402
from hyperface_jax.engine import solver, sphere  # noqa: E402
from hyperface_jax.jobs import api, packing  # noqa: E402
from hyperface_jax.measure import metrics  # noqa: E402


def schedule(lr, steps):
    """The schedule every variant shares: lr halved five times over the run."""
    return optax.exponential_decay(lr, max(1, steps // 5), 0.5, staircase=True)


# Variants of the full-batch solver, against the dense baseline (mean nearest-neighbour, the
# shared schedule, --steps steps). "exact" is the same optimisation as the baseline; the
# "fast" ones are the annealed log-sum-exp objective with a shorter, geometric schedule
# (lr 1e-2 -> 1e-4, temperature 10 -> 1e3 over `fast_steps`), exact or on neighbour lists.
VARIANTS = {
    "exact": {},
    "fast exact": {"objective": "logsumexp", "fast": True},
    "fast lists32/5": {"objective": "logsumexp", "fast": True, "neighbor_list_size": 32,
                       "gallery_list_size": 8, "neighbor_refresh_every": 5},
    "fast lists16/5": {"objective": "logsumexp", "fast": True, "neighbor_list_size": 16,
                       "gallery_list_size": 2, "neighbor_refresh_every": 5},
}


def flagfile_of(label):
    """(label, path) of a flagfile variant (`label=path.flags` or `path.flags`), else None."""
    name, _, path = label.rpartition("=")
    if not path.endswith(".flags"):
        return None
    return name or Path(path).stem, path


def variant_setup(label, lr, steps, fast_steps, alpha, n, d):
    """(optimizer, SolverConfig, number of steps) of a variant."""
    flagfile = flagfile_of(label)
    if flagfile is not None:
        c = api.pack_config(flagfile=flagfile[1], num_identities=n, dim=d)
        if c.alpha != alpha or c.polish_steps:
            raise ValueError(f"{flagfile[1]}: the benchmark runs alpha {alpha} without polish")
        return packing.build_optimizer(c), packing.solver_config(c), c.steps
    v = dict(VARIANTS[label])
    if not v.pop("fast", False):
        return optax.adam(schedule(lr, steps)), solver.SolverConfig(alpha=alpha, **v), steps
    v.update(temperature_start=10.0, temperature_end=1e3, anneal_steps=fast_steps)
    return (optax.adam(optax.exponential_decay(lr, fast_steps, 0.01)),
            solver.SolverConfig(alpha=alpha, **v), fast_steps)


def _curve(run_chunk, figures, steps, eval_every, start_seconds=0.0):
    """Run `steps` in chunks, timing only the stepping (after `start_seconds` spent building
    the initial state); exact figures after each chunk."""
    points = [{"step": 0, "seconds": start_seconds, **figures()}]
    seconds, done = start_seconds, 0
    while done < steps:
        k = min(eval_every, steps - done)
        t = time.perf_counter()
        run_chunk(k)
        seconds += time.perf_counter() - t
        done += k
        points.append({"step": done, "seconds": seconds, **figures()})
    return points


def quality(n, m, d, steps, lr, eval_every, variants, fast_steps, alpha=0.5, seed=0,
            dense_from=None):
    x0 = sphere.random_unit_vectors(jax.random.PRNGKey(seed), n, d)
    gallery = sphere.random_unit_vectors(jax.random.PRNGKey(seed + 1), m, d)
    fig = jax.jit(lambda x: metrics.packing_figures(x, gallery, alpha=alpha))

    def figures_of(x):
        f = metrics.to_python(fig(x))
        return {k: f[k] for k in ("max_cos", "mean_nn_cos", "mean_gallery_cos", "loss")}

    results = {}
    if dense_from is None:
        results["dense autodiff"] = dense_curve(x0, gallery, steps, lr, eval_every, alpha,
                                                figures_of)
    else:
        results["dense autodiff"] = reused_dense_curve(dense_from, n, d, steps, lr)
    print(f"dense: {results['dense autodiff'][-1]}", file=sys.stderr, flush=True)
    for label in variants:
        opt, cfg, variant_steps = variant_setup(label, lr, steps, fast_steps, alpha, n, d)
        run = solver.make_runner(opt, cfg, n)
        init = jax.jit(lambda x, g, opt=opt, cfg=cfg: solver.init_state(x, opt, seed, g, cfg))
        jax.block_until_ready(init(x0, gallery))  # compile
        t = time.perf_counter()
        st = {"s": jax.block_until_ready(init(x0, gallery))}
        start_seconds = time.perf_counter() - t
        jax.block_until_ready(run(st["s"], gallery, jnp.int32(0)))  # compile
        label = flagfile_of(label)[0] if flagfile_of(label) else label

        def chunk(k, run=run, st=st):
            st["s"], _ = run(st["s"], gallery, jnp.int32(k))
            jax.block_until_ready(st["s"])

        results[label] = _curve(chunk, lambda st=st: figures_of(st["s"].embeddings),
                                variant_steps, max(1, eval_every * variant_steps // steps),
                                start_seconds)
        print(f"{label}: {results[label][-1]}", file=sys.stderr, flush=True)
    return results


def dense_curve(x0, gallery, steps, lr, eval_every, alpha, figures_of):
    opt = optax.adam(schedule(lr, steps))
    dense = dense_baseline.make_dense_runner(opt, alpha=alpha)
    box = {"x": x0, "s": opt.init(x0)}
    dense(box["x"], box["s"], gallery, jnp.int32(0))[0].block_until_ready()  # compile

    def dense_chunk(k):
        box["x"], box["s"] = dense(box["x"], box["s"], gallery, jnp.int32(k))
        box["x"].block_until_ready()

    return _curve(dense_chunk, lambda: figures_of(box["x"]), steps, eval_every)


def reused_dense_curve(path, n, d, steps, lr):
    """The dense curve of an earlier bench_pack.json, checked to be the same problem."""
    report = json.loads(Path(path).read_text())
    setting = report.get("quality_setting", {})
    if setting != {"n": n, "d": d, "steps": steps, "lr": lr}:
        raise ValueError(f"{path} measured {setting or 'an unknown setting'}, not "
                         f"n = {n}, d = {d}, {steps} steps, lr {lr}")
    return report["quality"]["dense autodiff"]


def time_to_quality(curve, target, tol=1e-3):
    """Seconds until max_cos, mean_nn_cos and mean_gallery_cos are all within tol of the
    target's (or better: lower cosines between identities, higher to the gallery)."""
    for p in curve:
        if (p["max_cos"] <= target["max_cos"] + tol
                and p["mean_nn_cos"] <= target["mean_nn_cos"] + tol
                and p["mean_gallery_cos"] >= target["mean_gallery_cos"] - tol):
            return p["seconds"], p["step"]
    return None, None


def quality_table(results):
    base = results["dense autodiff"]
    target = base[-1]
    rows = ["| solver | steps | initial state (s) | s/step | final max_cos | final mean_nn_cos | "
            "final mean_gallery_cos | time to dense's final quality | speed-up |",
            "|---|---|---|---|---|---|---|---|---|"]
    for label, curve in results.items():
        last = curve[-1]
        t, step = time_to_quality(curve, target)
        speed = "" if t is None or t == 0 else f"{target['seconds'] / t:.1f}x"
        reached = "not reached" if t is None else f"{t:.1f} s (step {step})"
        start = curve[0]["seconds"]
        rows.append(f"| {label} | {last['step']} | {start:.2f} | "
                    f"{(last['seconds'] - start) / last['step']:.4f} | "
                    f"{last['max_cos']:.4f} | {last['mean_nn_cos']:.4f} | "
                    f"{last['mean_gallery_cos']:.4f} | {reached} | {speed} |")
    return "\n".join(rows)


def plot_quality(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, curve in results.items():
        s = [p["seconds"] for p in curve]
        axes[0].plot(s, [p["max_cos"] for p in curve], label=label)
        axes[1].plot(s, [p["mean_nn_cos"] for p in curve], label=label)
    for ax, name in zip(axes, ("worst-pair cosine (max_cos)", "mean nearest-neighbour cosine")):
        ax.set_xscale("log")
        ax.set_xlabel("wall seconds (stepping only)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def exactness(n=2000, m=2000, d=128, steps=(50, 200), lr=0.01):
    x = sphere.random_unit_vectors(jax.random.PRNGKey(0), n, d)
    g = sphere.random_unit_vectors(jax.random.PRNGKey(1), m, d)
    opt = optax.adam(optax.exponential_decay(lr, 100, 0.5, staircase=True))
    dense = dense_baseline.make_dense_runner(opt, alpha=0.5)
    cfg = solver.SolverConfig(alpha=0.5)
    run = solver.make_runner(opt, cfg, n)
    perm = np.random.RandomState(0).permutation(n)
    rows = ["| steps | max abs(exact - dense) | max abs(dense on permuted rows - dense) |",
            "|---|---|---|"]
    out = []
    for k in steps:
        xd = dense(x, opt.init(x), g, jnp.int32(k))[0]
        xp = dense(x[perm], opt.init(x), g, jnp.int32(k))[0][np.argsort(perm)]
        xs = run(solver.init_state(x, opt, 0), g, jnp.int32(k))[0].embeddings
        a, b = float(jnp.max(jnp.abs(xs - xd))), float(jnp.max(jnp.abs(xp - xd)))
        rows.append(f"| {k} | {a:.2e} | {b:.2e} |")
        out.append({"steps": k, "exact_vs_dense": a, "dense_vs_permuted_dense": b})
    return out, "\n".join(rows)


_MEMORY_CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from hyperface_jax.engine import solver, sphere
n, m, d, batch, steps = map(int, sys.argv[1:6])
x = sphere.random_unit_vectors(jax.random.PRNGKey(0), n, d)
g = sphere.random_unit_vectors(jax.random.PRNGKey(1), m, d)
opt = optax.adam(0.01)
cfg = solver.SolverConfig(alpha=0.5, batch_size=batch)
st = solver.init_state(x, opt, 0)
compiled = solver.make_runner(opt, cfg, n).lower(st, g, jnp.int32(1)).compile()
mem = compiled.memory_analysis()
xla_gb = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes) / 2**30
result = {"xla_program_gb": xla_gb, "xla_temp_gb": mem.temp_size_in_bytes / 2**30}
if steps:
    t = time.perf_counter()
    st, _ = compiled(st, g, jnp.int32(steps)); jax.block_until_ready(st)
    result["seconds_per_step"] = (time.perf_counter() - t) / steps
result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(result))
"""


def memory(cases):
    rows = ["| n | m | d | mode | s/step | XLA program memory (GB) | peak resident memory (GB) |",
            "|---|---|---|---|---|---|---|"]
    out = []
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    for n, m, d, batch, steps in cases:
        r = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(n), str(m), str(d),
                            str(batch), str(steps)], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        mode = "full batch" if batch == 0 else f"mini-batch B={batch}"
        per_step = res.get("seconds_per_step")
        rows.append(f"| {n:,} | {m:,} | {d} | {mode} | "
                    f"{'not run' if per_step is None else f'{per_step:.3f}'} | "
                    f"{res['xla_program_gb']:.2f} | {res['peak_rss_gb']:.2f} |")
        out.append({"n": n, "m": m, "d": d, "batch_size": batch, **res})
        print(rows[-1], file=sys.stderr, flush=True)
    return out, "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=["all", "quality", "exactness", "memory"])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--eval_every", type=int, default=25)
    p.add_argument("--fast_steps", type=int, default=150)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="names of VARIANTS and pack flagfiles (label=path.flags)")
    p.add_argument("--dense_from", help="reuse the dense curve of this bench_pack.json")
    p.add_argument("--memory_sizes", default="10000,30000,100000")
    p.add_argument("--big_steps", type=int, default=3,
                   help="timed steps at n >= 100,000 (0: compile and measure memory only)")
    p.add_argument("--out_dir", default="runs/bench_pack")
    a = p.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPU cores, JAX {jax.__version__} ({jax.default_backend()})")
    print(f"# bench_pack: {header}\n")
    report = {"machine": header}
    if a.part in ("all", "quality"):
        results = quality(a.n, a.n, a.d, a.steps, a.lr, a.eval_every, a.variants.split(","),
                          a.fast_steps, dense_from=a.dense_from)
        report["quality"] = results
        report["quality_setting"] = {"n": a.n, "d": a.d, "steps": a.steps, "lr": a.lr}
        if a.dense_from:
            report["dense_from"] = a.dense_from
        plot_quality(results, out / "time_to_quality.png")
        reused = (f" (dense curve reused from {a.dense_from}, not measured in this run)"
                  if a.dense_from else "")
        print(f"## Time to quality: n = m = {a.n:,}, d = {a.d}, alpha = 0.5, Adam lr {a.lr} "
              f"halved 5 times, {a.steps} steps{reused}\n\n{quality_table(results)}\n")
    if a.part in ("all", "exactness"):
        report["exactness"], table = exactness()
        print(f"## Exactness: n = m = 2,000, d = 128, Adam\n\n{table}\n")
    if a.part in ("all", "memory"):
        sizes = [int(v) for v in a.memory_sizes.split(",")]
        cases = [(n, n, 512, 0, a.big_steps if n >= 100_000 else 3) for n in sizes]
        # Mini-batch: a step searches its B rows against the batch and the whole gallery,
        # so its cost follows B and m, not n; shown with m fixed while n grows.
        cases += [(n, 10_000, 512, b, 10) for b in (1000, 5000) for n in (10_000, 100_000)]
        report["memory"], table = memory(cases)
        print(f"## Memory and seconds per step (alpha = 0.5, Adam; peak RSS of a fresh "
              f"process)\n\n{table}\n")
    (out / "bench_pack.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
