"""`python -m hyperface_jax.sample --method=random_margin|diffr|vec2face|hyperface`.

Places `--num_identities` synthetic identities with one of the samplers of `samplers.py`
(or, for `hyperface`, the packing engine with the same flags as `pack`) and writes
`embeddings.npy` and `report.json` into --out_dir, with the same packing figures as `pack`
(`metrics.packing_figures`: worst-pair and nearest-neighbour cosines, gallery cosine when
a --gallery is given), so every method is judged on the same figures.
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure.
"""

import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

from hyperface_jax import bounds, cli, metrics, pack, samplers
from hyperface_jax.config import HELP_GROUPS, PackConfig, config_from_flags, define_flags
from hyperface_jax.files import InputError, load_embeddings, load_labels, save_embeddings, save_json

SAMPLER_FLAGS = {  # name: (define, default, help)
    "method": ("string", "hyperface", f"Identity sampler: {', '.join(samplers.METHODS)}."),
    "min_distance": ("float", 0.3, "random_margin: minimum cosine distance (1 - cos) between "
                                   "kept identities (HyperFace appendix: 0.3)."),
    "max_draws": ("integer", 10_000_000, "Samplers: candidates drawn at most before giving up "
                                         "(exit 2 naming how many were accepted)."),
    "gallery_labels": ("string", "", "diffr: identity label (int) of each --gallery row (.npy)."),
    "nms_threshold": ("float", 0.8, "diffr: ID-NMS threshold; a candidate is discarded when its "
                                    "cosine to a real identity mean or an accepted identity "
                                    "exceeds it."),
    "perturbation": ("float", 1.0, "vec2face: noise scale s in normalize(g + s * eps), "
                                   "eps ~ N(0, I/d) (s = 1: about 45 degrees from g)."),
    "min_source_similarity": ("float", 0.3, "vec2face: lowest cosine of a new identity to its "
                                            "source gallery row (stays near faces)."),
    "max_source_similarity": ("float", 0.7, "vec2face: highest cosine to the source row (a "
                                            "different person by the 0.7 rule)."),
    "max_similarity": ("float", 0.3, "vec2face: highest cosine between two accepted identities."),
}


def define_sampler_flags(fv: flags.FlagValues, names=None) -> None:
    for name, (kind, default, help_text) in SAMPLER_FLAGS.items():
        if names is None or name in names:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=fv)


def sampler_options(fv: flags.FlagValues) -> dict:
    return {name: fv[name].value for name in SAMPLER_FLAGS if name in fv and name != "method"}


def _gallery(c: PackConfig, method: str) -> np.ndarray | None:
    if not c.gallery:
        if method in ("diffr", "vec2face"):
            raise InputError(f"--method={method} needs a --gallery")
        return None
    gallery = load_embeddings(c.gallery, "gallery")
    if "dim" in c.explicit and gallery.shape[1] != c.dim:
        raise InputError(f"--dim={c.dim} conflicts with the gallery file {c.gallery} "
                         f"of dimension {gallery.shape[1]}")
    return gallery


def draw(method: str, c: PackConfig, options: dict, gallery: np.ndarray | None):
    """`(embeddings, info)` of a non-hyperface sampler; raises InputError on bad input."""
    n = c.num_identities
    common = {"max_draws": options["max_draws"], "seed": c.seed}
    if method == "random_margin":
        d = c.dim if gallery is None else gallery.shape[1]
        return samplers.random_margin(n, d, min_distance=options["min_distance"], **common)
    if method == "diffr":
        if not options["gallery_labels"]:
            raise InputError("--method=diffr needs --gallery_labels")
        labels = load_labels(options["gallery_labels"], len(gallery), "gallery_labels")
        return samplers.diffr(n, gallery, labels, nms_threshold=options["nms_threshold"],
                              **common)
    if method == "vec2face":
        return samplers.vec2face(
            n, gallery, perturbation=options["perturbation"],
            min_source_similarity=options["min_source_similarity"],
            max_source_similarity=options["max_source_similarity"],
            max_similarity=options["max_similarity"], **common)
    raise InputError(f"unknown --method {method!r}; choose one of {', '.join(samplers.METHODS)}")


def run(method: str, c: PackConfig, options: dict, *, log=None) -> dict:
    """Sample (or pack) identities into c.out_dir; returns the report written there."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if method not in samplers.METHODS:
        raise InputError(
            f"unknown --method {method!r}; choose one of {', '.join(samplers.METHODS)}")
    if not c.out_dir:
        raise InputError("--out_dir is required")
    out = Path(c.out_dir)
    if method == "hyperface":
        report = pack.run(c, log=log)
        report["method"] = "hyperface"
        save_json(out / "report.json", report)
        return report

    started = time.time()
    gallery = _gallery(c, method)
    x, info = draw(method, c, options, gallery)
    n, d = x.shape
    alpha = c.alpha if gallery is not None else 0.0
    g = None if gallery is None else jax.numpy.asarray(gallery)
    figures = metrics.to_python(metrics.packing_figures(
        jax.numpy.asarray(x), g, alpha=alpha, reduce=c.packing_reduce,
        tile_size=pack.tile_size_of(c)))
    bound = bounds.bound_max_cos(n, d)
    report = {
        "method": method,
        "figures": figures,
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


def main(argv: list[str] | None = None) -> int:
    fv = flags.FlagValues()
    define_flags(fv)
    define_sampler_flags(fv)
    return cli.run_main(
        argv, fv, lambda fv: run(fv["method"].value, config_from_flags(fv), sampler_options(fv)),
        help_groups={"sampler": tuple(SAMPLER_FLAGS), **HELP_GROUPS})


if __name__ == "__main__":
    sys.exit(main())
