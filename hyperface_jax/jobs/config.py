"""The packing run's configuration: one dataclass, from which the absl flags are made.

Each field is a flag of `python -m hyperface_jax.pack` with the same name, default and
help text, so the CLI, the Python API and `report.json` cannot drift apart.
"""

import dataclasses
from dataclasses import field
from typing import Any

from hyperface_jax import options
from hyperface_jax.baselines.samplers import METHODS, NOT_IN_PAPER
from hyperface_jax.engine.choices import (  # the engine's own names, without JAX
    MATMUL_PRECISIONS,
    MINIBATCH_UPDATES,
    NEIGHBOR_REBUILDS,
    OBJECTIVES,
    PACKING_REDUCTIONS,
    SCHEDULES,
)
from hyperface_jax.options import SEED_MAX, option


@dataclasses.dataclass(frozen=True)
class PlacementOptions:
    """Where a run executes, not what it computes (docs/sharding.md): pack's and figures'."""
    devices: str = option("all", "Devices to shard the references over: 'all' or a count. One "
                          "device runs the single-device solver.", group="devices")
    coordinator_address: str = option("", "Multi-host: host:port of process 0's coordinator "
                                      "(jax.distributed.initialize); empty: one process.",
                                      group="devices", role="multi_process")
    num_processes: int = option(0, "Multi-host: number of processes (with --coordinator_address).",
                                group="devices", low=0)
    process_id: int = option(-1, "Multi-host: this process's index in [0, --num_processes).",
                             group="devices", low=-1)
    distributed: bool = option(False, "Multi-host without the three flags above: let JAX detect "
                               "the cluster (TPU pod slice, SLURM, Open MPI, Kubernetes).",
                               group="devices", role="multi_process")


