"""`python -m bridges.evaluate --model=runs/x/model.pt --bins=benchmarks/ --out_dir=eval/x`

Verification on insightface `.bin` sets (lfw, cfp_fp, agedb_30, calfw, cplfw, ...): the
embedding of an image is the normalised sum of the features of the image and its mirror;
accuracy by the 10-fold protocol (mean and std), TAR at --far over all pairs, a ROC
plot, results.md and results.json in --out_dir. `--models=a,b,c` evaluates several models
and ranks them across the sets by mean accuracy and by Borda count.
`--ijb=DIR --ijb_target=IJBC` evaluates on IJB-B / IJB-C templates instead (bridges/ijb.py):
TAR at FAR 1e-6 ... 1e-1, 1:N identification, <target>_results.md/.json, <target>_roc.png.
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure.
"""

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from bridges import ijb, require_path, require_torch_extra, set_threads
from hyperface_jax import cli
from hyperface_jax.io.files import InputError, atomic_write, save_json
from hyperface_jax.options import option


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(ijb.IJBOptions):
    HELP_ORDER = ("models", "sets", "protocol", "ijb", "run")

    model: str = option("", "A model written by bridges.train (model.pt, an epoch checkpoint, "
                        "or its run folder).", group="models")
    models: str = option("", "Several models, comma separated, to evaluate and rank (instead "
                         "of --model).", group="models")
    names: str = option("", "Names of the models (comma separated, in the order of "
                        "--models/--model) for results.md, results.json and the ROC legend; "
                        "empty: each run folder's name.", group="models")
    bins: str = option("", "A folder of .bin verification sets, or comma-separated .bin "
                       "files.", group="sets")
    sets: str = option("", "Only these sets (comma-separated names without .bin); empty: all "
                       "found.", group="sets")
    max_images: int = option(100_000, "Refuse a .bin set holding more images (a .bin is a "
                             "pickle, whose shared references let a small file stand for any "
                             "number of images; the largest published set, cfp_fp, has "
                             "14,000).", group="sets", low=2)
    far: float = option(1e-3, "False accept rate at which the true accept rate is reported.",
                        group="protocol", low=0, high=1, low_open=True, high_open=True)
    flip: bool = option(True, "Add the mirrored image's features (the standard protocol).",
                        group="protocol")
    group_similarity: bool = option(False, "GroupFace models: score pairs by the group-aware "
                                    "similarity instead of the cosine.", group="protocol")
    batch_size: int = option(64, "Images per forward pass.", group="run", low=1)
    threads: int = option(0, "torch CPU threads; 0: picked from the machine (the cores this "
                          "process may use minus the load average).", group="run", low=0)
    device: str = option("auto", "auto, cpu or cuda.", group="run",
                         choices=("auto", "cpu", "cuda"))
    out_dir: str = option("", "Folder for results.json, results.md and roc.png.", group="run",
                          role="output_dir")
    progress: bool = option(True, "Show a progress bar.", group="run")


def find_bins(spec: str, only: str = "") -> dict[str, Path]:
    if not spec:
        raise InputError("--bins (a folder of .bin files or a list of files) or --ijb is "
                         "required")
    parts = [Path(p) for p in spec.split(",") if p]
    if len(parts) == 1 and parts[0].is_dir():
        files = sorted(parts[0].glob("*.bin"))
        if not files:
            raise InputError(f"no .bin files in {parts[0]}")
    else:
        files = [require_path(f, "verification file") for f in parts]
    found = {f.stem: f for f in files}
    if only:
        wanted = [s for s in only.split(",") if s]
        missing = [s for s in wanted if s not in found]
        if missing:
            raise InputError(f"--sets {','.join(missing)} not among {', '.join(found)}")
        found = {s: found[s] for s in wanted}
    return found


def model_names(paths: list[str], given: str = "") -> dict[str, str]:
    """{name: path}: the names of --names, else short unique labels (the run folder's name
    for .../model.pt or a folder)."""
    if given:
        labels = [n.strip() for n in given.split(",")]
        if len(labels) != len(paths):
            raise InputError(f"--names has {len(labels)} names for {len(paths)} models")
        bad = [n for n in labels if not n or "|" in n]
        if bad:
            raise InputError(f"--names: empty name or '|' in {bad[0]!r}")
        if len(set(labels)) != len(labels):
            raise InputError(f"--names repeats a name: {given}")
        return dict(zip(labels, paths, strict=True))
    names = {}
    for p in paths:
        path = Path(p)
        base = path.name if path.is_dir() else (
            path.parent.name if path.name == "model.pt" else path.stem)
        name, k = base or p, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names[name] = p
    return names


def embed(model, images: np.ndarray, *, batch_size: int, flip: bool, device, bar=None,
          label: str = "the model"):
    """(normalised embeddings, GDN intermediate features or None) of uint8 NHWC images.
    The flip sum and the norm are taken in float64 (embeddings near float32's largest
    value stay finite); a model giving NaN or Inf is refused (`InputError` naming
    `label` and the image)."""
    import torch
    import torch.nn.functional as F

    from bridges.recognition.data import to_tensor

    embeddings, intermediates = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.stack([to_tensor(im) for im in images[start:start + batch_size]]).to(device)
            out = model(x)
            emb, inter = out["embedding"].double(), out.get("intermediate")
            inter = None if inter is None else inter.double()
            if flip:
                mirrored = model(torch.flip(x, dims=[3]))
                emb = emb + mirrored["embedding"].double()
                if inter is not None:
                    inter = inter + mirrored["intermediate"].double()
            for kind, values in (("embeddings", emb), ("GroupFace features", inter)):
                if values is not None and not torch.isfinite(values).all():
                    row = int(torch.nonzero(~torch.isfinite(values).all(dim=1))[0, 0])
                    raise InputError(f"{label} gives non-finite {kind} (NaN or Inf) for "
                                     f"image {start + row}")
            embeddings.append(F.normalize(emb, dim=1).float().cpu().numpy())
            if inter is not None:
                intermediates.append(inter.float().cpu().numpy())
            if bar is not None:
                bar.update(len(x))
    return np.concatenate(embeddings), (np.concatenate(intermediates) if intermediates else None)


