"""The packing run's configuration: one dataclass, from which the absl flags are made.

Each field is a flag of `python -m hyperface_jax.pack` with the same name, default and
help text, so the CLI, the Python API and `report.json` cannot drift apart.
"""

import dataclasses
from dataclasses import field
from typing import Any


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class PackConfig:
    out_dir: str = _f("", "Folder for embeddings.npy, report.json, curves.png, checkpoints/. "
                          "Re-running on the same folder resumes.")
    num_identities: int = _f(10_000, "n: number of synthetic identities (reference embeddings). "
                                     "Taken from --init when that is a file.")
    dim: int = _f(512, "d: embedding dimension. Taken from --gallery or --init when given.")
    gallery: str = _f("", "Gallery embeddings (.npy, (m, d)) for the manifold regulariser; "
                          "empty: none (then --alpha must be 0).")
    init: str = _f("random", "Initial references: 'random' (Gaussian, normalised), 'gallery' "
                             "(a random subset of n gallery rows: with m = n every identity "
                             "starts on a gallery face and the regulariser starts at 0) or a "
                             ".npy file (the paper: embeddings of faces generated separately "
                             "from the gallery).")
    alpha: float = _f(0.5, "Weight of the manifold regulariser R (paper default 0.5).")
    objective: str = _f("max", "Inner maximum over partners: 'max' (hard, the paper's), "
                               "'logsumexp' (smooth max of cosines, temperature annealed "
                               "upward) or 'riesz' (log Riesz energy, exponent annealed "
                               "upward).")
    temperature_start: float = _f(1.0, "Smooth objectives: temperature (logsumexp) or Riesz "
                                       "exponent (riesz) at step 0 ...")
    temperature_end: float = _f(1e4, "... grown geometrically to this ...")
    anneal_steps: int = _f(0, "... over this many steps (0: --steps).")
    packing_reduce: str = _f("mean", "Packing term over identities: 'mean' of nearest-neighbour "
                                     "cosines (the paper's loss) or 'max' (the literal worst "
                                     "pair).")
    optimizer: str = _f("adam", "A name of hyperface_jax.engine.optimizers.CATALOGUE (optax, "
                                "optax.contrib, riemannian_adam; docs/optimizers.md) or your "
                                "own module.path:factory returning an optax "
                                "GradientTransformation.")
    learning_rate: float = _f(0.01, "Initial learning rate.")
    schedule: str = _f("staircase", "Learning-rate schedule: constant, staircase (lr x "
                                    "decay_rate every decay_every steps, the paper's), "
                                    "exponential (the same, continuous), cosine (down to "
                                    "--final_learning_rate over --steps) or geometric "
                                    "(from --learning_rate to --final_learning_rate by a "
                                    "constant factor per step over --steps).")
    decay_rate: float = _f(0.5, "Factor of the staircase/exponential schedule.")
    decay_every: int = _f(1000, "Steps per decay of the staircase/exponential schedule.")
    final_learning_rate: float = _f(0.0, "End value of the cosine and geometric schedules "
                                         "(geometric needs it > 0).")
    steps: int = _f(5000, "Total optimisation steps (a resumed run continues up to this).")
    batch_size: int = _f(0, "Mini-batch size B (paper Algorithm 2); 0 = full batch.")
    minibatch_update: str = _f("sparse", "Mini-batch mode: 'sparse' updates only the batch rows "
                                         "and their optimizer state; 'dense' lets momentum move "
                                         "every row.")
    project_gradient: bool = _f(True, "Project gradients onto the sphere's tangent space "
                                      "before the optimizer (the gradient of the loss at "
                                      "normalize(x)).")
    restarts: int = _f(1, "Independent random starts optimised together (vmap); the one with "
                          "the lowest exact worst-pair cosine is kept. For small hard codes.")
    polish_steps: int = _f(0, "Extra steps after --steps on the literal worst pair "
                              "(objective max, reduce max) at --polish_learning_rate.")
    polish_learning_rate: float = _f(1e-4, "Constant learning rate of the polishing steps.")
    seed: int = _f(0, "PRNG seed for the initialisation and the mini-batch order.")
    tile_size: int = _f(0, "Rows per tile of the blockwise nearest-neighbour search "
                           "(memory ~ tile_size x max(n, m) floats); 0: by backend (CPU "
                           "1024, GPU/TPU 4096).")
    matmul_precision: str = _f("highest", "Precision of the solver's similarity matmuls: "
                                          "highest, high, default (XLA precisions; on "
                                          "TPU/GPU the lower ones use bf16/tf32 passes), "
                                          "or bfloat16 (bf16 inputs, exact float32 value "
                                          "of each chosen pair). Reported figures are "
                                          "always exact float32.")
    neighbor_list_size: int = _f(0, "Off by default (0: exact search every step). K > 0: "
                                    "each row's loss looks only at its K nearest partners, "
                                    "found by exact search when --neighbor_rebuild says; "
                                    "report.json audits how often a true nearest partner "
                                    "had left a list. With --batch_size: a listed "
                                    "mini-batch, each batch row looks at its K nearest "
                                    "rows of the whole set (not at the other batch rows).")
    gallery_list_size: int = _f(4, "With neighbour lists: gallery rows kept per identity.")
    neighbor_rebuild: str = _f("every", "With neighbour lists, when to rebuild them: "
                                        "'displacement' when rows have moved far enough "
                                        "that a list may have lost its nearest partner (the "
                                        "hard max) or its top K (smooth objectives), a "
                                        "conservative bound, so the loss equals the exact "
                                        "one; 'every' --neighbor_refresh_every steps (an "
                                        "approximation).")
    neighbor_refresh_every: int = _f(20, "With --neighbor_rebuild=every: steps between exact "
                                         "rebuilds.")
    b1: float | None = _f(None, "Optimizer hyper-parameter b1 (adam family, lion); optax "
                                "default if unset.")
    b2: float | None = _f(None, "Optimizer hyper-parameter b2; optax default if unset.")
    eps: float | None = _f(None, "Optimizer epsilon; optax default if unset.")
    weight_decay: float | None = _f(None, "Weight decay (adamw, lamb, lion); optax default "
                                          "if unset.")
    momentum: float | None = _f(None, "Momentum (sgd, rmsprop); optax default if unset.")
    nesterov: bool | None = _f(None, "Nesterov momentum (sgd, rmsprop).")
    decay: float | None = _f(None, "Decay of the squared-gradient average (rmsprop).")
    checkpoint_every: int = _f(500, "Steps between orbax checkpoints.")
    max_to_keep: int = _f(3, "Checkpoints kept on disk.")
    log_every: int = _f(50, "Steps between exact figures (logged, plotted, in report.json).")
    figure_sample: int = _f(0, "0: figures from an exact search of every row (O(n^2 d)). "
                               "s > 0: figures estimated from s random rows searched exactly "
                               "against all rows (O(s n d); for n in the millions), labelled "
                               "as estimates in report.json: max_cos is then a lower bound of "
                               "the worst pair, mean_nn_cos has a confidence interval. The "
                               "same rows at every log step.")
    progress: bool = _f(True, "Show a progress bar.")
    # Placement (docs/sharding.md): where the run executes, not what it computes.
    devices: str = _f("all", "Devices to shard the references over: 'all' or a count. One "
                             "device runs the single-device solver.")
    coordinator_address: str = _f("", "Multi-host: host:port of process 0's coordinator "
                                      "(jax.distributed.initialize); empty: one process.")
    num_processes: int = _f(0, "Multi-host: number of processes (with --coordinator_address).")
    process_id: int = _f(-1, "Multi-host: this process's index in [0, --num_processes).")
    distributed: bool = _f(False, "Multi-host without the three flags above: let JAX detect the "
                                  "cluster (TPU pod slice, SLURM, Open MPI, Kubernetes).")
    # Names of the fields the user set explicitly (CLI flags present or keyword arguments);
    # used to detect conflicts such as --dim against the gallery's dimension.
    explicit: frozenset = field(default=frozenset(), metadata={"flag": False})

    def optimizer_hyperparameters(self) -> dict[str, Any]:
        names = ("b1", "b2", "eps", "weight_decay", "momentum", "nesterov", "decay")
        return {k: getattr(self, k) for k in names}

    def flag_values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in flag_fields()}


