"""Performance profile of tuned optimizers across workloads (Dolan and More 2002).

Reads the compare.json of several `compare --tune_trials` sweeps (one per workload: n, d,
alpha ...), takes each tuned optimizer's median steps (or stepping seconds) to its sweep's
target, and plots, per optimizer, the share of workloads it solves within a factor tau of
the fastest optimizer on that workload. An optimizer that never reaches a workload's
target counts as unsolved there.

    python benchmarks/optimizer_profile.py runs/tuned_a runs/tuned_b ... \\
        --cost=seconds --out=profile.png
"""

import argparse
import json
from pathlib import Path

import numpy as np

from hyperface_jax.io.files import save_figure
from hyperface_jax.research import tuning


def costs_of(directories: list[str], cost: str) -> dict[str, dict[str, float | None]]:
    key = "median_steps" if cost == "steps" else "median_seconds"
    costs = {}
    for directory in directories:
        result = json.loads((Path(directory) / "compare.json").read_text())
        name = f"{Path(directory).name} (n={result['n']})"
        costs[name] = {opt: entry.get("time_to_target", {}).get(key)
                       for opt, entry in result["tuned"].items()}
    return costs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("sweeps", nargs="+", help="folders of compare --tune_trials runs")
    p.add_argument("--cost", choices=("steps", "seconds"), default="steps")
    p.add_argument("--out", default="profile.png")
    args = p.parse_args()
    costs = costs_of(args.sweeps, args.cost)
    taus = np.logspace(0, 1.5, 200)
    profile = tuning.performance_profile(costs, taus)
    print(f"| workload | {' | '.join(sorted(profile))} |")
    print("|---|" + "---|" * len(profile))
    for workload, row in costs.items():
        cells = ["-" if row.get(o) is None else f"{row[o]:.3g}" for o in sorted(profile)]
        print(f"| {workload} | {' | '.join(cells)} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for solver_name, shares in profile.items():
        ax.step(taus, shares, where="post", label=solver_name)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"tau: within this factor of the fastest ({args.cost} to target)")
    ax.set_ylabel("share of workloads")
    ax.set_title(f"performance profile over {len(costs)} workloads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(Path(args.out), fig)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