def pair_scores(emb, inter, group_similarity: bool) -> np.ndarray:
    a, b = emb[0::2], emb[1::2]
    if not group_similarity:
        return (a * b).sum(axis=1).astype(np.float64)
    from bridges.recognition.groupface import group_aware_similarity

    return group_aware_similarity(a, b, inter[0::2], inter[1::2]).numpy().astype(np.float64)


def run(fv) -> dict:
    import torch
    from tqdm import tqdm

    from bridges import bins as bins_lib
    from bridges import verification
    from bridges.recognition.model import load_model
    from bridges.recognition.plots import roc_curves

    started = time.time()
    if bool(fv.model) == bool(fv.models):
        raise InputError("give exactly one of --model or --models")
    if not fv.out_dir:
        raise InputError("--out_dir is required")
    paths = [fv.model] if fv.model else [p for p in fv.models.split(",") if p]
    names = model_names(paths, fv.names)
    if fv.ijb:
        return ijb.run(fv, names)
    sets = find_bins(fv.bins, fv.sets)
    threads = set_threads(fv.threads)
    device = torch.device("cuda" if fv.device == "cuda" or (
        fv.device == "auto" and torch.cuda.is_available()) else "cpu")
    models = {name: load_model(path, device) for name, path in names.items()}
    if fv.group_similarity:
        plain = [n for n, m in models.items() if m.groupface is None]
        if plain:
            raise InputError(f"--group_similarity needs GroupFace models; {plain[0]} is not one")
    loaded = {name: bins_lib.read(path, fv.max_images) for name, path in sets.items()}

    results, curves, table = {}, {}, {}
    decoded = {}
    total = sum(len(b) for b, _ in loaded.values()) * len(models)
    bar = tqdm(total=total, disable=not fv.progress, unit="img", file=sys.stderr)
    for name, model in models.items():
        size = model.spec["input_size"]
        results[name], table[name] = {}, {}
        for set_name, (encoded, issame) in loaded.items():
            if (set_name, size) not in decoded:
                decoded[(set_name, size)] = bins_lib.decode(encoded, size, sets[set_name])
            emb, inter = embed(model, decoded[(set_name, size)], batch_size=fv.batch_size,
                               flip=fv.flip, device=device, bar=bar,
                               label=f"model {name} on {sets[set_name]}")
            scores = pair_scores(emb, inter, fv.group_similarity)
            folds = verification.ten_fold_accuracy(scores, issame)
            tar = verification.tar_at_far(scores, issame, fv.far)
            curves[f"{name} / {set_name}"] = verification.roc(scores, issame)
            results[name][set_name] = {
                "accuracy_mean": folds["mean"], "accuracy_std": folds["std"],
                "fold_accuracies": folds["accuracies"].tolist(),
                "fold_thresholds": folds["thresholds"].tolist(),
                "tar_at_far": tar["tar"], "far": fv.far, "far_achieved": tar["far"],
                "tar_threshold": tar["threshold"], "pairs": int(len(issame)),
                "genuine_pairs": int(issame.sum())}
            table[name][set_name] = folds["mean"]
    bar.close()
    ranking = verification.rank_models(table) if len(models) > 1 else None
    report = {"results": results, "ranking": ranking,
              "models": names, "sets": {k: str(v) for k, v in sets.items()},
              "flags": dataclasses.asdict(fv), "torch_threads": threads,
              "protocol": "10-fold, threshold by best accuracy on 9 folds, flip-sum embeddings"
                          if fv.flip else "10-fold, no flip",
              "wall_seconds": round(time.time() - started, 3)}
    out = Path(fv.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "results.json", report)
    text = results_markdown(results, ranking, fv.far)
    atomic_write(out / "results.md", lambda f: f.write(text.encode()))
    roc_curves(curves, out / "roc.png", title="verification ROC")
    print(text)
    return report


def results_markdown(results: dict, ranking, far: float) -> str:
    sets = list(next(iter(results.values())))
    lines = ["# Verification results", "",
             "Accuracy (%) by the 10-fold protocol, mean ± std over folds.", "",
             "| model | " + " | ".join(sets) + " | mean |",
             "|---" * (len(sets) + 2) + "|"]
    for name, row in results.items():
        cells = [f"{100 * row[s]['accuracy_mean']:.2f} ± {100 * row[s]['accuracy_std']:.2f}"
                 for s in sets]
        mean = 100 * np.mean([row[s]["accuracy_mean"] for s in sets])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:.2f} |")
    lines += ["", f"TAR (%) at FAR = {far:g} (all pairs pooled).", "",
              "| model | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * row[s]['tar_at_far']:.2f}" for s in sets) + " |")
    if ranking:
        lines += ["", "Ranking across sets (Borda: one point per model beaten on a set, "
                      "ties share).", "",
                  "| rank (Borda) | model | Borda points | mean accuracy (%) | rank (mean) |",
                  "|---|---|---|---|---|"]
        for r in ranking:
            lines.append(f"| {r['rank_borda']} | {r['model']} | {r['borda']:g} | "
                         f"{100 * r['mean']:.2f} | {r['rank_mean']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    require_torch_extra("bridges.evaluate")
    return cli.run_main(argv, EvaluateConfig, run)


if __name__ == "__main__":
    cli.exit_process(main())
