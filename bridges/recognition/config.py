"""The training run's configuration: one dataclass, from which the absl flags are made
(the pattern of hyperface_jax.jobs.config), so CLI, Python API and the stored run cannot drift."""

import dataclasses
from dataclasses import field


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str = _f("", "Training set: a folder with one sub-folder of images per identity "
                       "(bridges.generate writes dataset/<%06d>/<%03d>.png).")
    exclude: str = _f("", "A text file of images to leave out of --data, one path per line "
                          "(relative to --data, or absolute), e.g. the drop.txt of "
                          "hyperface_jax.analyze; identities left empty are dropped.")
    out_dir: str = _f("", "Folder for checkpoints/, model.pt, history.csv, steps.csv, "
                          "curves.png, report.json. Re-running on it resumes.")
    arch: str = _f("ir50", "Backbone: ir18, ir34, ir50, ir100 or se_ir50.")
    width: int = _f(64, "Channels of the first stage (64 in the published iResNets).")
    input_size: int = _f(112, "Square input side in pixels (images are resized to it).")
    embedding_size: int = _f(512, "Embedding dimension.")
    dropout: float = _f(0.0, "Dropout before the embedding FC (arcface_torch: 0).")
    head: str = _f("adaface", "Loss head: adaface, arcface, cosface or groupface.")
    margin: float = _f(-1.0, "Margin m; negative: the head's published default "
                             "(arcface 0.5, cosface 0.35, adaface 0.4).")
    scale: float = _f(64.0, "Logit scale s.")
    adaface_h: float = _f(0.333, "AdaFace h (concentration of the norm-based margin scaler).")
    adaface_t_alpha: float = _f(0.01, "AdaFace EMA rate of the feature-norm statistics.")
    groups: int = _f(32, "GroupFace: number of groups K.")
    group_aggregation: str = _f("soft", "GroupFace: 'soft' (probability-weighted) or 'hard' "
                                        "(arg-max group).")
    group_margin: str = _f("arcface", "GroupFace: margin loss on the final embedding "
                                      "(arcface as in the paper, cosface or adaface).")
    epochs: int = _f(30, "Training epochs.")
    batch_size: int = _f(256, "Global batch size (split evenly over torchrun processes).")
    lr: float = _f(0.1, "SGD learning rate.")
    momentum: float = _f(0.9, "SGD momentum.")
    weight_decay: float = _f(5e-4, "Weight decay (not on batch-norm parameters, as AdaFace).")
    lr_steps: str = _f("12,20,24", "Epochs after which the learning rate is multiplied by "
                                   "--lr_gamma (comma separated; empty: constant).")
    lr_gamma: float = _f(0.1, "Factor of each learning-rate step.")
    warmup_epochs: float = _f(0.0, "Linear warm-up from 0 over this many epochs (per step).")
    augment: str = _f("flip", "Comma-separated augmentations: flip, crop, color, lowres, "
                              "erase; 'none' for none.")
    workers: int = _f(-1, "Image-loading worker processes per training process (0: in the "
                          "main process; -1: picked from the machine, the free cores beyond "
                          "the training step's, at most 4).")
    threads: int = _f(0, "torch CPU threads per training process (0: picked from the "
                         "machine, the free cores).")
    amp: bool = _f(True, "Mixed precision (float16 autocast + grad scaling) on GPUs.")
    sync_bn: bool = _f(True, "Batch norm over the global batch under torchrun (results do "
                             "not depend on the number of processes).")
    seed: int = _f(0, "Seed of the initialisation, the sample order and the augmentation.")
    max_steps: int = _f(0, "Stop after this many optimiser steps in total (0: no limit); "
                           "for smoke tests.")
    keep_checkpoints: int = _f(2, "Epoch checkpoints kept on disk.")
    device: str = _f("auto", "auto (cuda if available), cpu or cuda.")
    progress: bool = _f(True, "Show a progress bar.")

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

    return cls(**cli.dataclass_values(flag_values, cls)[0])
