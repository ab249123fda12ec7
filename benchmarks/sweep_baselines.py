"""Sensitivity of the three baseline samplers to the values their papers leave open.

    python benchmarks/synthetic_gallery.py --identities=500 --per_identity=8 --dim=128 \\
        --out_dir=runs/gallery128
    python benchmarks/sweep_baselines.py --gallery=runs/gallery128/gallery.npy \\
        --gallery_labels=runs/gallery128/gallery_labels.npy --num_identities=2000 \\
        --out=runs/sweep_baselines.json

Runs each sampler of `hyperface_jax.baselines.samplers` over a grid of its open parameters at one
modest size (default 2,000 identities against the gallery's dimension; a few minutes on
2 loaded cores) and prints one markdown table per sampler:

- random_margin: --min_distance (appendix E's 0.3 and larger margins; 0.7 is the rebuttal's
  reading, cos <= 0.3);
- diffr: --nms_threshold from 0.6 to 0.9;
- perturbed_gallery (ours): --perturbation x --max_similarity, and two source bands.

Per setting: whether N identities were reached within --max_draws candidates, the
acceptance rate, the worst-pair and mean nearest-neighbour cosines, the mean cosine to the
nearest gallery row (closeness to faces) and the share of identities that *leak*: cosine
above 0.7 (the same-person rule of `analyze`) to a gallery identity's unit mean.
**Best setting** (marked): among the settings that reach N and leak none, the lowest
worst-pair cosine (ties: the lower mean nearest-neighbour cosine).
With --random_margin_512, also the random-with-margin acceptance at n = 10,000, d = 512.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hyperface_jax.baselines import samplers  # noqa: E402
from hyperface_jax.io.files import InputError, load_embeddings, load_labels  # noqa: E402

SAME_PERSON = 0.7


def nearest_cosines(x: np.ndarray, y: np.ndarray | None = None, block: int = 2048) -> np.ndarray:
    """Each row's largest cosine to another row of x (y None) or to a row of y."""
    other = x if y is None else y
    out = np.full(len(x), -np.inf, np.float32)
    for s in range(0, len(x), block):
        sim = x[s:s + block] @ other.T
        if y is None:
            sim[np.arange(len(sim)), s + np.arange(len(sim))] = -np.inf
        out[s:s + block] = sim.max(axis=1)
    return out


def measure(method: str, params: dict, draw, gallery, real_means) -> dict:
    started = time.perf_counter()
    try:
        x, info = draw()
    except InputError as e:
        return {"method": method, **params, "reached": False, "error": str(e),
                "seconds": round(time.perf_counter() - started, 2)}
    nn = nearest_cosines(x)
    row = {"method": method, **params, "reached": True,
           "acceptance_rate": info["acceptance_rate"], "max_cos": float(nn.max()),
           "mean_nn_cos": float(nn.mean())}
    if gallery is not None:
        row["mean_gallery_cos"] = float(nearest_cosines(x, gallery).mean())
        row["leaked_share"] = float((nearest_cosines(x, real_means) > SAME_PERSON).mean())
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def best(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["reached"] and r.get("leaked_share", 0.0) == 0.0]
    return min(ok, key=lambda r: (r["max_cos"], r["mean_nn_cos"])) if ok else None


def table(rows: list[dict], keys: list[str]) -> str:
    top = best(rows)
    head = keys + ["reached N", "acceptance", "max_cos", "mean_nn_cos", "mean_gallery_cos",
                   "leaked (> 0.7 to a real identity)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = " **best**" if r is top else ""
        cells = [f"{r[k]}" for k in keys]
        if r["reached"]:
            cells += ["yes" + mark, f"{r['acceptance_rate']:.4f}", f"{r['max_cos']:.4f}",
                      f"{r['mean_nn_cos']:.4f}", f"{r.get('mean_gallery_cos', float('nan')):.4f}",
                      f"{r.get('leaked_share', 0.0):.1%}"]
        else:
            cells += ["no: " + r["error"].split(";")[0].split(": ", 1)[-1]] + [""] * 5
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gallery", required=True)
    p.add_argument("--gallery_labels", required=True)
    p.add_argument("--num_identities", type=int, default=2000)
    p.add_argument("--max_draws", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random_margin_512", action="store_true",
                   help="also random_margin at n = 10,000, d = 512 (about a minute)")
    p.add_argument("--out", default="", help="optional .json of every row")
    a = p.parse_args()
    gallery = load_embeddings(a.gallery, "gallery")
    labels = load_labels(a.gallery_labels, len(gallery), "gallery_labels")
    real = samplers.identity_statistics(gallery, labels).means
    n, d = a.num_identities, gallery.shape[1]
    common = {"max_draws": a.max_draws, "seed": a.seed}
    sections = []

    rows = [measure("random_margin", {"min_distance": m},
                    lambda m=m: samplers.random_margin(n, d, min_distance=m, **common),
                    gallery, real)
            for m in (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75)]
    sections.append(("random_margin", ["min_distance"], rows))

    rows = [measure("diffr", {"nms_threshold": t},
                    lambda t=t: samplers.diffr(n, gallery, labels, nms_threshold=t, **common),
                    gallery, real)
            for t in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)]
    sections.append(("diffr", ["nms_threshold"], rows))

    grid = [(s, 0.3, 0.7, m) for s in (0.75, 1.0, 1.5, 2.0) for m in (0.2, 0.25, 0.3)]
    grid += [(1.0, 0.5, 0.7, 0.3), (1.0, 0.3, 0.6, 0.3), (1.5, 0.3, 0.6, 0.25)]
    rows = [measure("perturbed_gallery",
                    {"perturbation": s, "min_source_similarity": lo,
                     "max_source_similarity": hi, "max_similarity": m},
                    lambda s=s, lo=lo, hi=hi, m=m: samplers.perturbed_gallery(
                        n, gallery, perturbation=s, min_source_similarity=lo,
                        max_source_similarity=hi, max_similarity=m, **common),
                    gallery, real)
            for s, lo, hi, m in grid]
    sections.append(("perturbed_gallery", ["perturbation", "min_source_similarity",
                                           "max_source_similarity", "max_similarity"], rows))

    if a.random_margin_512:
        rows = [measure("random_margin_512", {"n": 10_000, "d": 512, "min_distance": m},
                        lambda m=m: samplers.random_margin(10_000, 512, min_distance=m,
                                                           **common),
                        None, None)
                for m in (0.3, 0.7, 0.75, 0.8)]
        sections.append(("random_margin at n = 10,000, d = 512 (no gallery)",
                         ["n", "d", "min_distance"], rows))

    for title, keys, rows in sections:
        print(f"\n### {title} (n = {n}, d = {d}, max_draws = {a.max_draws}, seed {a.seed})\n"
              if "512" not in title else f"\n### {title}\n")
        print(table(rows, keys))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps([r for _, _, rows in sections for r in rows],
                                          indent=1))


if __name__ == "__main__":
    main()
