"""The exact search against the machine's GEMM limit: the share of it each search reaches.

    nice -n 10 python benchmarks/gemm_limit.py                          # n = 10k, 50k, 100k
    nice -n 10 python benchmarks/gemm_limit.py --n 10000 50000 --repeats=3
    python benchmarks/gemm_limit.py --n 256 --d=32 --repeats=1          # smoke test, seconds

The exact searches are matrix products plus a reduction: n^2 d multiply-adds per pass. So
their yardstick is the fastest bare product of the same shapes on the same machine: XLA's
dot (jitted x @ x.T over the same row tiles as the search, at the same precision, each
tile's product kept whole by an optimisation barrier and one column of it returned) and,
on CPU, numpy's BLAS GEMM (x[i:i+4096] @ x.T into a preallocated buffer). Timed per n, in
one process, in rotating order over --repeats rounds, keeping each pass's fastest round
(load from other processes only ever slows a round down, so the minimum is the least
disturbed), in wall seconds and in CPU seconds of this process (all its threads; on a
machine shared with other jobs, CPU seconds are the steadier figure: time-slicing does
not count in them):

  nearest   one exact nearest-neighbour pass: `Search.nearest(x, x, exclude_self=True)`,
            the search behind the exact worst pair and the exact nearest objective
  top_k     one exact top-K list rebuild: `neighbor_lists.search_partners` (K = --k
            partners and the spare that measures the margin), as the solver rebuilds
  xla_gemm  the bare XLA product, tiled like the search
  blas_gemm numpy's GEMM (CPU only: on GPU / TPU the yardstick is XLA's dot at the
            precision used; numpy's GEMM would run on the host)

ratio = best GEMM time / search time: the share of the GEMM limit the search reaches.
Markdown on stdout (with the device, precision, tile size and the load average before
and after), JSON in --out.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
from jax import lax  # noqa: E402

from hyperface_jax.engine import kernels, neighbor_lists, sphere  # noqa: E402
from hyperface_jax.engine.search import Search  # noqa: E402

BLAS_ROWS = 4096


def searches(tile_size: int, precision: str, k: int):
    """The jitted passes to time, by name: each takes x and returns a small array."""
    search = Search(tile_size=tile_size, precision=precision)

    def nearest(x):
        return search.nearest(x, x, exclude_self=True)

    def top_k(x):
        partners, margins = neighbor_lists.search_partners(x, None, k, 0, search, spare=True)
        return partners.packing, margins

    def xla_gemm(x):
        tiles, _ = kernels._tiles(x, tile_size)
        # the barrier keeps each tile's product whole (as the searches' tiles are), so
        # that XLA can neither fuse the reduction into it nor slice it down to one column
        return lax.map(lambda xt: lax.optimization_barrier(
            kernels.similarity(xt, x, precision))[:, 0], tiles)

    return {"nearest": jax.jit(nearest), "top_k": jax.jit(top_k), "xla_gemm": jax.jit(xla_gemm)}


def blas_gemm(x: np.ndarray, out: np.ndarray) -> float:
    """numpy's GEMM over row tiles of BLAS_ROWS rows; returns a number of the result."""
    total = 0.0
    for i in range(0, x.shape[0], BLAS_ROWS):
        rows = x[i:i + BLAS_ROWS]
        np.matmul(rows, x.T, out=out[:rows.shape[0]])
        total += float(out[0, 0])
    return total


def timed(fn, *args) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(n: int, d: int, passes: dict, repeats: int, with_blas: bool) -> dict:
    """Fastest wall seconds per pass over `repeats` rounds in rotating order."""
    x = sphere.random_unit_vectors(jax.random.PRNGKey(n), n, d)
    # compiled outside the timings (without a run: at 100k a pass takes minutes)
    runs = {name: fn.lower(x).compile() for name, fn in passes.items()}
    if with_blas:
        x_host = np.asarray(x)
        out = np.empty((min(BLAS_ROWS, n), n), np.float32)
        runs["blas_gemm"] = lambda _: blas_gemm(x_host, out)
    names = list(runs)
    best = {name: float("inf") for name in names} | {f"{n}_cpu": float("inf") for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = timed(runs[name], x)
            best[name] = min(best[name], wall)
            best[f"{name}_cpu"] = min(best[f"{name}_cpu"], cpu)
    return best


def ratios(best: dict) -> dict:
    """The GEMM limit (the faster bare product) and each search's share of it, in wall
    seconds and in CPU seconds (which other processes' load distorts less)."""
    out = {}
    for clock in ("", "_cpu"):
        limit = min(v for k, v in best.items() if k.endswith("_gemm" + clock))
        out[f"gemm_limit{clock}_s"] = limit
        out |= {f"{k}{clock}_ratio": limit / best[k + clock] for k in ("nearest", "top_k")}
    return out


def table(rows: list[dict]) -> str:
    """One line per n; every cell is wall seconds (CPU seconds)."""
    def cell(r, name, fmt):
        return "-" if name not in r else f"{fmt(r[name])} ({fmt(r[name + '_cpu'])})"

    seconds, share = (lambda v: f"{v:.3f}"), (lambda v: f"{100 * v:.0f} %")
    lines = ["| n | nearest s | top-K s | XLA GEMM s | BLAS GEMM s | nearest / limit "
             "| top-K / limit |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [cell(r, k, seconds) for k in ("nearest", "top_k", "xla_gemm", "blas_gemm")]
        cells += [f"{share(r[k + '_ratio'])} ({share(r[k + '_cpu_ratio'])})"
                  for k in ("nearest", "top_k")]
        lines.append(f"| {r['n']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=32, help="list size of the top-K rebuild")
    p.add_argument("--precision", default="highest", choices=kernels.MATMUL_PRECISIONS)
    p.add_argument("--tile_size", type=int, default=0, help="rows per tile (0: backend default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="gemm_limit.json")
    args = p.parse_args(argv)
    backend = jax.default_backend()
    tile_size = args.tile_size or kernels.default_tile_size(backend)
    passes = searches(tile_size, args.precision, args.k)
    setup = {"device": str(jax.devices()[0].device_kind), "backend": backend,
             "devices": jax.device_count(), "machine": platform.processor() or platform.machine(),
             "cpus": os.cpu_count(), "d": args.d, "k": args.k, "precision": args.precision,
             "tile_size": tile_size, "blas_rows": BLAS_ROWS, "repeats": args.repeats,
             "load_before": os.getloadavg()}
    rows = []
    for n in args.n:
        best = measure(n, args.d, passes, args.repeats, with_blas=backend == "cpu")
        rows.append({"n": n, **best, **ratios(best)})
        print(f"n={n:,}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items() if k != "n"),
              file=sys.stderr, flush=True)
    setup["load_after"] = os.getloadavg()
    print(f"device {setup['device']} ({backend}, {setup['cpus']} CPUs), d = {args.d}, "
          f"K = {args.k}, precision {args.precision}, tile {tile_size} rows; "
          f"load {setup['load_before'][0]:.1f} before, {setup['load_after'][0]:.1f} after; "
          "wall seconds (CPU seconds)\n")
    print(table(rows))
    Path(args.out).write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
