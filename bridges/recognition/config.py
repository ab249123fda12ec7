"""The training run's configuration: one dataclass, from which the absl flags are made
(the pattern of hyperface_jax.jobs.config), so CLI, Python API and the stored run cannot drift."""

import dataclasses

from hyperface_jax import options
from hyperface_jax.options import SEED_MAX, option

_f = option  # (the option table: hyperface_jax/options.py)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    HELP_ORDER = ("data", "model", "head", "optimisation", "compute", "run")

    data: str = _f("", "Training set: a folder with one sub-folder of images per identity "
                       "(bridges.generate writes dataset/<%06d>/<%03d>.png).", group="data")
    exclude: str = _f("", "A text file of images to leave out of --data, one path per line "
                          "(relative to --data, or absolute), e.g. the drop.txt of "
                          "hyperface_jax.analyze; identities left empty are dropped.", group="data")
    out_dir: str = _f("", "Folder for checkpoints/, model.pt, history.csv, steps.csv, "
                          "curves.png, report.json. Re-running on it resumes.",
                      group="run", role="output_dir")
    arch: str = _f("ir50", "Backbone: ir18, ir34, ir50, ir100 or se_ir50.",
                   group="model", choices=("ir18", "ir34", "ir50", "ir100", "se_ir50"))
    width: int = _f(64, "Channels of the first stage (64 in the published iResNets).",
                    group="model", low=1)
    input_size: int = _f(112, "Square input side in pixels (images are resized to it).",
                         group="model", low=16)
    embedding_size: int = _f(512, "Embedding dimension.", group="model", low=2)
    dropout: float = _f(0.0, "Dropout before the embedding FC (arcface_torch: 0).",
                        group="model", low=0, high=1, high_open=True)
    head: str = _f("adaface", "Loss head: adaface, arcface, cosface or groupface.",
                   group="head", choices=("arcface", "cosface", "adaface", "groupface"))
    margin: float = _f(-1.0, "Margin m; negative: the head's published default "
                             "(arcface 0.5, cosface 0.35, adaface 0.4).", group="head")
    scale: float = _f(64.0, "Logit scale s.", group="head", low=0, low_open=True)
    adaface_h: float = _f(0.333, "AdaFace h (concentration of the norm-based margin scaler).",
                          group="head", low=0)
    adaface_t_alpha: float = _f(0.01, "AdaFace EMA rate of the feature-norm statistics.",
                                group="head", low=0, high=1)
    groups: int = _f(32, "GroupFace: number of groups K.", group="head", low=2)
    group_aggregation: str = _f("soft", "GroupFace: 'soft' (probability-weighted) or 'hard' "
                                        "(arg-max group).", group="head", choices=("soft", "hard"))
    group_margin: str = _f("arcface", "GroupFace: margin loss on the final embedding "
                                      "(arcface as in the paper, cosface or adaface).",
                           group="head", choices=("arcface", "cosface", "adaface"))
    epochs: int = _f(30, "Training epochs.", group="optimisation", low=1)
    batch_size: int = _f(256, "Global batch size (split evenly over torchrun processes).",
                         group="optimisation", low=2)
    lr: float = _f(0.1, "SGD learning rate.", group="optimisation", low=0, low_open=True)
    momentum: float = _f(0.9, "SGD momentum.", group="optimisation", low=0, high=1)
    weight_decay: float = _f(5e-4, "Weight decay (not on batch-norm parameters, as AdaFace).",
                             group="optimisation", low=0)
    lr_steps: str = _f("12,20,24", "Epochs after which the learning rate is multiplied by "
                                   "--lr_gamma (comma separated; empty: constant).",
                       group="optimisation")
    lr_gamma: float = _f(0.1, "Factor of each learning-rate step.",
                         group="optimisation", low=0, low_open=True)
    warmup_epochs: float = _f(0.0, "Linear warm-up from 0 over this many epochs (per step).",
                              group="optimisation", low=0)
    augment: str = _f("flip", "Comma-separated augmentations: flip, crop, color, lowres, "
                              "erase; 'none' for none.", group="optimisation")
    workers: int = _f(-1, "Image-loading worker processes per training process (0: in the "
                          "main process; -1: picked from the machine, the free cores beyond "
                          "the training step's, at most 4).", group="compute", low=-1)
    threads: int = _f(0, "torch CPU threads per training process (0: picked from the "
                         "machine, the free cores).", group="compute", low=0)
    amp: bool = _f(True, "Mixed precision (float16 autocast + grad scaling) on GPUs.",
                   group="compute")
    sync_bn: bool = _f(True, "Batch norm over the global batch under torchrun (results do "
                             "not depend on the number of processes).", group="compute")
    seed: int = _f(0, "Seed of the initialisation, the sample order and the augmentation.",
                   group="run", low=0, high=SEED_MAX)
    max_steps: int = _f(0, "Stop after this many optimiser steps in total (0: no limit); "
                           "for smoke tests.", group="run", low=0)
    keep_checkpoints: int = _f(2, "Epoch checkpoints kept on disk.", group="run", low=1)
    device: str = _f("auto", "auto (cuda if available), cpu or cuda.",
                     group="compute", choices=("auto", "cpu", "cuda"))
    progress: bool = _f(True, "Show a progress bar.", group="run")

    def flag_values(self) -> dict:
        return dataclasses.asdict(self)


# Flags that may change between a run and its resumption.
RUN_LENGTH_FLAGS = ("out_dir", "epochs", "workers", "threads", "progress", "max_steps",
                    "keep_checkpoints", "device", "data", "amp", "exclude")


def define_flags(flag_values, cls=TrainConfig) -> None:
    from hyperface_jax import cli

    cli.define_dataclass_flags(flag_values, cls)


def config_from_flags(flag_values, cls=TrainConfig):
    from hyperface_jax import cli

    return options.make_checked(cls, cli.dataclass_values(flag_values, cls)[0], frozenset())