@dataclasses.dataclass(frozen=True)
class PackConfig(PlacementOptions):
    HELP_ORDER = ("problem", "objective", "optimizer", "mode", "speed", "devices", "run")

    num_identities: int = option(10_000, "n: number of synthetic identities (reference "
                                 "embeddings). Taken from --init when that is a file (over "
                                 "a flagfile's value; given on the command line, it must "
                                 "agree with the file).",
                                 group="problem", low=2)
    dim: int = option(512, "d: embedding dimension. Taken from --gallery or --init when given "
                      "(as --num_identities from --init).",
                      group="problem", low=2)
    gallery: str = option("", "Gallery embeddings (.npy, (m, d)) for the manifold regulariser; "
                          "empty: none (pure packing: --alpha is then 0).",
                          group="problem")
    init: str = option("random", "Initial references: 'random' (Gaussian, normalised), 'gallery' "
                       "(a random subset of n gallery rows: with m = n every identity "
                       "starts on a gallery face and the regulariser starts at 0), 'code' "
                       "(the best algebraic code of n points in d-D, hyperface_jax.baselines."
                       "codes.algebraic_code, turned by a random rotation drawn from --seed; "
                       "ours, not the paper's) or a .npy file (the paper: embeddings of faces "
                       "generated separately from the gallery).", group="problem")
    alpha: float | None = option(None, "Weight of the manifold regulariser R. Unset: the "
                                 "paper's 0.5 with a --gallery, 0 without one (report."
                                 "json's flags say the value used).", group="problem",
                                 low=0)
    seed: int = option(0, "PRNG seed for the initialisation and the mini-batch order.",
                       group="problem", low=0, high=SEED_MAX)
    objective: str = option("max", "Inner maximum over partners: 'max' (hard, as in Eq. 1), "
                            "'logsumexp' (smooth max of cosines, temperature annealed "
                            "upward) or 'riesz' (log Riesz energy, exponent annealed "
                            "upward).", group="objective", choices=OBJECTIVES)
    packing_reduce: str = option("mean", "Packing objective: 'max' = worst pair (Eq. 1, "
                                 "Tammes): the paper's statement; 'mean' = mean nearest-"
                                 "neighbour (our reading of Algorithm 1's loss): the mean over "
                                 "identities of each one's nearest-neighbour cosine. "
                                 "report.json names the one that ran.", group="objective",
                                 choices=PACKING_REDUCTIONS)
    temperature_start: float = option(1.0, "Smooth objectives: temperature (logsumexp) or Riesz "
                                      "exponent (riesz) at step 0 ...",
                                      group="objective", low=0, low_open=True)
    temperature_end: float = option(1e4, "... grown geometrically to this ...",
                                    group="objective", low=0, low_open=True)
    anneal_steps: int = option(0, "... over this many steps (0: --steps).",
                               group="objective", low=0)
    restarts: int = option(1, "Independent random starts optimised together (vmap); the one with "
                           "the lowest exact worst-pair cosine is kept. For small hard codes.",
                           group="objective", low=1)
    polish_steps: int = option(0, "Extra steps after --steps on the worst pair (Eq. 1, Tammes) "
                               "(objective max, reduce max) at --polish_learning_rate.",
                               group="objective", low=0)
    polish_learning_rate: float = option(1e-4, "Constant learning rate of the polishing steps.",
                                         group="objective", low=0, low_open=True)
    optimizer: str = option("adam", "A name of hyperface_jax.engine.optimizers.CATALOGUE (optax, "
                            "optax.contrib, riemannian_adam; docs/optimizers.md) or your "
                            "own module.path:factory returning an optax "
                            "GradientTransformation.", group="optimizer")
    learning_rate: float = option(0.01, "Initial learning rate.",
                                  group="optimizer", low=0, low_open=True)
    schedule: str = option("staircase", "Learning-rate schedule: constant, staircase (lr x "
                           "decay_rate every decay_every steps, the paper's), "
                           "exponential (the same, continuous), cosine (down to "
                           "--final_learning_rate over --steps) or geometric "
                           "(from --learning_rate to --final_learning_rate by a "
                           "constant factor per step over --steps).",
                           group="optimizer", choices=SCHEDULES)
    decay_rate: float = option(0.5, "Factor of the staircase/exponential schedule.",
                               group="optimizer", low=0, low_open=True, high=1)
    decay_every: int = option(1000, "Steps per decay of the staircase/exponential schedule.",
                              group="optimizer", low=1)
    final_learning_rate: float = option(0.0, "End value of the cosine and geometric schedules "
                                        "(geometric needs it > 0).", group="optimizer", low=0)
    b1: float | None = option(None, "Optimizer hyper-parameter b1 (adam family, lion); optax "
                              "default if unset.",
                              group="optimizer", low=0, high=1, high_open=True)
    b2: float | None = option(None, "Optimizer hyper-parameter b2; optax default if unset.",
                              group="optimizer", low=0, high=1, high_open=True)
    eps: float | None = option(None, "Optimizer epsilon; optax default if unset.",
                               group="optimizer", low=0)
    weight_decay: float | None = option(None, "Weight decay (adamw, lamb, lion); optax default "
                                        "if unset.", group="optimizer", low=0)
    momentum: float | None = option(None, "Momentum (sgd, rmsprop); optax default if unset.",
                                    group="optimizer", low=0,
                                   high=1)
    nesterov: bool | None = option(None, "Nesterov momentum (sgd, rmsprop).", group="optimizer")
    decay: float | None = option(None, "Decay of the squared-gradient average (rmsprop).",
                                 group="optimizer", low=0, high=1)
    steps: int = option(5000, "Total optimisation steps (a resumed run continues up to this).",
                        group="mode", low=0)
    batch_size: int = option(0, "Mini-batch size B (paper Algorithm 2); 0 = full batch. Both "
                             "packing objectives take a maximum over partners, which App. "
                             "B's unbiasedness (a sum over pairs) does not cover: the "
                             "mini-batch loss is a biased (low) estimate of the full one.",
                             group="mode", low=0)
    minibatch_update: str = option("sparse", "Mini-batch mode: 'sparse' updates only the batch "
                                   "rows and their optimizer state; 'dense' lets momentum move "
                                   "every row.", group="mode", choices=MINIBATCH_UPDATES)
    project_gradient: bool = option(True, "Project gradients onto the sphere's tangent space "
                                    "before the optimizer (the gradient of the loss at "
                                    "normalize(x)). On by default: our choice, not in the "
                                    "paper.", group="mode")
    tile_size: int = option(0, "Rows per tile of the blockwise nearest-neighbour search "
                            "(memory ~ tile_size x max(n, m) floats); 0: by backend (CPU "
                            "1024, GPU/TPU 4096).", group="speed", low=0)
    matmul_precision: str = option("highest", "Precision of the solver's similarity matmuls: "
                                   "highest, high, default (XLA precisions; on "
                                   "TPU/GPU the lower ones use bf16/tf32 passes), "
                                   "or bfloat16 (bf16 inputs, exact float32 value "
                                   "of each chosen pair). Reported figures are "
                                   "always exact float32.",
                                   group="speed", choices=MATMUL_PRECISIONS)
    neighbor_list_size: int = option(0, "Off by default (0: exact search every step). K > 0: "
                                     "each row's loss looks only at its K nearest partners, "
                                     "found by exact search when --neighbor_rebuild says; "
                                     "report.json audits how often a true nearest partner "
                                     "had left a list. With --batch_size: a listed "
                                     "mini-batch, each batch row looks at its K nearest "
                                     "rows of the whole set (not at the other batch rows).",
                                     group="speed", low=0)
    gallery_list_size: int = option(4, "With neighbour lists: gallery rows kept per identity.",
                                    group="speed", low=1)
    neighbor_rebuild: str = option("every", "With neighbour lists, when to rebuild them: "
                                   "'displacement' when rows have moved far enough "
                                   "that a list may have lost its nearest partner (the "
                                   "hard max) or its top K (smooth objectives), a "
                                   "conservative bound, so the loss equals the exact "
                                   "one; 'every' --neighbor_refresh_every steps (an "
                                   "approximation).", group="speed", choices=NEIGHBOR_REBUILDS)
    neighbor_refresh_every: int = option(20, "With --neighbor_rebuild=every: steps between exact "
                                         "rebuilds.", group="speed", low=1)
    neighbor_descent_every: int = option(0, "With --neighbor_rebuild=every: every S steps between "
                                         "exact rebuilds, refresh each row's list from its "
                                         "neighbours' neighbours (NN-descent: K + K^2 "
                                         "candidates searched exactly, n K^2 d instead of "
                                         "n^2 d; gallery lists wait for the exact rebuild). "
                                         "0: off. report.json counts the refreshes.",
                                         group="speed", low=0)
    out_dir: str = option("", "Folder for embeddings.npy, report.json, curves.png, checkpoints/. "
                          "Re-running on the same folder resumes.", group="run", role="output_dir")
    checkpoint_every: int = option(500, "Steps between orbax checkpoints.", group="run", low=1)
    max_to_keep: int = option(3, "Checkpoints kept on disk.", group="run", low=1)
    log_every: int = option(50, "Steps between exact figures (logged, plotted, in report.json).",
                            group="run", low=1)
    figure_sample: int = option(0, "0: figures from an exact search of every row (O(n^2 d)). "
                                "s > 0: figures estimated from s random rows searched exactly "
                                "against all rows (O(s n d); for n in the millions), labelled "
                                "as estimates in report.json: max_cos is then a lower bound of "
                                "the worst pair, mean_nn_cos has a confidence interval. The "
                                "same rows at every log step.", group="run", low=0)
    progress: bool = option(True, "Show a progress bar.", group="run")
    # Names of the fields the user set explicitly (CLI flags present or keyword arguments);
    # used to detect conflicts such as --dim against the gallery's dimension.
    explicit: frozenset = field(default=frozenset(), metadata={"flag": False})

    def optimizer_hyperparameters(self) -> dict[str, Any]:
        names = ("b1", "b2", "eps", "weight_decay", "momentum", "nesterov", "decay")
        return {k: getattr(self, k) for k in names}

    def flag_values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in flag_fields()}

    def pack_config(self) -> "PackConfig":
        """The packing options alone, of a config that holds more (sample's, compare's):
        what `packing.run` and its resume check see."""
        names = [f.name for f in dataclasses.fields(PackConfig)]
        values = {k: getattr(self, k) for k in names}
        return PackConfig(**{**values, "explicit": self.explicit & set(names)})


