"""The packing run's configuration: one dataclass, from which the absl flags are made.

Each field is a flag of `python -m hyperface_jax.pack` with the same name, default and
help text, so the CLI, the Python API and `report.json` cannot drift apart.
"""

import dataclasses
from dataclasses import field
from typing import Any

from hyperface_jax import options
from hyperface_jax.options import SEED_MAX, option

# The choices of the engine's named options (tests/test_cli_options.py checks each equals
# the engine's own tuple; spelled here so that --help imports no JAX).
OBJECTIVES = ("max", "logsumexp", "riesz")
PACKING_REDUCTIONS = ("mean", "max")
SCHEDULES = ("constant", "staircase", "exponential", "cosine", "geometric")
MINIBATCH_UPDATES = ("sparse", "dense")
MATMUL_PRECISIONS = ("highest", "high", "default", "bfloat16")
NEIGHBOR_REBUILDS = ("displacement", "every")


@dataclasses.dataclass(frozen=True)
class PackConfig:
    num_identities: int = option(10_000, "n: number of synthetic identities (reference "
                                 "embeddings). Taken from --init when that is a file.",
                                 group="problem", low=2)
    dim: int = option(512, "d: embedding dimension. Taken from --gallery or --init when given.",
                      group="problem", low=2)
    gallery: str = option("", "Gallery embeddings (.npy, (m, d)) for the manifold regulariser; "
                          "empty: none (pure packing: --alpha is then 0).",
                          group="problem")
    init: str = option("random", "Initial references: 'random' (Gaussian, normalised), 'gallery' "
                       "(a random subset of n gallery rows: with m = n every identity "
                       "starts on a gallery face and the regulariser starts at 0) or a "
                       ".npy file (the paper: embeddings of faces generated separately "
                       "from the gallery).", group="problem")
    alpha: float | None = option(None, "Weight of the manifold regulariser R. Unset: the "
                                 "paper's 0.5 with a --gallery, 0 without one (report."
                                 "json's flags say the value used).", group="problem",
                                 low=0)
    seed: int = option(0, "PRNG seed for the initialisation and the mini-batch order.",
                       group="problem", low=0, high=SEED_MAX)
    objective: str = option("max", "Inner maximum over partners: 'max' (hard, the paper's), "
                            "'logsumexp' (smooth max of cosines, temperature annealed "
                            "upward) or 'riesz' (log Riesz energy, exponent annealed "
                            "upward).", group="objective", choices=OBJECTIVES)
    packing_reduce: str = option("mean", "Packing term over identities: 'mean' of nearest-"
                                 "neighbour cosines (the paper's loss) or 'max' (the literal worst "
                                 "pair).", group="objective", choices=PACKING_REDUCTIONS)
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
    polish_steps: int = option(0, "Extra steps after --steps on the literal worst pair "
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
    batch_size: int = option(0, "Mini-batch size B (paper Algorithm 2); 0 = full batch.",
                             group="mode", low=0)
    minibatch_update: str = option("sparse", "Mini-batch mode: 'sparse' updates only the batch "
                                   "rows and their optimizer state; 'dense' lets momentum move "
                                   "every row.", group="mode", choices=MINIBATCH_UPDATES)
    project_gradient: bool = option(True, "Project gradients onto the sphere's tangent space "
                                    "before the optimizer (the gradient of the loss at "
                                    "normalize(x)).", group="mode")
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
    devices: str = option("all", "Devices to shard the references over: 'all' or a count. One "
                          "device runs the single-device solver.", group="devices")
    coordinator_address: str = option("", "Multi-host: host:port of process 0's coordinator "
                                      "(jax.distributed.initialize); empty: one process.",
                                      group="devices")
    num_processes: int = option(0, "Multi-host: number of processes (with --coordinator_address).",
                                group="devices", low=0)
    process_id: int = option(-1, "Multi-host: this process's index in [0, --num_processes).",
                             group="devices", low=-1, role="process_index")
    distributed: bool = option(False, "Multi-host without the three flags above: let JAX detect "
                               "the cluster (TPU pod slice, SLURM, Open MPI, Kubernetes).",
                               group="devices")
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


def flag_fields():
    return options.flag_fields(PackConfig)


def make_config(**values) -> PackConfig:
    """A PackConfig from keyword arguments, remembering which were given explicitly
    (unchecked: `problem.check_settings` checks it before a run)."""
    return PackConfig(**values, explicit=frozenset(values))


def define_flags(flag_values) -> None:
    """Define one absl flag per PackConfig field on `flag_values` (e.g. absl.flags.FLAGS)."""
    from hyperface_jax import cli

    cli.define_dataclass_flags(flag_values, PackConfig)


def config_from_flags(flag_values) -> PackConfig:
    """The checked PackConfig of parsed flags (InputError on a value out of bounds)."""
    from hyperface_jax import cli

    values, explicit = cli.dataclass_values(flag_values, PackConfig)
    return options.make_checked(PackConfig, values, explicit)


# `--help` lists the flags by topic in this order (each field's `group`).
HELP_GROUPS = options.help_groups(PackConfig)
