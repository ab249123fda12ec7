"""One refresh of the neighbour lists by neighbours' neighbours against one exact rebuild.

    nice -n 10 python benchmarks/bench_descent.py --n=10000 --d=512 --k=32

Random unit rows, their exact top-K lists, then every row moved by Gaussian noise of
--noise per coordinate (renormalised) so the lists are stale. In the same run, after
compiling both: the wall time of one exact rebuild (`kernels.top_k` of every row against
every row: n^2 d) and of one refresh (`nn_descent.descend`: n K^2 d), and the quality of
the stale, once- and twice-refreshed lists against the exact ones: recall (share of the
exact top K listed) and the audit's figure (share of rows whose nearest partner is missing
from the list: what report.json's `mean_share_rows_missed` reads at a rebuild). Markdown
on stdout, JSON in --out.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hyperface_jax.engine import kernels, nn_descent, sphere  # noqa: E402


def timed(fn, *args):
    """(result, seconds) of one call after a compiling call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def quality(lists, exact):
    """Recall of the exact top K, and the share of rows whose nearest is not listed."""
    lists, exact = np.asarray(lists), np.asarray(exact)
    hits = (lists[:, :, None] == exact[:, None, :]).any(axis=1)
    missed = ~(lists == exact[:, :1]).any(axis=1)
    return float(hits.mean()), float(missed.mean())


def measure(n, d, k, noise, tile_size, sample):
    x = sphere.random_unit_vectors(jax.random.PRNGKey(0), n, d)
    exact_search = jax.jit(lambda x: kernels.top_k(x, x, k, True, tile_size=tile_size)[1])
    stale = exact_search(x)
    moved = sphere.normalize_rows(x + noise * jax.random.normal(jax.random.PRNGKey(1), (n, d)))
    exact, exact_seconds = timed(exact_search, moved)
    descend = jax.jit(lambda x, p: nn_descent.descend(x, p, sample=sample)[1])
    once, descent_seconds = timed(descend, moved, stale)
    twice = descend(moved, once)
    row = {"n": n, "d": d, "k": k, "sample": sample, "noise": noise, "exact_seconds": exact_seconds,
           "descent_seconds": descent_seconds}
    for name, lists in (("stale", stale), ("once", once), ("twice", twice)):
        row[f"{name}_recall"], row[f"{name}_missed"] = quality(lists, exact)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default="10000", help="comma-separated row counts")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--noise", default="0.005,0.01", help="comma-separated noise levels")
    p.add_argument("--sample", default="0", help="comma-separated samples of each partner's "
                   "list (0: all K)")
    p.add_argument("--tile_size", type=int, default=kernels.default_tile_size())
    p.add_argument("--out", default="")
    a = p.parse_args()
    rows = []
    for n in map(int, a.n.split(",")):
        for noise in map(float, a.noise.split(",")):
            for sample in map(int, a.sample.split(",")):
                rows.append(measure(n, a.d, a.k, noise, a.tile_size, sample or None))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"d={a.d} K={a.k}, {os.cpu_count()} CPUs, load average {load[0]:.1f}\n")
    print("| n | sample | noise | exact rebuild s | descent s | ratio | recall stale / once / "
          "twice | rows missed stale / once / twice |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['sample'] or r['k']} | {r['noise']} | {r['exact_seconds']:.2f} | "
              f"{r['descent_seconds']:.2f} | {r['exact_seconds'] / r['descent_seconds']:.1f}x | "
              f"{r['stale_recall']:.3f} / {r['once_recall']:.3f} / {r['twice_recall']:.3f} | "
              f"{r['stale_missed']:.3f} / {r['once_missed']:.3f} / {r['twice_missed']:.3f} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "load": load, "rows": rows},
                                          indent=1))


if __name__ == "__main__":
    main()
