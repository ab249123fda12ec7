"""Performance profile (Dolan and More 2002) over finished tuned comparisons.

`python -m hyperface_jax.compare --suite=...` draws the profile of the suite it runs; this
script draws it over sweeps run separately (one `compare --tune` folder per workload):

    python benchmarks/optimizer_profile.py runs/tuned_a runs/tuned_b ... \\
        --fraction=0.8 --cost=steps --out=runs/profile

writes suite.md, suite.json and profile.png into --out.
"""

import argparse
import json
from pathlib import Path

from hyperface_jax.jobs.compare_config import PROFILE_COSTS
from hyperface_jax.research import suite


def main():
    p = argparse.ArgumentParser()
    p.add_argument("sweeps", nargs="+", help="folders of compare --tune runs")
    p.add_argument("--fraction", type=float, default=0.8,
                   help="which of the sweeps' targets (its fraction) to time")
    p.add_argument("--cost", choices=PROFILE_COSTS, default="steps")
    p.add_argument("--out", default="runs/profile")
    args = p.parse_args()
    results = {Path(d).name: json.loads((Path(d) / "compare.json").read_text())
               for d in args.sweeps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suite.profile(out, results, args.fraction, args.cost)
    print((out / "suite.md").read_text())


if __name__ == "__main__":
    main()
