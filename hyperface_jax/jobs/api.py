"""The notebook API: `pack_references`, the packing job on arrays in memory.

    from hyperface_jax import pack_references
    r = pack_references(num_identities=24, dim=4, restarts=32,
                        flagfile="configs/spherical_codes.flags")
    r.embeddings        # (24, 4) float32, unit rows
    r.figures["max_cos"]

Every option of `python -m hyperface_jax.pack` is a keyword argument of the same name
(`--help` lists them), parsed and validated by the same flag definitions, so a bad value
raises `InputError` with the line the CLI would print after ``error:``. A `flagfile` is
read as the CLI reads it; keyword arguments override it. Nothing is written unless
`out_dir` is given (a flagfile's --out_dir is ignored: in a notebook, files are opt-in);
with `out_dir`, the run checkpoints there and resumes like the CLI.
"""

import dataclasses
import os
from typing import Any

import numpy as np

from hyperface_jax import cli, pack
from hyperface_jax.io.files import InputError
from hyperface_jax.jobs import packing
from hyperface_jax.jobs.config import config_from_flags


@dataclasses.dataclass(frozen=True)
class PackResult:
    embeddings: np.ndarray  # (n, d) float32, unit rows
    figures: dict[str, float]  # as report.json's "figures"
    history: list[dict]  # as report.json's "history"
    report: dict  # the whole report.json


def _flag_argument(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}={'true' if value else 'false'}"
    if isinstance(value, float):
        return f"--{name}={value!r}"
    return f"--{name}={value}"


def pack_config(flagfile: str | None = None, **options):
    """The `PackConfig` the CLI would build from `--flagfile=flagfile` and `--name=value`
    for each option; raises `InputError` with the CLI's message on bad input."""
    fv = pack.make_flag_values()
    argv = ["hyperface_jax"] + ([f"--flagfile={flagfile}"] if flagfile else [])
    unknown = [k for k in options if k not in fv]
    if unknown:
        raise InputError(f"Unknown command line flag '{unknown[0]}'")
    argv += [_flag_argument(k, v) for k, v in options.items() if v is not None]
    cli.parse_flags(fv, argv)  # a flagfile that is missing or not UTF-8: one line too
    return config_from_flags(fv)


def pack_references(num_identities: int | None = None, dim: int | None = None,
                    gallery=None, init=None, *, flagfile: str | None = None,
                    out_dir: str | None = None, log=None, **options) -> PackResult:
    """Pack `num_identities` references in `dim` dimensions and return them in memory.

    `gallery` and `init` are arrays (n x d, rows normalised as the CLI does) or .npy paths;
    `init` may also be "random" or "gallery". Every other option of the CLI is a keyword
    argument (`learning_rate=0.01`, `objective="logsumexp"`, `devices="all"`, ...).
    `log` receives the progress lines (default: stderr, as the CLI).
    """
    arrays = {}
    for name, value in (("gallery", gallery), ("init", init)):
        if isinstance(value, str) or value is None:
            options[name] = value
        else:
            arrays[name] = np.asarray(value)
    c = pack_config(flagfile, num_identities=num_identities, dim=dim, **options)
    # out_dir (a str or a path) is claimed by the job itself: checked and locked like the
    # CLI's, so a notebook run and a CLI run never write one folder at once.
    c = dataclasses.replace(c, out_dir=os.fspath(out_dir) if out_dir else "")
    # report.json's flags say where the inputs came from.
    c = dataclasses.replace(c, **{name: "<array>" for name in arrays})
    report, embeddings = packing.run_job(c, log=log, **arrays)
    return PackResult(embeddings=embeddings, figures=report["figures"],
                      history=report["history"], report=report)
