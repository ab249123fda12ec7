"""`python -m hyperface_jax.pack --flagfile=configs/quickstart.flags`: pack identities.

A thin main over `hyperface_jax.jobs.packing` (the job: plan, loop, report, outputs).
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure (one
line, e.g. a run that diverged), 130 interrupted (after saving a checkpoint).
"""

import sys

from absl import flags

from hyperface_jax import cli
from hyperface_jax.jobs.config import HELP_GROUPS, config_from_flags, define_flags


def make_flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    define_flags(fv)
    return fv


def run(fv: flags.FlagValues) -> dict:
    from hyperface_jax.jobs import packing  # JAX and friends: not needed to print --help

    return packing.run(config_from_flags(fv))


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(argv, make_flag_values(), run, help_groups=HELP_GROUPS)


if __name__ == "__main__":
    sys.exit(main())
