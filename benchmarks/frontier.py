"""The packing frontier in 512-D: our recipes from random starts against the algebraic codes
and the Levenshtein bound, and approximate neighbour lists against exact search and faiss.

    nice -n 15 python benchmarks/frontier.py pack --sizes=2048        # runs configs/codes_2k.flags
    nice -n 15 python benchmarks/frontier.py report --sizes=2048      # table + plot from the runs
    nice -n 15 python benchmarks/frontier.py codes --sizes 2048 10000 50000 100000
    nice -n 15 python benchmarks/frontier.py ivf --n=10000 --dim=512  # recall and speed
    nice -n 15 python benchmarks/frontier.py batches --runs A B         # runs side by side

`pack` runs the CLI (`python -m hyperface_jax.pack --flagfile=configs/codes_*.flags`) into
--out/n<size>/ (a finished run is not redone; an interrupted one resumes) and records the
machine's load average before and after (load.json). `report` reads each run's
history.jsonl and report.json, measures the algebraic code of the same size exactly with
the blockwise search (or, above --exact_max rows, from a sample of rows with
`hyperface_jax.measure.estimates`, labelled as such), and writes frontier.md (the table),
frontier.png (worst pair and mean nearest-neighbour cosine against seconds) and
frontier.json. Seconds are the run's stepping seconds (history.jsonl), wall-clock on a
shared machine: read them with the load beside them.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from hyperface_jax.baselines import codes  # noqa: E402
from hyperface_jax.measure import (  # noqa: E402
    bounds,
    estimates,
    metrics,  # noqa: E402
)
from hyperface_jax.research import ivf  # noqa: E402

CONFIGS = {2048: "configs/codes_2k.flags", 10_000: "configs/codes_10k.flags",
           50_000: "configs/codes_100k_random.flags", 100_000: "configs/codes_100k_random.flags"}
DIM = 512
FALL_BELOW = 0.1  # the worst pair must not rise after it first falls below this


def config_for(n: int) -> str:
    if n in CONFIGS:
        return CONFIGS[n]
    return CONFIGS[min(CONFIGS, key=lambda size: abs(size - n))]


def run_pack(a) -> None:
    for n in a.sizes:
        out = Path(a.out) / f"n{n}"
        out.mkdir(parents=True, exist_ok=True)
        if (out / "report.json").exists() and not a.extra:
            print(f"n={n}: {out}/report.json exists, not rerun", file=sys.stderr)
            continue
        argv = [sys.executable, "-m", "hyperface_jax.pack",
                f"--flagfile={REPO / config_for(n)}", f"--out_dir={out.resolve()}",
                f"--num_identities={n}", f"--dim={DIM}", "--progress=false", *a.extra]
        load_before = os.getloadavg()
        t = time.perf_counter()
        subprocess.run(argv, cwd=REPO, check=True)
        (out / "load.json").write_text(json.dumps({
            "command": " ".join(argv[1:]), "wall_seconds": round(time.perf_counter() - t, 1),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "cpu_count": os.cpu_count()}, indent=1))


def code_figures(n: int, exact_max: int, sample_size: int) -> dict:
    """Worst pair and mean NN cosine of the algebraic code of n points in 512-D."""
    x, name, proven = codes.algebraic_code(n, DIM)
    if n <= exact_max:
        f = metrics.to_python(metrics.packing_figures(jax.numpy.asarray(x)))
        return {"name": name, "proven_max_cos": proven, "max_cos": f["max_cos"],
                "mean_nn_cos": f["mean_nn_cos"], "estimated": False}
    e = estimates.estimate_figures(jax.numpy.asarray(x), jax.random.key(0),
                                   sample_size=sample_size)
    return {"name": name, "proven_max_cos": proven, "max_cos": e["max_cos_lower_bound"],
            "mean_nn_cos": e["mean_nn_cos"], "estimated": True, "estimate": e}


def list_codes(a) -> None:
    """The algebraic code of each size: proven worst pair, measured (exactly up to
    --exact_max rows, else from a sample), and the Levenshtein bound."""
    print("| n | code | proven worst pair | measured worst pair | mean NN cos | how | "
          "Levenshtein bound | seconds |\n" + "|---" * 8 + "|")
    for n in a.sizes:
        t = time.perf_counter()
        c = code_figures(n, a.exact_max, a.sample_size)
        how = "exact (blockwise)"
        if c["estimated"]:
            e = c["estimate"]
            lo, hi = e["mean_nn_cos_interval"]
            how = (f"sample of {e['sample_size']} rows: worst pair >= measured, mean NN in "
                   f"[{lo:.4f}, {hi:.4f}] ({e['confidence']:.0%})")
        print(f"| {n:,} | {c['name']} | {c['proven_max_cos']:.4f} | {c['max_cos']:.4f} | "
              f"{c['mean_nn_cos']:.4f} | {how} | {bounds.bound_max_cos(n, DIM):.4f} | "
              f"{time.perf_counter() - t:.0f} |", flush=True)
    print(f"\nload average at the end: {os.getloadavg()}")


def curve_checks(history: list[dict]) -> dict:
    """When the worst pair first fell below FALL_BELOW, and its largest rise after that."""
    seconds = [h["seconds"] for h in history]
    worst = [h["max_cos"] for h in history]
    below = next((i for i, w in enumerate(worst) if w < FALL_BELOW), None)
    rise = 0.0
    if below is not None:
        best = worst[below]
        for w in worst[below:]:
            rise = max(rise, w - best)
            best = min(best, w)
    return {"first_below_seconds": None if below is None else seconds[below],
            "largest_rise_after": rise}


def seconds_to_reach(history: list[dict], target: float):
    return next((h["seconds"] for h in history if h["max_cos"] <= target), None)


def report(a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    fig, axes = plt.subplots(1, len(a.sizes), figsize=(6 * len(a.sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], a.sizes):
        out = Path(a.out) / f"n{n}"
        r = json.loads((out / "report.json").read_text())
        history = r["history"]
        load = read_load(out)
        code = code_figures(n, a.exact_max, a.sample_size)
        bound = bounds.bound_max_cos(n, DIM)
        checks = curve_checks(history)
        final = final_figures(out, r)
        # A sampled history's worst pair is a lower bound: it cannot show the code beaten.
        to_code = (None if r["figures_are_estimates"]
                   else seconds_to_reach(history, code["max_cos"]))
        row = {"n": n, "config": config_for(n), "steps": r["steps"],
               "seconds": r["stepping_seconds_total"], "max_cos": final["max_cos"],
               "mean_nn_cos": final["mean_nn_cos"], "figures": final["how"], "code": code,
               "bound": bound, "seconds_to_code": to_code, **checks, "load": load}
        rows.append(row)
        s = [h["seconds"] for h in history]
        ax.plot(s, [h["max_cos"] for h in history], label="worst pair (ours)" + (
            ", sampled: a lower bound" if r["figures_are_estimates"] else ""))
        ax.plot(s, [h["mean_nn_cos"] for h in history], "--", label="mean NN cosine (ours)")
        ax.axhline(code["max_cos"], color="C3", lw=1,
                   label=f"{code['name'].capitalize()} code, worst pair {code['max_cos']:.4f}")
        ax.axhline(bound, color="k", ls=":", lw=1, label=f"Levenshtein bound {bound:.4f}")
        ax.set_ylim(0, min(0.25, 2.5 * max(code["max_cos"], row["max_cos"])))
        ax.set_xlabel("seconds (wall-clock stepping, shared 2-core CPU)")
        ax.set_ylabel("cosine (lower is better)")
        ax.set_title(f"n = {n:,} in {DIM}-D, alpha = 0, random start")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(a.out) / "frontier.png", dpi=110)
    lines = ["| n | recipe | steps | seconds | worst pair | mean NN cos | algebraic code "
             "(worst / mean NN) | Levenshtein bound | s to beat the code | rise after < 0.1 "
             "| load (1-min avg before / after) |", "|" + "---|" * 11]
    for row in rows:
        c = row["code"]
        load = row["load"]
        lines.append(
            f"| {row['n']:,} | `{row['config']}` | {row['steps']} | {row['seconds']:.0f} | "
            f"{row['max_cos']:.4f}{'' if row['figures'] == 'exact' else ' (est.)'} | "
            f"{row['mean_nn_cos']:.4f} | {c['name'].capitalize()} "
            f"{c['max_cos']:.4f} / {c['mean_nn_cos']:.4f}{' (est.)' if c['estimated'] else ''}"
            f" | {row['bound']:.4f} | "
            f"{_seconds(row['seconds_to_code'])} | "
            f"{row['largest_rise_after']:.4f} | "
            + load_cell(load) + " |")
    table = "\n".join(lines)
    (Path(a.out) / "frontier.md").write_text(table + "\n")
    (Path(a.out) / "frontier.json").write_text(json.dumps(rows, indent=1))
    print(table)


def read_load(run: Path) -> dict:
    """The load.json `pack` wrote beside a run ({} if the run was made otherwise)."""
    path = run / "load.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_cell(load: dict) -> str:
    """1-minute load average before / after, for a table cell."""
    if not load:
        return "-"
    return f"{load['loadavg_before'][0]:.1f} / {load['loadavg_after'][0]:.1f}"


def final_figures(run: Path, report: dict) -> dict:
    """A run's last figures: exact from `python -m hyperface_jax.figures` (figures.json
    in the run's folder) when present, else report.json's (estimated if it says so)."""
    exact = run / "figures.json"
    if exact.exists():
        f = json.loads(exact.read_text())["figures"]
        return {"max_cos": f["max_cos"], "mean_nn_cos": f["mean_nn_cos"], "how": "exact"}
    f = report["figures"]
    how = "estimated (worst pair: a lower bound)" if report["figures_are_estimates"] else "exact"
    return {"max_cos": f["max_cos"], "mean_nn_cos": f["mean_nn_cos"], "how": how}


def report_batches(a) -> None:
    """Runs of the same problem side by side (e.g. Algorithm 2's mini-batches against listed
    mini-batches at equal wall-clock): a table and worst pair / mean NN against seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    runs = [Path(r) for r in a.runs]
    reports = [json.loads((run / "report.json").read_text()) for run in runs]
    # Equal wall-clock: every run's history at the shortest run's last second.
    equal = min(r["stepping_seconds_total"] for r in reports)
    lines = ["| run | batch | lists (K, rebuilt every) | steps | seconds | rebuilds | worst pair "
             "| mean NN cos | final figures | history at " f"{equal:.0f} s (worst / mean NN) "
             "| load (before / after) |", "|" + "---|" * 11]
    rows = []
    for i, (run, r) in enumerate(zip(runs, reports)):
        label = f"{run.parent.name}/{run.name}"
        at = [h for h in r["history"] if h["seconds"] <= equal + 1.0][-1]
        c, history = r["flags"], r["history"]
        load = read_load(run)
        audit = r.get("neighbor_list_audit") or {}
        final = final_figures(run, r)
        lists = (f"{c['neighbor_list_size']}, {c['neighbor_refresh_every']} steps"
                 if c["neighbor_list_size"] else "none")
        rows.append({"run": str(run), "label": label, "config": c, "steps": r["steps"],
                     "at_equal_seconds": at,
                     "seconds": r["stepping_seconds_total"], "final": final,
                     "rebuilds": audit.get("rebuilds_audited"), "load": load})
        lines.append(
            f"| `{label}` | {c['batch_size'] or 'full'} | {lists} | {r['steps']} | "
            f"{r['stepping_seconds_total']:.0f} | {audit.get('rebuilds_audited', '-')} | "
            f"{final['max_cos']:.4f} | {final['mean_nn_cos']:.4f} | {final['how']} | "
            f"{at['max_cos']:.4f} / {at['mean_nn_cos']:.4f} (step {at['step']}) | "
            + load_cell(load) + " |")
        s = [h["seconds"] for h in history]
        ax.plot(s, [h["max_cos"] for h in history], color=f"C{i}", label=f"{label}: worst pair" + (
            " (sampled: lower bound)" if r["figures_are_estimates"] else ""))
        ax.plot(s, [h["mean_nn_cos"] for h in history], "--", color=f"C{i}",
                label=f"{label}: mean NN cosine")
    n = r["n"]
    bound = bounds.bound_max_cos(n, DIM)
    ax.axhline(0.0625, color="C3", lw=1, label="Kerdock code, worst pair 0.0625")
    ax.axhline(bound, color="k", ls=":", lw=1, label=f"Levenshtein bound {bound:.4f}")
    ax.set_xlabel("seconds (wall-clock stepping, shared 2-core CPU)")
    ax.set_ylabel("cosine (lower is better)")
    ax.set_title(f"n = {n:,} in {DIM}-D: mini-batches with and without lists")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "batches.png", dpi=110)
    table = "\n".join(lines)
    (out / "batches.md").write_text(table + "\n")
    (out / "batches.json").write_text(json.dumps(rows, indent=1))
    print(table)


