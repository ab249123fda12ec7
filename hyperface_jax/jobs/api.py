"""The notebook API: `pack_references`, the packing job on arrays in memory.

    from hyperface_jax import pack_references
    r = pack_references(num_identities=24, dim=4, restarts=32, config="spherical_codes")
    r.embeddings        # (24, 4) float32, unit rows
    r.figures["max_cos"]

Every option of `python -m hyperface_jax.pack` is a keyword argument of the same name
(`--help` lists them), checked by the same table (`PackConfig`'s field metadata), so a bad
value or a mistyped name raises `InputError` with the line the CLI would print after
``error:`` ("Did you mean" included). `config` (or its alias `flagfile`) is a flagfile
path or a shipped config's name, read as the CLI reads it; keyword arguments override
it. Nothing is written unless `out_dir` is given (a flagfile's --out_dir is ignored: in a
notebook, files are opt-in); with `out_dir`, the run takes the folder's lock, checkpoints
there and resumes like the CLI.
"""

import dataclasses
import os

import numpy as np

from hyperface_jax import options as opts
from hyperface_jax.io.files import InputError
from hyperface_jax.jobs import packing
from hyperface_jax.jobs.config import PackConfig


@dataclasses.dataclass(frozen=True)
class PackResult:
    embeddings: np.ndarray  # (n, d) float32, unit rows
    figures: dict[str, float]  # as report.json's "figures"
    history: list[dict]  # as report.json's "history"
    report: dict  # the whole report.json


def pack_config(config: str | None = None, *, flagfile: str | None = None,
                **options) -> PackConfig:
    """The `PackConfig` the CLI would build from `--flagfile=config` (`flagfile` is the same
    argument) and `--name=value` for each option, built from the values themselves; raises
    `InputError` with the CLI's message on bad input. `None` is a value only for the
    options that may be unset."""
    if config and flagfile:
        raise InputError("give config= or flagfile= (the same thing), not both")
    return opts.config_from_options(PackConfig, options, flagfile=config or flagfile)


def _array_or_path(name: str, value, options: dict, arrays: dict) -> None:
    if value is None:
        return
    if isinstance(value, (str, os.PathLike)):
        options[name] = os.fspath(value)
    else:
        arrays[name] = np.asarray(value)
        if arrays[name].ndim != 2:
            raise InputError(f"{name} must be an (n, d) array or a .npy path, got "
                             f"{type(value).__name__} of shape {arrays[name].shape}")


def pack_references(num_identities: int | None = None, dim: int | None = None,
                    gallery=None, init=None, *, config: str | None = None,
                    flagfile: str | None = None, out_dir: str | None = None, log=None,
                    **options) -> PackResult:
    """Pack `num_identities` references in `dim` dimensions and return them in memory.

    `gallery` and `init` are arrays (n x d, rows normalised as the CLI does) or .npy paths
    (str or pathlib.Path); `init` may also be "random", "gallery" or "code". `num_identities` and
    `dim` left None are not given (the config's, or the init/gallery file's). Every other
    option of the CLI is a keyword argument (`learning_rate=0.01`, `objective="logsumexp"`,
    `devices="all"`, ...). `log` receives the progress lines (default: stderr, as the CLI).
    """
    arrays = {}
    for name, value in (("num_identities", num_identities), ("dim", dim)):
        if value is not None:
            options[name] = value
    _array_or_path("gallery", gallery, options, arrays)
    _array_or_path("init", init, options, arrays)
    c = pack_config(config, flagfile=flagfile, **options)
    # out_dir (a str or a path) is claimed by the job itself: checked and locked like the
    # CLI's, so a notebook run and a CLI run never write one folder at once.
    c = dataclasses.replace(c, out_dir=os.fspath(out_dir) if out_dir else "")
    # report.json's flags say where the inputs came from.
    c = dataclasses.replace(c, **{name: "<array>" for name in arrays})
    report, embeddings = packing.run_job(c, log=log, **arrays)
    return PackResult(embeddings=embeddings, figures=report["figures"],
                      history=report["history"], report=report)
