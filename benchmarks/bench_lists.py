"""Neighbour lists rebuilt by displacement against a fixed schedule and the exact search.

    nice -n 15 python benchmarks/bench_lists.py                       # n=4,000 d=128 m=2,000
    nice -n 15 python benchmarks/bench_lists.py --n=10000 --d=512 --m=10000 --seconds=600

Every variant runs the same problem (the mean nearest-neighbour, our reading of Algorithm
1's loss: max objective, mean over rows; alpha = 0.5, random gallery; Adam with the
learning rate decayed geometrically by 100x over --steps) for the same budget of stepping
(--seconds of this process's CPU time, which a loaded shared machine distorts less than
wall-clock; wall seconds are reported too; exact figures are computed after the budget) or
--steps, whichever ends first. Reported per variant: steps done, CPU seconds per step,
rebuilds per 100 steps, the audit's missed shares, and the exact figures at the budget.
Markdown on stdout, JSON in --out.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hyperface_jax.engine import (  # noqa: E402
    neighbor_lists,
    solver,
    sphere,  # noqa: E402
)
from hyperface_jax.measure import metrics  # noqa: E402


def variants(k, kg):
    lists = dict(neighbor_list_size=k, gallery_list_size=kg)
    return {
        "exact": {},
        "lists every 20": dict(lists, neighbor_refresh_every=20),
        "lists every 5": dict(lists, neighbor_refresh_every=5),
        "lists displacement": dict(lists, neighbor_rebuild="displacement"),
    }


def run_variant(overrides, x0, gallery, *, steps, seconds, chunk, lr, alpha, tile_size):
    opt = optax.adam(optax.exponential_decay(lr, steps, 0.01))
    cfg = solver.SolverConfig(alpha=alpha, tile_size=tile_size, **overrides)
    run = solver.make_runner(opt, cfg, x0.shape[0])
    state = solver.init_state(x0, opt, 0, gallery, cfg)
    jax.block_until_ready(run(state, gallery, jnp.int32(0)))  # compile
    spent, wall, done = 0.0, 0.0, 0
    while done < steps and spent < seconds:
        k = min(chunk, steps - done)
        t, w = time.process_time(), time.perf_counter()
        state, _ = run(state, gallery, jnp.int32(k))
        jax.block_until_ready(state)
        spent += time.process_time() - t
        wall += time.perf_counter() - w
        done += k
    f = metrics.to_python(metrics.packing_figures(state.embeddings, gallery, alpha=alpha,
                                                  tile_size=tile_size))
    out = {"steps": done, "cpu_seconds": spent, "cpu_seconds_per_step": spent / done,
           "wall_seconds": wall,
           "max_cos": f["max_cos"], "mean_nn_cos": f["mean_nn_cos"],
           "mean_gallery_cos": f["mean_gallery_cos"], "loss": f["loss"]}
    if state.lists is not None:
        out["audit"] = neighbor_lists.audit(state.lists, done)
    return out


def table(results):
    rows = ["| variant | steps in budget | CPU s/step | rebuilds / 100 steps | missed share "
            "(mean / max) | gallery missed (max) | max_cos | mean_nn_cos | loss |",
            "|---|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        a = r.get("audit")
        audit = ("- | - | -" if a is None else
                 f"{a['rebuilds_per_100_steps']:.1f} | {a['mean_share_rows_missed']:.4f} / "
                 f"{a['max_share_rows_missed']:.4f} | {a['gallery_max_share_rows_missed']:.4f}")
        rows.append(f"| {label} | {r['steps']} | {r['cpu_seconds_per_step']:.3f} | {audit} | "
                    f"{r['max_cos']:.4f} | {r['mean_nn_cos']:.4f} | {r['loss']:.5f} |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--m", type=int, default=2000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--kg", type=int, default=8)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--tile_size", type=int, default=1024)
    p.add_argument("--only", default="", help="comma-separated variant names")
    p.add_argument("--out", default="")
    a = p.parse_args()
    x0 = sphere.random_unit_vectors(jax.random.PRNGKey(0), a.n, a.d)
    gallery = sphere.random_unit_vectors(jax.random.PRNGKey(1), a.m, a.d)
    chosen = variants(a.k, a.kg)
    if a.only:
        chosen = {k: v for k, v in chosen.items() if k in a.only.split(",")}
    results = {}
    for label, overrides in chosen.items():
        results[label] = run_variant(overrides, x0, gallery, steps=a.steps, seconds=a.seconds,
                                     chunk=a.chunk, lr=a.lr, alpha=a.alpha,
                                     tile_size=a.tile_size)
        print(label, json.dumps(results[label]), file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"n={a.n} d={a.d} m={a.m} K={a.k} Kg={a.kg}, budget {a.seconds:.0f} CPU s or "
          f"{a.steps} steps, {os.cpu_count()} CPUs, load average {load[0]:.1f}\n")
    print(table(results))
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "load": load,
                                           "results": results}, indent=1))


if __name__ == "__main__":
    main()
