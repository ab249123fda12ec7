"""The exact packing figures of a file of references (the job of `python -m
hyperface_jax.figures`): worst pair, mean and quantiles of the nearest-neighbour cosine,
gallery cosine, loss terms, from a full blockwise search of every row, sharded over the
devices of the run's placement (the ring search of `placement.Sharded`)."""

import sys
import time

import jax

from hyperface_jax.engine import kernels, mesh, search
from hyperface_jax.io import runs
from hyperface_jax.io.files import InputError, load_embeddings, save_json
from hyperface_jax.jobs import packing
from hyperface_jax.jobs.config import FiguresConfig
from hyperface_jax.measure import bounds, metrics


def exact_figures(x, gallery, *, placement, alpha: float, reduce: str, tile_size: int):
    """The exact figures of the rows of `x` (host arrays) on `placement`."""
    n, m = x.shape[0], (0 if gallery is None else gallery.shape[0])
    placed = placement.put(x, n)
    placed_gallery = placement.put_gallery(gallery)
    fn = jax.jit(lambda x, g: metrics.figures(x, g, placement=placement, count=n,
                                              gallery_count=m, alpha=alpha, reduce=reduce,
                                              tile_size=tile_size))
    return {k: float(v) for k, v in jax.device_get(fn(placed, placed_gallery)).items()}


def run(c: FiguresConfig) -> dict:
    """Compute the figures of `c.embeddings` and write them to `c.out` (process 0)."""
    if not c.embeddings:
        raise InputError("--embeddings is required")
    started = time.time()
    placement = packing.make_placement(c)
    # Locked by the first process of the run, whichever way it was started (nested in the
    # CLI's claim in a one-process run).
    with runs.claimed(c.out, "--out", is_file=True, primary=mesh.is_writer()):
        return _figures_report(c, placement, started)


def _figures_report(c: FiguresConfig, placement, started: float) -> dict:
    x = load_embeddings(c.embeddings, "embeddings")
    gallery = load_embeddings(c.gallery, "gallery") if c.gallery else None
    if gallery is not None and gallery.shape[1] != x.shape[1]:
        raise InputError(f"dimension mismatch: embeddings have d={x.shape[1]}, gallery "
                         f"{c.gallery} has d={gallery.shape[1]}")
    if x.shape[0] < 2:
        raise InputError(f"{c.embeddings} has {x.shape[0]} row; need at least 2")
    if x.shape[1] < 2:
        raise InputError(f"{c.embeddings} has d={x.shape[1]}; need d >= 2 (on a circle of "
                         "one dimension every pair is +-1)")
    tile = c.tile_size or kernels.default_tile_size()
    alpha = c.alpha if gallery is not None else 0.0
    figures = exact_figures(x, gallery, placement=placement, alpha=alpha,
                            reduce=c.packing_reduce, tile_size=tile)
    n, d = x.shape
    bound = bounds.bound_max_cos(n, d)
    report = {"figures": figures, "exact": True, "n": n, "d": d,
              "packing_objective": search.packing_objective(c.packing_reduce),
              "m": 0 if gallery is None else gallery.shape[0], "alpha_in_loss": alpha,
              "bound_max_cos": bound, "gap_to_bound": figures["max_cos"] - bound,
              "embeddings": c.embeddings, "gallery": c.gallery or None,
              "devices": placement.size, "backend": jax.default_backend(),
              "wall_seconds": round(time.time() - started, 3)}
    if mesh.is_writer():
        save_json(c.out, report)
        print(f"max_cos={figures['max_cos']:.6f} mean_nn_cos={figures['mean_nn_cos']:.6f} "
              f"(bound {bound:.6f}) on {placement.size} device(s) -> {c.out}",
              file=sys.stderr)
    return report
