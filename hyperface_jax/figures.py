"""`python -m hyperface_jax.figures --embeddings=X.npy --out=figures.json`: exact figures.

The exact packing figures of a file of references (worst pair, mean and quantiles of the
nearest-neighbour cosine, gallery cosine, loss terms), from a full blockwise search of every
row, sharded over every device it is given (`--devices`, and `--distributed` or
`--coordinator_address` for several hosts: the ring search of `placement.Sharded`). For a
packing too large for exact figures inside the run (`pack --figure_sample`), this is the
command that gives them on accelerators: 1M x 512 is ~1e15 flops.

Exit codes: 0 success, 2 bad input (one line), 1 failure.
"""

import dataclasses
import sys
import time

import jax
from absl import flags

from hyperface_jax import cli
from hyperface_jax.engine import kernels, mesh, search
from hyperface_jax.io import runs
from hyperface_jax.io.files import InputError, load_embeddings, save_json
from hyperface_jax.jobs import packing
from hyperface_jax.measure import bounds, metrics


@dataclasses.dataclass(frozen=True)
class Placement:
    """The placement flags `packing.make_placement` reads."""
    devices: str
    coordinator_address: str
    num_processes: int
    process_id: int
    distributed: bool


def make_flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    d = flags
    d.DEFINE_string("embeddings", "", "References (.npy, (n, d)), e.g. a pack run's "
                    "embeddings.npy.", flag_values=fv)
    d.DEFINE_string("gallery", "", "Optional gallery (.npy, (m, d)) for the gallery cosine and "
                    "the regulariser.", flag_values=fv)
    d.DEFINE_float("alpha", 0.5, "Weight of the regulariser in the reported loss.",
                   flag_values=fv)
    d.DEFINE_enum("packing_reduce", "mean", ["mean", "max"], "Packing term of the reported "
                  "loss: 'max' = worst pair (Eq. 1, Tammes), the paper's statement; 'mean' = "
                  "mean nearest-neighbour (our reading of Algorithm 1's loss).",
                  flag_values=fv)
    d.DEFINE_integer("tile_size", 0, "Rows per tile (0: by backend).", flag_values=fv)
    d.DEFINE_string("out", "", "JSON file for the figures (required).", flag_values=fv)
    d.DEFINE_string("devices", "all", "Devices to shard over: 'all' or a count.",
                    flag_values=fv)
    d.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0.",
                    flag_values=fv)
    d.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.", flag_values=fv)
    d.DEFINE_integer("process_id", -1, "Multi-host: this process's index.", flag_values=fv)
    d.DEFINE_bool("distributed", False, "Multi-host: let JAX detect the cluster.",
                  flag_values=fv)
    return fv


def exact_figures(x, gallery, *, placement, alpha: float, reduce: str, tile_size: int):
    """The exact figures of the rows of `x` (host arrays) on `placement`."""
    n, m = x.shape[0], (0 if gallery is None else gallery.shape[0])
    placed = placement.put(x, n)
    placed_gallery = placement.put_gallery(gallery)
    fn = jax.jit(lambda x, g: metrics.figures(x, g, placement=placement, count=n,
                                              gallery_count=m, alpha=alpha, reduce=reduce,
                                              tile_size=tile_size))
    return {k: float(v) for k, v in jax.device_get(fn(placed, placed_gallery)).items()}


def run(fv) -> dict:
    if not fv.embeddings:
        raise InputError("--embeddings is required")
    started = time.time()
    placement = packing.make_placement(Placement(fv.devices, fv.coordinator_address,
                                              fv.num_processes, fv.process_id,
                                              fv.distributed))
    # Locked by the first process of the run, whichever way it was started (nested in the
    # CLI's claim in a one-process run).
    with runs.claimed(fv.out, "--out", is_file=True, primary=mesh.is_writer()):
        return _figures_report(fv, placement, started)


def _figures_report(fv, placement, started: float) -> dict:
    x = load_embeddings(fv.embeddings, "embeddings")
    gallery = load_embeddings(fv.gallery, "gallery") if fv.gallery else None
    if gallery is not None and gallery.shape[1] != x.shape[1]:
        raise InputError(f"dimension mismatch: embeddings have d={x.shape[1]}, gallery "
                         f"{fv.gallery} has d={gallery.shape[1]}")
    if x.shape[0] < 2:
        raise InputError(f"{fv.embeddings} has {x.shape[0]} row; need at least 2")
    tile = fv.tile_size or kernels.default_tile_size()
    figures = exact_figures(x, gallery, placement=placement, alpha=fv.alpha,
                            reduce=fv.packing_reduce, tile_size=tile)
    n, d = x.shape
    bound = bounds.bound_max_cos(n, d)
    report = {"figures": figures, "exact": True, "n": n, "d": d,
              "packing_objective": search.packing_objective(fv.packing_reduce),
              "m": 0 if gallery is None else gallery.shape[0],
              "bound_max_cos": bound, "gap_to_bound": figures["max_cos"] - bound,
              "embeddings": fv.embeddings, "gallery": fv.gallery or None,
              "devices": placement.size, "backend": jax.default_backend(),
              "wall_seconds": round(time.time() - started, 3)}
    if mesh.is_writer():
        save_json(fv.out, report)
        print(f"max_cos={figures['max_cos']:.6f} mean_nn_cos={figures['mean_nn_cos']:.6f} "
              f"(bound {bound:.6f}) on {placement.size} device(s) -> {fv.out}",
              file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(argv, make_flag_values(), run, output="out", output_is_file=True)


if __name__ == "__main__":
    sys.exit(main())
