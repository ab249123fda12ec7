"""`python -m hyperface_jax.pack --flagfile=quickstart`: pack identities.

A thin main over `hyperface_jax.jobs.packing` (the job: plan, loop, report, outputs).
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure (one
line, e.g. a run that diverged), 130 interrupted (after saving a checkpoint).
"""

import sys

from hyperface_jax import cli
from hyperface_jax.jobs.config import PackConfig


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(argv, PackConfig, cli.job_in("hyperface_jax.jobs.packing", "run"))


if __name__ == "__main__":
    sys.exit(main())