def flag_fields():
    return options.flag_fields(PackConfig)


def make_config(**values) -> PackConfig:
    """A PackConfig from keyword arguments, remembering which were given explicitly
    (unchecked: `problem.check_settings` checks it before a run)."""
    return PackConfig(**values, explicit=frozenset(values))


# `--help` lists the flags by topic in this order (each field's `group`).
HELP_GROUPS = options.help_groups(PackConfig)


@dataclasses.dataclass(frozen=True)
class FiguresConfig(PlacementOptions):
    """`python -m hyperface_jax.figures`: the exact figures of a file of references."""
    HELP_ORDER = ("inputs", "figures", "devices", "run")

    embeddings: str = option("", "References (.npy, (n, d)), e.g. a pack run's "
                             "embeddings.npy.", group="inputs")
    gallery: str = option("", "Optional gallery (.npy, (m, d)) for the gallery cosine and the "
                          "regulariser.", group="inputs")
    alpha: float = option(0.5, "Weight of the regulariser in the reported loss (with a "
                          "--gallery).", group="figures", low=0)
    packing_reduce: str = option("mean", "Packing term of the reported loss: 'max' = worst "
                                 "pair (Eq. 1, Tammes), the paper's statement; 'mean' = mean "
                                 "nearest-neighbour (our reading of Algorithm 1's loss).",
                                 group="figures", choices=PACKING_REDUCTIONS)
    tile_size: int = option(0, "Rows per tile (0: by backend).", group="figures", low=0)
    out: str = option("", "JSON file for the figures (required).", group="run",
                      role="output_file")


