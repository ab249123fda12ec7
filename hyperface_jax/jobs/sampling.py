"""The job of `python -m hyperface_jax.sample`: place `num_identities` synthetic identities
with one of the samplers of `baselines/samplers.py` (random_margin, diffr,
perturbed_gallery) or, for `hyperface`, the packing job, and write `embeddings.npy` and
`report.json` into out_dir with the same packing figures as `pack`
(`metrics.packing_figures`), so every method is judged on the same figures. `report.json`
lists what the method's paper states (`"paper"`) and every value it leaves open that this
run chose (`"choices"`). Every option is checked before anything is drawn or written; the
rows are checked (finite, unit) before they are written.
"""

import dataclasses
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

from hyperface_jax.baselines import samplers
from hyperface_jax.engine import search
from hyperface_jax.io.files import (
    InputError,
    load_embeddings,
    load_labels,
    save_embeddings,
    save_json,
    unit_row_error,
)
from hyperface_jax.jobs import packing, problem
from hyperface_jax.jobs.config import PackConfig, SampleConfig
from hyperface_jax.measure import bounds, metrics


def check_method(method: str) -> None:
    if method in samplers.RENAMED:
        raise InputError(f"--method={method} was renamed --method={samplers.RENAMED[method]} "
                         "(ours, inspired by Vec2Face; not Vec2Face's method)")
    if method not in samplers.METHODS:
        raise InputError(
            f"unknown --method {method!r}; choose one of {', '.join(samplers.METHODS)}")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The validated inputs of a baseline draw."""

    n: int
    d: int
    gallery: np.ndarray | None
    labels: np.ndarray | None


def validate(method: str, c: PackConfig, options: dict) -> Inputs | None:
    """Every check of a sample run, before anything is drawn or written: the method, every
    sampler flag (whatever the method), and for the baselines the files and the figure
    flags (the CLI plumbing checks and locks --out_dir before any of this). Returns the
    loaded inputs of a baseline (None for hyperface, whose flags `packing.run` checks).
    Raises InputError."""
    check_method(method)
    samplers.check_parameters(c.num_identities, **{k: v for k, v in options.items()
                                                   if k != "gallery_labels"})
    if method == "hyperface":
        return None
    if method in samplers.NEEDS_GALLERY and not c.gallery:
        raise InputError(f"--method={method} needs a --gallery")
    if method == "diffr" and not options["gallery_labels"]:
        raise InputError("--method=diffr needs --gallery_labels")
    # The figure flags (--packing_reduce, --tile_size, ...) as pack checks them; --alpha
    # only enters the figures with a gallery.
    problem.check_settings(dataclasses.replace(c, alpha=c.alpha if c.gallery else 0.0))
    samplers.check_parameters(c.num_identities, seed=c.seed)
    gallery = labels = None
    d = c.dim
    if c.gallery:
        gallery = load_embeddings(c.gallery, "gallery")
        if "dim" in c.explicit and gallery.shape[1] != c.dim:
            raise InputError(f"--dim={c.dim} conflicts with the gallery file {c.gallery} "
                             f"of dimension {gallery.shape[1]}")
        d = gallery.shape[1]
    samplers.check_parameters(c.num_identities, d)
    if method == "diffr":
        labels = load_labels(options["gallery_labels"], len(gallery), "gallery_labels")
        if len(np.unique(labels)) < 2:
            raise InputError(f"diffr needs at least 2 real identities in --gallery_labels "
                             f"{options['gallery_labels']}")
    return Inputs(c.num_identities, d, gallery, labels)


def draw(method: str, c: PackConfig, options: dict, inputs: Inputs):
    """`(embeddings, info)` of a baseline sampler; raises InputError on bad input."""
    n, gallery = inputs.n, inputs.gallery
    common = {"max_draws": options["max_draws"], "seed": c.seed}
    if method == "random_margin":
        return samplers.random_margin(n, inputs.d, min_distance=options["min_distance"],
                                      margin_reading=options["margin_reading"],
                                      max_pair_similarity=options["max_pair_similarity"],
                                      **common)
    if method == "diffr":
        return samplers.diffr(n, gallery, inputs.labels, nms_threshold=options["nms_threshold"],
                              **common)
    return samplers.perturbed_gallery(
        n, gallery, perturbation=options["perturbation"],
        min_source_similarity=options["min_source_similarity"],
        max_source_similarity=options["max_source_similarity"],
        max_similarity=options["max_similarity"], **common)


def check_rows(x: np.ndarray, n: int, d: int) -> None:
    """The promise of embeddings.npy: (n, d) finite unit rows. A breach is our bug: exit 1."""
    if x.shape != (n, d):
        raise RuntimeError(f"sampler returned shape {x.shape}, expected {(n, d)}")
    finite, off, row = unit_row_error(x)
    if not finite:
        raise RuntimeError("sampler returned non-finite rows; nothing written")
    if off > 1e-5:
        raise RuntimeError(f"sampler returned a non-unit row {row} "
                           f"(norm off by {off:.3g}); nothing written")


def _finite_figures(figures: dict) -> None:
    bad = [k for k, v in figures.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise RuntimeError(f"non-finite figures {bad}; nothing written")


def _paper_and_choices(method: str, c: PackConfig, options: dict) -> dict:
    values = {**c.flag_values(), **options}
    paper, choices = samplers.stated_and_chosen(method, values)
    return {"paper": paper, "choices": choices}


def run_sample(sc: SampleConfig, *, log=None) -> dict:
    """The CLI's job: `run` with the options of one SampleConfig."""
    return run(sc.method, sc.pack_config(), sc.sampler_options(), log=log)


def run(method: str, c: PackConfig, options: dict, *, log=None) -> dict:
    """Sample (or pack) identities into c.out_dir; returns the report written there."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if method != "hyperface":  # (the packing job settles its own)
        c = problem.effective_config(c, has_gallery=bool(c.gallery))
    inputs = validate(method, c, options)
    out = Path(c.out_dir)
    if method == "hyperface":
        report = packing.run(c, log=log)
        report = {"method": "hyperface", **_paper_and_choices(method, c, options), **report}
        save_json(out / "report.json", report)
        return report

    started = time.time()
    x, info = draw(method, c, options, inputs)
    n, d = x.shape
    check_rows(x, inputs.n, inputs.d)
    gallery = inputs.gallery
    alpha = c.alpha if gallery is not None else 0.0
    g = None if gallery is None else jax.numpy.asarray(gallery)
    figures = metrics.to_python(metrics.packing_figures(
        jax.numpy.asarray(x), g, alpha=alpha, reduce=c.packing_reduce,
        tile_size=packing.tile_size_of(c)))
    _finite_figures(figures)
    bound = bounds.bound_max_cos(n, d)
    report = {
        "method": method,
        **_paper_and_choices(method, c, options),
        "figures": figures,
        "packing_objective": search.packing_objective(c.packing_reduce),
        "sampler": info,
        "bound_max_cos": bound,
        "gap_to_bound": figures["max_cos"] - bound,
        "n": n, "d": d, "m": 0 if gallery is None else int(gallery.shape[0]),
        "alpha_in_loss": alpha,
        "flags": {**c.flag_values(), "method": method, **options},
        "wall_seconds": round(time.time() - started, 3),
    }
    save_embeddings(out / "embeddings.npy", x)
    save_json(out / "report.json", report)
    log(f"{method}: {n} identities from {info['draws']} draws, max_cos={figures['max_cos']:.5f} "
        f"mean_nn_cos={figures['mean_nn_cos']:.5f} -> {out}")
    return report
