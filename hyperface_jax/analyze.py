"""`python -m hyperface_jax.analyze --embeddings=E.npy --labels=L.npy --out_dir=...`.

Dataset quality of a generated (or any labelled) set of face features, before spending
GPU-days training on it: intra-class noise, inter-class noise, genuine and impostor
cosine distributions with EER and d', identity consistency, and with
`--reference=R.npy [--reference_labels=RL.npy]` identity leakage and the synthetic images
most similar to real ones (`--clean_top_k` writes the list to drop). See `quality.py` for
the definitions and the blockwise, memory-mapped computation (3.2M x 512 fits).

Writes analysis.json, analysis.md, analysis.png (genuine and impostor histograms with the
EER point), identities.csv (one line per identity), intra_class_outliers.txt (file rows),
with --clean_top_k clean_drop.txt (synthetic image rows to drop, most similar first), and
with --clean_top_k or --drop, drop_rows.txt (the rows the chosen rules drop) and, given
--files (the row -> file listing `bridges.embed` writes beside the embeddings), drop.txt:
the image files to drop, one path per line, as the listing names them.
The job: `hyperface_jax.jobs.analysis`.
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure.
"""

import sys

from hyperface_jax import cli
from hyperface_jax.jobs.config import AnalyzeConfig


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(argv, AnalyzeConfig, cli.job_in("hyperface_jax.jobs.analysis", "analyze"))


if __name__ == "__main__":
    sys.exit(main())
