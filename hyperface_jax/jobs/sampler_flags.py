"""The identity samplers' flags (`sample` and `compare --samplers`), JAX-free so that
`--help` stays fast."""

from absl import flags

from hyperface_jax.baselines import samplers

OURS = samplers.NOT_IN_PAPER
SAMPLER_FLAGS = {  # name: (define, default, help)
    "method": ("string", "hyperface", f"Identity sampler: {', '.join(samplers.METHODS)} "
                                      "(perturbed_gallery was called vec2face: it is ours, "
                                      "not Vec2Face's method)."),
    "margin_reading": ("string", "appendix_e", "random_margin: whose rule keeps a draw: "
                                               "'appendix_e' (HyperFace appendix E: 1 - cos "
                                               ">= --min_distance to every kept one) or "
                                               "'rebuttal' (the authors' rebuttal in the "
                                               "public review: cos <= --max_pair_similarity); "
                                               f"the default is {OURS}."),
    "min_distance": ("float", 0.3, "random_margin, --margin_reading=appendix_e: minimum cosine "
                                   "distance (1 - cos) between kept identities (appendix E's "
                                   "number: 0.3)."),
    "max_pair_similarity": ("float", 0.3, "random_margin, --margin_reading=rebuttal: highest "
                                          "cosine between kept identities (the rebuttal's "
                                          "number: 0.3)."),
    "max_draws": ("integer", 10_000_000, "Samplers: candidates drawn at most before giving up "
                                         f"(exit 2 naming how many were accepted); {OURS}."),
    "gallery_labels": ("string", "", "diffr: identity label (int) of each --gallery row (.npy)."),
    "nms_threshold": ("float", 0.7, "diffr: ID-NMS threshold; a candidate is discarded when its "
                                    "cosine to a real identity mean or an accepted identity "
                                    f"exceeds it ({OURS}: the DiffFR supplement gives no "
                                    "number; 0.7 = the same-person rule of analyze)."),
    "perturbation": ("float", 1.0, "perturbed_gallery: noise scale s in normalize(g + s * eps), "
                                   "eps ~ N(0, I/d) (s = 1: about 45 degrees from g); "
                                   f"{OURS}."),
    "min_source_similarity": ("float", 0.3, "perturbed_gallery: lowest cosine of a new identity "
                                            f"to its source gallery row; {OURS}."),
    "max_source_similarity": ("float", 0.7, "perturbed_gallery: highest cosine to the source "
                                            f"row; {OURS}."),
    "max_similarity": ("float", 0.3, "perturbed_gallery: highest cosine between two accepted "
                                     f"identities; {OURS}."),
}


def define_sampler_flags(fv: flags.FlagValues, names=None) -> None:
    for name, (kind, default, help_text) in SAMPLER_FLAGS.items():
        if names is None or name in names:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=fv)


def sampler_options(fv: flags.FlagValues) -> dict:
    return {name: fv[name].value for name in SAMPLER_FLAGS if name in fv and name != "method"}
