"""`python -m hyperface_jax.figures --embeddings=X.npy --out=figures.json`: exact figures.

The exact packing figures of a file of references (worst pair, mean and quantiles of the
nearest-neighbour cosine, gallery cosine, loss terms), from a full blockwise search of every
row, sharded over every device it is given (`--devices`, and `--distributed` or
`--coordinator_address` for several hosts). For a packing too large for exact figures
inside the run (`pack --figure_sample`), this is the command that gives them on
accelerators: 1M x 512 is ~1e15 flops. The job: `hyperface_jax.jobs.exact_figures`.

Exit codes: 0 success, 2 bad input (one line), 1 failure.
"""

import sys

from hyperface_jax import cli
from hyperface_jax.jobs.config import FiguresConfig


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(argv, FiguresConfig, cli.job_in("hyperface_jax.jobs.exact_figures", "run"))


if __name__ == "__main__":
    sys.exit(main())
