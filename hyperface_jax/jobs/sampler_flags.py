"""The identity samplers' flags (`sample` and `compare --samplers`), JAX-free so that
`--help` stays fast: SampleConfig's fields beyond PackConfig's (jobs/config.py), as absl
flags for a CLI still on a FlagValues (compare)."""

from hyperface_jax.jobs.config import PackConfig, SampleConfig
from hyperface_jax.options import flag_fields

SAMPLER_FLAGS = tuple(f.name for f in flag_fields(SampleConfig)
                      if f.name not in {g.name for g in flag_fields(PackConfig)})


def define_sampler_flags(fv, names=None) -> None:
    """Define the sampler flags (all, or `names`) on an absl FlagValues."""
    from hyperface_jax import cli

    cli.define_dataclass_flags(fv, SampleConfig, names=names or SAMPLER_FLAGS)


def sampler_options(fv) -> dict:
    return {name: fv[name].value for name in SAMPLER_FLAGS if name in fv and name != "method"}
