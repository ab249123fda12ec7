"""`python -m hyperface_jax.sample --method=random_margin --num_identities=10000 ...`.

Places `--num_identities` synthetic identities with a baseline sampler (random_margin,
diffr, perturbed_gallery) or, for `hyperface`, the packing engine with the same flags as
`pack`, and writes `embeddings.npy` and `report.json` into --out_dir (the job:
`hyperface_jax.jobs.sampling`).
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure.
"""

import sys

from hyperface_jax import cli
from hyperface_jax.jobs.config import SampleConfig


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(argv, SampleConfig, cli.job_in("hyperface_jax.jobs.sampling", "run_sample"))


if __name__ == "__main__":
    sys.exit(main())