# The sampler options of `python -m hyperface_jax.sample` (beside every pack option).
OURS = NOT_IN_PAPER


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """The identity samplers' settings: sample's (with its --method) and compare's (with
    --samplers)."""

    margin_reading: str = option("appendix_e", "random_margin: whose rule keeps a draw: "
                                 "'appendix_e' (HyperFace appendix E: 1 - cos >= "
                                 "--min_distance to every kept one) or 'rebuttal' (the authors' "
                                 "rebuttal in the public review: cos <= --max_pair_similarity); "
                                 f"the default is {OURS}.", group="sampler",
                                 choices=("appendix_e", "rebuttal"))
    min_distance: float = option(0.3, "random_margin, --margin_reading=appendix_e: minimum "
                                 "cosine distance (1 - cos) between kept identities (appendix "
                                 "E's number: 0.3).", group="sampler")
    max_pair_similarity: float = option(0.3, "random_margin, --margin_reading=rebuttal: highest "
                                        "cosine between kept identities (the rebuttal's "
                                        "number: 0.3).", group="sampler")
    max_draws: int = option(10_000_000, "Samplers: candidates drawn at most before giving up "
                            f"(exit 2 naming how many were accepted); {OURS}.",
                            group="sampler", low=1)
    gallery_labels: str = option("", "diffr: identity label (int) of each --gallery row "
                                 "(.npy).", group="sampler")
    nms_threshold: float = option(0.7, "diffr: ID-NMS threshold; a candidate is discarded when "
                                  "its cosine to a real identity mean or an accepted identity "
                                  f"exceeds it ({OURS}: the DiffFR supplement gives no number; "
                                  "0.7 = the same-person rule of analyze).", group="sampler")
    perturbation: float = option(1.0, "perturbed_gallery: noise scale s in normalize(g + s * "
                                 "eps), eps ~ N(0, I/d) (s = 1: about 45 degrees from g); "
                                 f"{OURS}.", group="sampler")
    min_source_similarity: float = option(0.3, "perturbed_gallery: lowest cosine of a new "
                                          f"identity to its source gallery row; {OURS}.",
                                          group="sampler")
    max_source_similarity: float = option(0.7, "perturbed_gallery: highest cosine to the "
                                          f"source row; {OURS}.", group="sampler")
    max_similarity: float = option(0.3, "perturbed_gallery: highest cosine between two "
                                   f"accepted identities; {OURS}.", group="sampler")

    def sampler_options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in options.flag_fields(SamplerOptions)}


@dataclasses.dataclass(frozen=True)
class SamplerMethod:
    """Which sampler `sample` runs (compare takes a list instead, --samplers)."""
    method: str = option("hyperface", f"Identity sampler: {', '.join(METHODS)} "
                         "(perturbed_gallery was called vec2face: it is ours, not Vec2Face's "
                         "method).", group="sampler")


# (Bases in this order: the fields follow PackConfig's, --method before its settings.)
@dataclasses.dataclass(frozen=True)
class SampleConfig(SamplerOptions, SamplerMethod, PackConfig):
    """`python -m hyperface_jax.sample`: a baseline sampler, or pack itself (hyperface)."""
    HELP_ORDER = ("sampler",) + PackConfig.HELP_ORDER


