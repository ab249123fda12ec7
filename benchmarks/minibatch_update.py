"""Which mini-batch update packs better: row-sparse or dense optimizer updates?

Same init, gallery, optimizer, schedule and batch order; only --minibatch_update differs.
Prints a markdown table of final figures (exact, full search) per setting.

    python benchmarks/minibatch_update.py [--n=4000 --d=128 --batch=500 --steps=3000]
"""

import argparse
import time

import jax
import numpy as np

from hyperface_jax.engine import optimizers, solver, sphere
from hyperface_jax.measure import metrics


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[500, 2000])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    print(f"n={args.n} d={args.d} steps={args.steps}, adam lr 0.01 x 0.5 every "
          f"{args.steps // 4} steps; gallery: m=n random Gaussian rows (alpha=0.5 rows)")
    print("| alpha | B | update | max_cos | mean_nn_cos | mean_gallery_cos | seconds |")
    print("|---|---|---|---|---|---|---|")
    for alpha in (0.0, 0.5):
        for batch in args.batch:
            for update in ("sparse", "dense"):
                rows = []
                for seed in range(args.seeds):
                    key = jax.random.PRNGKey(seed)
                    x0 = sphere.random_unit_vectors(key, args.n, args.d)
                    gallery = sphere.random_unit_vectors(jax.random.fold_in(key, 1), args.n, args.d)
                    schedule = optimizers.make_schedule(
                        "staircase", 0.01, steps=args.steps, decay_rate=0.5,
                        decay_every=args.steps // 4)
                    opt = optimizers.make_optimizer("adam", schedule)
                    cfg = solver.SolverConfig(alpha=alpha, batch_size=batch,
                                              minibatch_update=update)
                    run = solver.make_runner(opt, cfg, args.n)
                    g = gallery if alpha else None
                    t = time.perf_counter()
                    state, _ = run(solver.init_state(x0, opt, seed), g, args.steps)
                    jax.block_until_ready(state)
                    seconds = time.perf_counter() - t
                    f = metrics.to_python(metrics.packing_figures(state.embeddings, gallery))
                    rows.append((f["max_cos"], f["mean_nn_cos"], f["mean_gallery_cos"], seconds))
                m = np.mean(rows, axis=0)
                print(f"| {alpha} | {batch} | {update} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | "
                      f"{m[3]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