def flag_fields():
    from hyperface_jax import cli

    return cli.flag_fields(PackConfig)


def make_config(**values) -> PackConfig:
    """A PackConfig from keyword arguments, remembering which were given explicitly."""
    return PackConfig(**values, explicit=frozenset(values))


def define_flags(flag_values) -> None:
    """Define one absl flag per PackConfig field on `flag_values` (e.g. absl.flags.FLAGS)."""
    from hyperface_jax import cli

    cli.define_dataclass_flags(flag_values, PackConfig)


def config_from_flags(flag_values) -> PackConfig:
    from hyperface_jax import cli

    values, explicit = cli.dataclass_values(flag_values, PackConfig)
    return PackConfig(**values, explicit=explicit)


# `--help` lists the flags by topic in this order (tests/test_cli_plumbing.py checks that
# every flag has exactly one topic).
HELP_GROUPS = {
    "problem": ("num_identities", "dim", "gallery", "init", "alpha", "seed"),
    "objective": ("objective", "packing_reduce", "temperature_start", "temperature_end",
                  "anneal_steps", "restarts", "polish_steps", "polish_learning_rate"),
    "optimizer": ("optimizer", "learning_rate", "schedule", "decay_rate", "decay_every",
                  "final_learning_rate", "b1", "b2", "eps", "weight_decay", "momentum",
                  "nesterov", "decay"),
    "mode": ("steps", "batch_size", "minibatch_update", "project_gradient"),
    "speed": ("tile_size", "matmul_precision", "neighbor_list_size", "gallery_list_size",
              "neighbor_rebuild", "neighbor_refresh_every"),
    "devices": ("devices", "coordinator_address", "num_processes", "process_id",
                "distributed"),
    "run": ("out_dir", "checkpoint_every", "max_to_keep", "log_every", "figure_sample",
            "progress"),
}