# analyze --clean_rule: which synthetic images --clean_top_k drops, and whose rule it is.
CLEAN_RULES = {
    "pairs": "HyperFace appendix D: the k most similar synthetic-real pairs over all pairs; "
             "their distinct synthetic images are dropped (at most k)",
    "images": "ours (the default): each synthetic image paired with its most similar real "
              "image, the k most similar of these pairs, so exactly k distinct images",
}


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """`python -m hyperface_jax.analyze`: the quality of a labelled set of face features."""
    HELP_ORDER = ("inputs", "thresholds", "cleaning", "computation", "run")

    embeddings: str = option("", "Per-image features of the set (.npy, (N, d), unit rows; "
                             "memory-mapped).", group="inputs")
    labels: str = option("", "Identity label (int) of each row (.npy, (N,)).", group="inputs")
    reference: str = option("", "Optional real reference set (.npy, (R, d), unit rows) for "
                            "identity leakage and --clean_top_k.", group="inputs")
    reference_labels: str = option("", "Identity labels of --reference; empty: every "
                                   "reference row is its own identity.", group="inputs")
    identity_embeddings: str = option("", "Optional (C, d) .npy of the embeddings the set was "
                                      "generated from (e.g. pack's embeddings.npy), row i for "
                                      "label i: adds the ID consistency of each image to its "
                                      "own identity embedding.", group="inputs")
    outlier_threshold: float = option(0.3, "Intra-class noise: an image whose cosine to the "
                                      "mean of the other images of its identity (leave-one-"
                                      "out) is below this is an outlier (Vec2Face: 0.3).",
                                      group="thresholds", low=-1, high=1)
    same_identity_threshold: float = option(0.7, "Inter-class noise: two identities whose "
                                            "means have a cosine above this are the same "
                                            "person (Vec2Face/WebFace260M: 0.7).",
                                            group="thresholds", low=-1, high=1)
    leakage_threshold: float = option(0.7, "Identity leakage: a synthetic identity whose mean "
                                      "has a cosine above this to a reference identity mean "
                                      "leaks (0.7).", group="thresholds", low=-1, high=1)
    clean_top_k: int = option(0, "With --reference: write clean_drop.txt, the synthetic images "
                              "to drop by --clean_rule (HyperFace appendix D: k = 200); 0: "
                              "off.", group="cleaning", low=0)
    clean_rule: str = option("images", "--clean_top_k's rule: 'pairs' (HyperFace appendix D: "
                             "the k most similar synthetic-real pairs over all pairs; their "
                             "distinct synthetic images, at most k, are dropped) or 'images' "
                             "(the default, ours: each synthetic image paired with its most "
                             "similar real image, the k best of these pairs: exactly k "
                             "distinct images).", group="cleaning", choices=tuple(CLEAN_RULES))
    drop: str = option("", "Rules whose images to drop, comma-separated: clean_top_k (the "
                       "--clean_top_k images), intra_class_outliers, leaked_identities (every "
                       "image of an identity above --leakage_threshold to a reference "
                       "identity). Writes drop_rows.txt and, with --files, drop.txt. Empty: "
                       "clean_top_k when --clean_top_k > 0.", group="cleaning")
    files: str = option("", "The image file of each embeddings row: the .json listing "
                        "bridges.embed writes beside its output (its 'rows' list, in row "
                        "order), or a text file of one path per line. With something to drop, "
                        "writes drop.txt (one path per line, as listed).", group="cleaning")
    impostor_sample: int = option(20_000, "Impostor pairs: all different-label pairs among this "
                                  "many random images (~s^2/2 pairs); exact when N <= this.",
                                  group="computation", low=2)
    chunk_rows: int = option(2048, "Rows per block (memory ~ chunk_rows^2 floats).",
                             group="computation", low=2)
    seed: int = option(0, "Seed of the impostor subset.", group="computation", low=0,
                       high=SEED_MAX)
    list_limit: int = option(1000, "Inter-class pairs and leaked identities listed in "
                             "analysis.json at most (counts are exact).", group="run", low=2)
    out_dir: str = option("", "Folder for analysis.json/.md/.png and the lists.", group="run",
                          role="output_dir")
    progress: bool = option(True, "Show progress bars.", group="run")