def _seconds(s) -> str:
    return "-" if s is None else f"{s:.0f}"


def _timed(f, *args, **kwargs):
    """f's result and the seconds of its second call (the first compiles / warms up)."""
    jax.block_until_ready(f(*args, **kwargs))
    t = time.perf_counter()
    out = jax.block_until_ready(f(*args, **kwargs))
    return out, time.perf_counter() - t


def bench_ivf(a) -> None:
    """Recall of each row's top-K and seconds: exact blockwise top-K, our inverted lists,
    faiss IndexIVFFlat with the same cells and probes (and faiss's exact IndexFlatIP)."""
    import faiss  # dev extra, benchmarks only

    from hyperface_jax.engine import sphere

    faiss.omp_set_num_threads(a.threads)
    key = jax.random.key(a.seed)
    data = {"uniform": sphere.random_unit_vectors(key, a.n, a.dim)}
    centres = sphere.random_unit_vectors(jax.random.key(1), max(1, a.n // 50), a.dim)
    label = jax.random.randint(jax.random.key(2), (a.n,), 0, centres.shape[0])
    data["clustered"] = sphere.normalize_rows(
        centres[label] + jax.random.normal(jax.random.key(3), (a.n, a.dim)) / np.sqrt(a.dim))
    if a.packing:
        data["packing"] = jax.numpy.asarray(np.load(a.packing).astype(np.float32))
    print("| data | n | d | K | method | cells | nprobe | recall | seconds |\n" + "|---" * 9 + "|")
    for name, x in data.items():
        n = x.shape[0]
        cells = a.num_cells or ivf.default_num_cells(n)
        truth, t_exact = _timed(_exact_top_k, x, a.k)
        print(f"| {name} | {n} | {a.dim} | {a.k} | exact (JAX, blockwise) | - | - | 1.000 | "
              f"{t_exact:.2f} |", flush=True)
        xn = np.ascontiguousarray(np.asarray(x, np.float32))
        flat = faiss.IndexFlatIP(a.dim)
        flat.add(xn)
        (_, fi), t_flat = _timed(flat.search, xn, a.k + 1)
        print(f"| {name} | {n} | {a.dim} | {a.k} | faiss IndexFlatIP | - | - | "
              f"{ivf.recall(_drop_self(fi, a.k), truth):.3f} | {t_flat:.2f} |", flush=True)
        quantizer = faiss.IndexFlatIP(a.dim)
        index = faiss.IndexIVFFlat(quantizer, a.dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(xn)
        index.add(xn)
        for nprobe in a.nprobe:
            index.nprobe = nprobe
            (_, fi), t_faiss = _timed(index.search, xn, a.k + 1)
            (_, ours, _), t_ours = _timed(ivf.approximate_top_k, x, a.k, key=jax.random.key(0),
                                          num_cells=cells, nprobe=nprobe)
            print(f"| {name} | {n} | {a.dim} | {a.k} | ours (k-means + lists + search) | "
                  f"{cells} | {nprobe} | {ivf.recall(ours, truth):.3f} | {t_ours:.2f} |")
            print(f"| {name} | {n} | {a.dim} | {a.k} | faiss IndexIVFFlat (search only) | "
                  f"{cells} | {nprobe} | {ivf.recall(_drop_self(fi, a.k), truth):.3f} | "
                  f"{t_faiss:.2f} |", flush=True)
    print(f"\nload average at the end: {os.getloadavg()}")


def _exact_top_k(x, k):
    from hyperface_jax.engine.kernels import top_k

    return jax.jit(top_k, static_argnames=("k", "exclude_self"))(
        x, x, k=k, exclude_self=True)[1]


def _drop_self(indices: np.ndarray, k: int) -> np.ndarray:
    """faiss returns each row itself among its neighbours: drop it, keep k."""
    rows = np.arange(indices.shape[0])[:, None]
    keep = indices != rows
    out = np.stack([r[m][:k] if m.sum() >= k else np.pad(r[m], (0, k - m.sum()),
                                                          constant_values=-1)
                    for r, m in zip(indices, keep)])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("pack", "report", "codes"):
        q = sub.add_parser(name)
        q.add_argument("--sizes", type=int, nargs="+", default=[2048])
        q.add_argument("--out", default="runs/frontier")
        if name == "pack":
            q.add_argument("extra", nargs="*", help="more pack flags, after --")
        else:
            q.add_argument("--exact_max", type=int, default=20_000,
                           help="largest code measured exactly; larger ones are estimated")
            q.add_argument("--sample_size", type=int, default=2000)
    q = sub.add_parser("batches")
    q.add_argument("--runs", nargs="+", required=True, help="pack run folders")
    q.add_argument("--out", default="runs/frontier_batches")
    q = sub.add_parser("ivf")
    q.add_argument("--n", type=int, default=20_000)
    q.add_argument("--dim", type=int, default=512)
    q.add_argument("--k", type=int, default=16)
    q.add_argument("--num_cells", type=int, default=0)
    q.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    q.add_argument("--packing", default="", help="also a packing's embeddings.npy")
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    {"pack": run_pack, "report": report, "codes": list_codes, "ivf": bench_ivf,
     "batches": report_batches}[a.command](a)


if __name__ == "__main__":
    main()
