"""Known optimal spherical codes from random starts with configs/spherical_codes.flags.

    python benchmarks/known_optima.py            # the README table
    python benchmarks/known_optima.py --hard     # also 1,024 points in 512-D (minutes)

Each target runs `python -m hyperface_jax.pack` in-process (the same code path as the
CLI) and reports the exact worst-pair cosine reached, the optimum, the gap and seconds.
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hyperface_jax import pack  # noqa: E402

TARGETS = [  # name, n, d, restarts, optimum
    ("icosahedron", 12, 3, 1, 1 / math.sqrt(5)),
    ("24-cell", 24, 4, 32, 0.5),
    ("simplex", 6, 5, 1, -1 / 5),
    ("simplex", 17, 16, 1, -1 / 16),
    ("cross-polytope", 128, 64, 1, 0.0),
]
HARD = [("cross-polytope", 1024, 512, 1, 0.0)]


def worst_pair(path):
    x = np.load(path).astype(np.float64)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return float(s.max())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hard", action="store_true")
    p.add_argument("--hard_steps", type=int, default=4000)
    a = p.parse_args()
    rows = ["| target | n | d | restarts | optimum | reached | gap | seconds |",
            "|---|---|---|---|---|---|---|---|"]
    for name, n, d, restarts, optimum in TARGETS + (HARD if a.hard else []):
        with tempfile.TemporaryDirectory() as out:
            argv = ["pack", "--flagfile=configs/spherical_codes.flags", f"--out_dir={out}",
                    f"--num_identities={n}", f"--dim={d}", f"--restarts={restarts}",
                    "--progress=false"]
            if n > 512:
                argv.append(f"--steps={a.hard_steps}")
            t = time.perf_counter()
            code = pack.main(argv)
            seconds = time.perf_counter() - t
            if code:
                raise SystemExit(f"pack failed with exit code {code} on {name} {n}/{d}")
            reached = worst_pair(Path(out) / "embeddings.npy")
        rows.append(f"| {name} | {n} | {d} | {restarts} | {optimum:.6f} | {reached:.6f} | "
                    f"{reached - optimum:.1e} | {seconds:.1f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"Known optima from random starts ({time.strftime('%Y-%m-%d')}):\n")
    print("\n".join(rows))


if __name__ == "__main__":
    import os

    os.chdir(REPO)
    main()
