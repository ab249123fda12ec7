"""The optimizer-comparison suite: named workloads, one tuned comparison each, and the
Dolan-More performance profile over them (docs/optimizers.md, "The workload suite").

A workload is a set of PackConfig values; `--suite_scale` multiplies its identities (and
gallery rows), so the same suite that runs within the hour on a 2-core CPU at scale 1 (33
minutes measured, docs/optimizers.md) grows by one flag on an accelerator. Flags given
on the command line (e.g. --steps) override every workload's own.
"""

import dataclasses
import math
from pathlib import Path

import numpy as np

from hyperface_jax.io.files import InputError, atomic_write, save_embeddings, save_json
from hyperface_jax.jobs.config import PackConfig
from hyperface_jax.research import compare_tables, tuning


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    about: str
    values: dict  # PackConfig fields
    gallery_rows: int = 0  # a seeded synthetic gallery of this many rows (0: none)


COMMON = {"alpha": 0.0, "init": "random", "schedule": "cosine", "steps": 100,
          "log_every": 5, "checkpoint_every": 100, "objective": "max", "progress": False}

WORKLOADS = (
    Workload("pack_300x16", "pure packing, small n and d", {"num_identities": 300, "dim": 16}),
    Workload("pack_1000x64", "pure packing", {"num_identities": 1000, "dim": 64}),
    Workload("paper_512d", "the paper's objective: a gallery (synthetic, 2 rows per "
             "identity) and alpha 0.5, in 512-D", {"num_identities": 250, "dim": 512,
                                                    "alpha": 0.5}, gallery_rows=500),
    Workload("minibatch_1000x64", "Algorithm 2: mini-batches of 128 rows (sparse update)",
             {"num_identities": 1000, "dim": 64, "batch_size": 128, "steps": 200}),
    Workload("neighbors_10k", "neighbour lists (16 per row, exact refresh every 20 steps) "
             "at 10,000 identities", {"num_identities": 10_000, "dim": 32,
                                      "neighbor_list_size": 16, "neighbor_refresh_every": 20,
                                      "log_every": 20}),
)
SUITES = {"minimal": tuple(w.name for w in WORKLOADS)}


def workloads_of(names: list[str]) -> list[Workload]:
    """The named workloads (a suite's name stands for its workloads)."""
    by_name = {w.name: w for w in WORKLOADS}
    out = []
    for name in names:
        for part in SUITES.get(name, (name,)):
            if part not in by_name:
                raise InputError(f"unknown workload {part!r} in --suite; choose from "
                                 f"{', '.join(list(SUITES) + list(by_name))}")
            out.append(by_name[part])
    return out


def config_of(base: PackConfig, w: Workload, scale: float, out: Path) -> PackConfig:
    """The workload's configuration: its values scaled, the command's explicit flags on
    top, its own folder (and gallery file) under `out`."""
    values = dict(COMMON, **w.values)
    n = max(2, round(values["num_identities"] * scale))
    values["num_identities"] = n
    if "batch_size" in values:
        values["batch_size"] = min(values["batch_size"], n)
    if w.gallery_rows:
        values["gallery"] = str(out / "galleries" / f"{w.name}.npy")
    values = {k: v for k, v in values.items() if k not in base.explicit}
    return dataclasses.replace(base, **values, out_dir=str(out / w.name))


def write_gallery(c: PackConfig, w: Workload, scale: float) -> None:
    """A synthetic gallery for `w`: identities' directions with two noisy samples each
    (seeded by --seed), so the manifold term has clusters to follow."""
    if not w.gallery_rows or "gallery" in c.explicit:
        return
    rows = max(2, round(w.gallery_rows * scale))
    rng = np.random.default_rng(c.seed)
    centres = rng.standard_normal(((rows + 1) // 2, c.dim))
    x = np.repeat(centres, 2, axis=0)[:rows] + 0.5 * rng.standard_normal((rows, c.dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = Path(c.gallery)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_embeddings(path, x.astype(np.float32))


def costs(results: dict[str, dict], fraction: float, cost: str) -> dict:
    """Per workload and optimizer: the median steps (or seconds) to the workload's target
    at `fraction`; None when half the fresh seeds or more never reached it, or when the
    row is a lower bound (an optimum outside the searched range is not ranked)."""
    key = "median_steps" if cost == "steps" else "median_seconds"
    out = {}
    for name, result in results.items():
        row = {}
        for opt, entry in result["tuned"].items():
            hits = {h["label"]: h for h in entry.get("time_to_target", [])}
            hit = hits.get(f"{100 * fraction:g} %", {})
            row[opt] = None if entry.get("lower_bound") else hit.get(key)
        out[name] = row
    return out


def profile(out: Path, results: dict[str, dict], fraction: float, cost: str) -> dict:
    """suite.json, suite.md and profile.png over the workloads' results."""
    table = costs(results, fraction, cost)
    taus = np.logspace(0, 1.5, 200)
    shares = tuning.performance_profile(table, taus)
    compare_tables.plot_profile(out / "profile.png", shares, taus, cost)
    names = sorted(shares)
    lines = [f"# Suite: {len(results)} workloads", "",
             f"Median {cost} to each workload's {100 * fraction:g} % target (fixed before "
             "the sweep from the workload: see each workload's compare.md); '-': half the "
             "fresh seeds or more never reached it, or a lower-bound row; 'n/a': not run "
             "there (counted as not reaching it in the profile).", "",
             "| workload | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for workload, row in table.items():
        cells = ["n/a" if o not in row else "-" if row[o] is None or not math.isfinite(row[o])
                 else f"{row[o]:.4g}" for o in names]
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    lines += ["", "Verdicts on the final worst pair, per workload (paired over the fresh "
              "seeds):", ""]
    for workload, result in results.items():
        lines += [f"{workload}:", "```", compare_tables.verdict_lines(result), "```"]
    summary = {"costs": table, "cost": cost, "fraction": fraction,
               "profile": {"taus": taus.tolist(), "shares": shares}}
    save_json(out / "suite.json", summary)
    text = "\n".join(lines) + "\n"
    atomic_write(out / "suite.md", lambda f: f.write(text.encode()))
    return summary
