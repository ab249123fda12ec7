"""Objectives at scale for the same wall-clock budget (issue 4, item 3).

    python benchmarks/bench_objectives.py --n=10000 --d=512 --budget=120

n references, a gallery of n random Gaussian unit vectors (a stand-in for real face
embeddings: the benchmark measures the optimiser, not a face model), alpha = 0.5. Each
variant first times two steps, plans as many steps as fit in the budget, and runs that
schedule to its end (learning rate and temperature schedules are laid over the planned
steps). Exact figures of the final embeddings are compared.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperface_jax.engine import (  # noqa: E402
    neighbor_lists,
    solver,
    sphere,  # noqa: E402
)
from hyperface_jax.measure import metrics  # noqa: E402

VARIANTS = {
    # The mean nearest-neighbour (our reading of Algorithm 1's loss) with the paper's
    # schedule family (Adam, staircase halving).
    "max, mean nearest-neighbour (ours)": dict(objective="max"),
    # Annealed log-sum-exp over all partners, exact.
    "logsumexp": dict(objective="logsumexp", smooth=True),
    # The same on neighbour lists refreshed exactly every 5 steps (audited).
    "logsumexp + lists32/5": dict(objective="logsumexp", smooth=True, neighbor_list_size=32,
                                  gallery_list_size=8, neighbor_refresh_every=5),
}


def build(label, steps, lr):
    v = dict(VARIANTS[label])
    if v.pop("smooth", False):
        v.update(temperature_start=10.0, temperature_end=1e3, anneal_steps=steps)
        return optax.adam(optax.exponential_decay(lr, steps, 0.01)), v
    return optax.adam(optax.exponential_decay(lr, max(1, steps // 5), 0.5, staircase=True)), v


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--budget", type=float, default=120.0, help="wall seconds per variant")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--out", default="runs/bench_objectives.json")
    a = p.parse_args()
    x0 = sphere.random_unit_vectors(jax.random.PRNGKey(0), a.n, a.d)
    gallery = sphere.random_unit_vectors(jax.random.PRNGKey(1), a.n, a.d)
    fig = jax.jit(lambda x: metrics.packing_figures(x, gallery, alpha=0.5))
    rows = ["| objective | steps in budget | seconds | max_cos | mean_nn_cos | "
            "mean_gallery_cos | list audit: mean share of rows missed |",
            "|---|---|---|---|---|---|---|"]
    results = {}
    for label in VARIANTS:
        opt, v = build(label, 100, a.lr)
        cfg = solver.SolverConfig(alpha=0.5, **v)
        run = solver.make_runner(opt, cfg, a.n)
        st = solver.init_state(x0, opt, 0, gallery, cfg)
        jax.block_until_ready(run(st, gallery, jnp.int32(1)))  # compile and warm up
        t = time.perf_counter()
        jax.block_until_ready(run(st, gallery, jnp.int32(10)))  # two list refresh cycles
        per_step = (time.perf_counter() - t) / 10
        steps = max(2, int(a.budget / per_step))
        opt, v = build(label, steps, a.lr)
        cfg = solver.SolverConfig(alpha=0.5, **v)
        run = solver.make_runner(opt, cfg, a.n)
        st = solver.init_state(x0, opt, 0, gallery, cfg)
        jax.block_until_ready(run(st, gallery, jnp.int32(0)))
        t = time.perf_counter()
        st, _ = run(st, gallery, jnp.int32(steps))
        jax.block_until_ready(st)
        seconds = time.perf_counter() - t
        f = metrics.to_python(fig(st.embeddings))
        audit = neighbor_lists.audit(st.lists) if st.lists is not None else None
        results[label] = {"steps": steps, "seconds": seconds, **f, "audit": audit}
        miss = "" if audit is None else f"{audit['mean_share_rows_missed']:.2f}"
        rows.append(f"| {label} | {steps} | {seconds:.1f} | {f['max_cos']:.4f} | "
                    f"{f['mean_nn_cos']:.4f} | {f['mean_gallery_cos']:.4f} | {miss} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"## Objectives at n = {a.n:,}, d = {a.d}, alpha = 0.5, random Gaussian gallery of "
          f"{a.n:,}, {a.budget:.0f} s per variant ({time.strftime('%Y-%m-%d')})\n")
    print("\n".join(rows))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
