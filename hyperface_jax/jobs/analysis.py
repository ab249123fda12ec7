"""The job of `python -m hyperface_jax.analyze`: dataset quality of a generated (or any
labelled) set of face features, before spending GPU-days training on it: intra-class noise,
inter-class noise, genuine and impostor cosine distributions with EER and d', identity
consistency, and with a reference set identity leakage and the synthetic images most similar
to real ones. See `measure/quality.py` for the definitions and the blockwise, memory-mapped
computation (3.2M x 512 fits); the files written are listed in hyperface_jax/analyze.py."""

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hyperface_jax.io.files import (
    InputError,
    atomic_write,
    load_embeddings,
    load_labels,
    open_embeddings,
    save_figure,
    save_json,
)
from hyperface_jax.jobs.config import CLEAN_RULES, AnalyzeConfig
from hyperface_jax.measure import quality


def _check(cfg: AnalyzeConfig) -> None:
    """The rules that tie options together (each value's bounds: AnalyzeConfig's table)."""
    for name in ("embeddings", "labels", "out_dir"):
        if not getattr(cfg, name):
            raise InputError(f"--{name} is required")
    if cfg.reference_labels and not cfg.reference:
        raise InputError("--reference_labels needs --reference")
    if cfg.clean_top_k and not cfg.reference:
        raise InputError("--clean_top_k needs --reference")
    rules = drop_rules(cfg)
    if "clean_top_k" in rules and not cfg.clean_top_k:
        raise InputError("--drop=clean_top_k needs --clean_top_k > 0")
    if "leaked_identities" in rules and not cfg.reference:
        raise InputError("--drop=leaked_identities needs --reference")
    if cfg.files and not rules:
        raise InputError("--files names the files to drop: give --clean_top_k or --drop")


DROP_RULES = ("clean_top_k", "intra_class_outliers", "leaked_identities")


def drop_rules(cfg) -> list[str]:
    rules = [r.strip() for r in cfg.drop.split(",") if r.strip()]
    for rule in rules:
        if rule not in DROP_RULES:
            raise InputError(f"unknown rule {rule!r} in --drop; choose from "
                             f"{', '.join(DROP_RULES)}")
    if not rules and cfg.clean_top_k:
        rules = ["clean_top_k"]
    return rules


def load_row_files(path: str, rows: int) -> list[str]:
    """The file of each embeddings row, from `bridges.embed`'s .json listing (key "rows":
    one path per row, in row order) or a text file of one path per line. Raises InputError
    unless there is exactly one distinct, non-empty, single-line path per row."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--files listing not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--files listing {p} is not readable UTF-8 text ({e})") from None
    if p.suffix == ".json":
        try:
            listing = json.loads(text)
        except ValueError as e:
            raise InputError(f"--files listing {p} is not valid JSON ({e})") from None
        files = listing.get("rows") if isinstance(listing, dict) else None
        if not isinstance(files, list):
            raise InputError(f"--files listing {p} has no 'rows' list (expected the .json "
                             "that bridges.embed writes beside its embeddings)")
    else:
        files = text.splitlines()
    if len(files) != rows:
        raise InputError(f"--files listing {p} names {len(files)} files for {rows} "
                         "embeddings rows")
    for i, f in enumerate(files):
        if not isinstance(f, str) or not f.strip() or "\n" in f or "\r" in f:
            raise InputError(f"--files listing {p}: entry {i} is not a one-line path: {f!r}")
    if len(set(files)) != len(files):
        seen = set()
        twice = next(f for f in files if f in seen or seen.add(f))
        raise InputError(f"--files listing {p} names {twice!r} twice")
    return files


def _summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {}
    p = np.percentile(values, [1, 5, 50, 95, 99])
    return {"mean": float(values.mean()), "min": float(values.min()), "p01": float(p[0]),
            "p05": float(p[1]), "p50": float(p[2]), "p95": float(p[3]), "p99": float(p[4]),
            "max": float(values.max())}


def _distribution(dist: quality.Distribution) -> dict:
    return {"pairs": dist.n, "mean": dist.mean, "std": float(np.sqrt(dist.var)),
            "p01": dist.quantile(0.01), "p50": dist.quantile(0.5), "p99": dist.quantile(0.99)}


# The analysis: inputs, the passes over the rows, the drop rules, the report -------------------

@dataclasses.dataclass
class Inputs:
    """The validated inputs: the rows (memory-mapped), their labels, and the optional row
    files, reference set and identity embeddings (None when not given)."""
    x: np.ndarray
    labels: np.ndarray
    files: list[str] | None
    reference: np.ndarray | None
    reference_labels: np.ndarray | None
    targets: np.ndarray | None  # --identity_embeddings: row i for label i
    what: str  # how errors about the rows name them

    @property
    def d(self) -> int:
        return self.x.shape[1]


def read_inputs(cfg) -> Inputs:
    """Open and check every input file (InputError naming the first bad one)."""
    x = open_embeddings(cfg.embeddings, "embeddings")
    n, d = x.shape
    labels = load_labels(cfg.labels, n, "labels")
    files = load_row_files(cfg.files, n) if cfg.files else None
    reference = reference_labels = targets = None
    if cfg.reference:
        ref = open_embeddings(cfg.reference, "reference")
        if ref.shape[1] != d:
            raise InputError(f"dimension mismatch: embeddings have d={d}, reference "
                             f"{cfg.reference} has d={ref.shape[1]}")
        reference = np.asarray(ref, np.float32)
        quality.check_rows(reference, 0, f"reference file {cfg.reference}")
        reference_labels = (load_labels(cfg.reference_labels, len(reference),
                                        "reference_labels")
                            if cfg.reference_labels else np.arange(len(reference)))
    if cfg.identity_embeddings:
        path = cfg.identity_embeddings
        targets = load_embeddings(path, "identity_embeddings")
        if targets.shape[1] != d:
            raise InputError(f"dimension mismatch: embeddings have d={d}, identity_embeddings "
                             f"{path} has d={targets.shape[1]}")
        if labels.min() < 0 or labels.max() >= len(targets):
            raise InputError(f"labels run from {labels.min()} to {labels.max()} but "
                             f"identity_embeddings {path} has {len(targets)} rows (row i is "
                             "label i)")
    return Inputs(x, labels, files, reference, reference_labels, targets,
                  f"embeddings file {cfg.embeddings}")


@contextlib.contextmanager
def _timed(timings: dict, name: str):
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


def _bar(cfg, total: int, desc: str):
    return tqdm(total=total, disable=not cfg.progress, unit="img", desc=desc,
                file=sys.stderr, dynamic_ncols=True)


def identity_pass(cfg, inputs: Inputs):
    """Per identity: mean, leave-one-out consistency, outliers; the genuine pairs."""
    with _bar(cfg, len(inputs.x), "identities") as bar:
        ids = quality.identity_figures(inputs.x, inputs.labels,
                                       outlier_threshold=cfg.outlier_threshold,
                                       chunk_rows=cfg.chunk_rows, what=inputs.what,
                                       progress=bar.update)
    if len(ids.labels) < 2:
        raise InputError(f"labels file {cfg.labels} holds a single identity; "
                         "impostor pairs need at least 2")
    if ids.genuine.n == 0:
        raise InputError(f"labels file {cfg.labels}: no identity has two images, "
                         "so there are no genuine pairs")
    return ids


def impostor_pass(cfg, inputs: Inputs):
    """(impostor distribution, images sampled, exact) over the sampled images."""
    impostor, sampled, exact = quality.impostor_distribution(
        inputs.x, inputs.labels, sample=cfg.impostor_sample, seed=cfg.seed,
        block=cfg.chunk_rows)
    if impostor.n == 0:
        raise InputError(f"no impostor pairs among the {sampled} sampled images; "
                         "raise --impostor_sample")
    return impostor, sampled, exact


def inter_class_section(cfg, ids) -> tuple[dict, np.ndarray]:
    """Identity pairs whose means are closer than --same_identity_threshold: (the report
    section, each identity's cosine to its nearest other identity)."""
    threshold = cfg.same_identity_threshold
    pairs, pair_count, nearest = quality.close_pairs(
        ids.means, threshold, block=cfg.chunk_rows, limit=cfg.list_limit)
    c = len(ids.labels)
    return {
        "threshold": threshold,
        "identity_pairs": pair_count,
        "identities_involved": int((nearest > threshold).sum()),
        "share_of_identities": float((nearest > threshold).mean()) if c > 1 else 0.0,
        "nearest_other_identity_cos": _summary(nearest[np.isfinite(nearest)]),
        "pairs": [{"label_a": int(ids.labels[a]), "label_b": int(ids.labels[b]), "cos": s}
                  for a, b, s in pairs],
    }, nearest


def make_report(cfg, inputs: Inputs, ids, inter: dict, impostor, sampled: int,
                exact: bool) -> dict:
    """The figures of the identity, inter-class and impostor passes."""
    n = len(inputs.x)
    eer, eer_threshold = quality.equal_error_rate(ids.genuine.counts, impostor.counts)
    return {
        "n_images": n, "d": inputs.d, "n_identities": len(ids.labels),
        "images_per_identity": _summary(ids.counts.astype(np.float64)),
        "intra_class_noise": {
            "threshold": cfg.outlier_threshold,
            "rule": "cosine to the mean of the other images of the identity (leave-one-out)",
            "outlier_images": int(len(ids.outlier_rows)),
            "share": len(ids.outlier_rows) / n,
            "identities_with_outliers": int((ids.outliers > 0).sum()),
            "unjudged_images": ids.unjudged,
        },
        "identity_consistency": _summary(ids.consistency[np.isfinite(ids.consistency)]),
        "inter_class_noise": inter,
        "genuine": _distribution(ids.genuine),
        "impostor": {**_distribution(impostor), "images_sampled": sampled, "exact": exact},
        "eer": eer, "eer_threshold": eer_threshold,
        "d_prime": float(quality.decidability(ids.genuine, impostor)),
    }


def consistency_pass(cfg, inputs: Inputs, ids) -> tuple[dict, np.ndarray]:
    """Each image's cosine to its own identity embedding: (the report section, the mean
    per identity)."""
    per_image = quality.cosine_to_own(inputs.x, inputs.labels, inputs.targets,
                                      block=cfg.chunk_rows, what=inputs.what)
    index = np.searchsorted(ids.labels, inputs.labels)
    own = np.bincount(index, weights=per_image, minlength=len(ids.labels)) / ids.counts
    low = per_image < cfg.outlier_threshold
    return {"per_image": _summary(per_image), "per_identity": _summary(own),
            "images_below_outlier_threshold": int(low.sum()),
            "share_below": float(low.mean())}, own


def leakage_pass(cfg, inputs: Inputs, ids) -> tuple[dict, dict]:
    """Identity means against reference identity means, and every image against the
    nearest reference image: (the report section, {to_real, top, leaked} for the drop
    rules and identities.csv)."""
    chunk, c = cfg.chunk_rows, len(ids.labels)
    ref_ids = quality.identity_figures(inputs.reference, inputs.reference_labels,
                                       chunk_rows=chunk, what="reference")
    threshold = cfg.leakage_threshold
    to_real = np.full(c, -np.inf, np.float32)
    real_arg = np.zeros(c, np.int64)
    for s in range(0, c, chunk):
        sim = ids.means[s:s + chunk] @ ref_ids.means.T
        real_arg[s:s + chunk] = sim.argmax(axis=1)
        to_real[s:s + chunk] = sim.max(axis=1)
    leaked = np.flatnonzero(to_real > threshold)
    leaked = leaked[np.argsort(-to_real[leaked], kind="stable")]
    k, rule = cfg.clean_top_k, cfg.clean_rule
    paper_rule = bool(k) and rule == "pairs"
    with _bar(cfg, len(inputs.x), "leakage") as bar:
        best, arg, *found = quality.nearest_reference(
            inputs.x, inputs.reference, block=chunk, what=inputs.what, progress=bar.update,
            top_pairs=k if paper_rule else 0)
    if paper_rule:
        pairs = found[0]
        top = pairs.distinct_rows()
        listed = zip(pairs.rows, pairs.references, pairs.cos, strict=True)
    else:
        top = quality.top_k(best, k) if k else np.zeros(0, np.int64)
        listed = ((i, arg[i], best[i]) for i in top)
    labels = inputs.labels
    return {
        "threshold": threshold,
        "reference_images": len(inputs.reference),
        "reference_identities": len(ref_ids.labels),
        "leaked_identities": int(len(leaked)), "share": len(leaked) / c,
        "nearest_reference_identity_cos": _summary(to_real),
        "nearest_reference_image_cos": _summary(best),
        "identities": [{"label": int(ids.labels[i]),
                        "reference_label": int(ref_ids.labels[real_arg[i]]),
                        "cos": float(to_real[i])}
                       for i in leaked[:cfg.list_limit]],
        "clean_rule": (None if not k else CLEAN_RULES[rule]),
        "top_k_pairs": [{"row": int(i), "label": int(labels[i]),
                         "reference_row": int(r), "cos": float(c)} for i, r, c in listed],
    }, {"to_real": to_real, "top": top, "leaked": leaked}


def analyze(cfg, *, log=None) -> dict:
    """Check the flags and inputs, run the passes, write the outputs; returns the report."""
    _check(cfg)
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    started = time.time()
    inputs = read_inputs(cfg)
    timings, own, leak = {}, None, None
    with _timed(timings, "identities_and_genuine"):
        ids = identity_pass(cfg, inputs)
    with _timed(timings, "impostor"):
        impostor, sampled, exact = impostor_pass(cfg, inputs)
    with _timed(timings, "inter_class"):
        inter, nearest_identity = inter_class_section(cfg, ids)
    report = make_report(cfg, inputs, ids, inter, impostor, sampled, exact)
    if inputs.targets is not None:
        with _timed(timings, "id_consistency"):
            report["id_consistency_to_identity_embeddings"], own = consistency_pass(
                cfg, inputs, ids)
    if inputs.reference is not None:
        with _timed(timings, "leakage"):
            report["leakage"], leak = leakage_pass(cfg, inputs, ids)
    drop = _rows_to_drop(drop_rules(cfg), ids, inputs.labels, leak)
    if drop is not None:
        report["drop"] = _drop_section(drop, inputs.files)
    report["timings_seconds"] = {k: round(v, 3) for k, v in timings.items()}
    report["wall_seconds"] = round(time.time() - started, 3)
    report["flags"] = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}
    _write(Path(cfg.out_dir), report, ids, impostor, nearest_identity, leak, own, drop)
    log(f"{report['n_images']} images, {report['n_identities']} identities: "
        f"intra-class noise {report['intra_class_noise']['share']:.4%}, "
        f"inter-class pairs {inter['identity_pairs']}, EER {report['eer']:.4%} at "
        f"{report['eer_threshold']:.3f}, d'={report['d_prime']:.3f} -> {cfg.out_dir}")
    return report


def _drop_section(drop: dict, files: list[str] | None) -> dict:
    """The report's drop section; with the row files, `drop["files"]` names them."""
    if files is not None:
        drop["files"] = [files[r] for r in drop["rows"]]
    return {"rules": drop["rules"], "rows": int(len(drop["rows"])),
            "per_rule": drop["per_rule"], "files": "drop.txt" if files is not None else None}


def _rows_to_drop(rules, ids, labels, leak) -> dict | None:
    """The sorted union of the rows each rule drops, and how many each rule names."""
    if not rules:
        return None
    chosen = {
        "clean_top_k": lambda: leak["top"],
        "intra_class_outliers": lambda: ids.outlier_rows,
        "leaked_identities": lambda: np.flatnonzero(np.isin(labels, ids.labels[leak["leaked"]])),
    }
    per_rule = {rule: np.asarray(chosen[rule](), np.int64) for rule in rules}
    rows = np.unique(np.concatenate(list(per_rule.values())))
    return {"rules": rules, "rows": rows, "per_rule": {r: int(len(v)) for r, v in per_rule.items()}}


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _write(out: Path, report, ids, impostor, nearest_identity, leak, own, drop) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["label,images,consistency,outliers,nearest_other_identity_cos"
             + (",cos_to_identity_embedding" if own is not None else "")
             + (",nearest_reference_identity_cos" if leak else "")]
    for i in range(len(ids.labels)):
        row = (f"{ids.labels[i]},{ids.counts[i]},{ids.consistency[i]:.6f},{ids.outliers[i]},"
               f"{nearest_identity[i]:.6f}")
        row += f",{own[i]:.6f}" if own is not None else ""
        lines.append(row + (f",{leak['to_real'][i]:.6f}" if leak else ""))
    _write_text(out / "identities.csv", "\n".join(lines) + "\n")
    _write_text(out / "intra_class_outliers.txt", "".join(f"{r}\n" for r in ids.outlier_rows))
    if leak is not None and report["flags"]["clean_top_k"]:
        _write_text(out / "clean_drop.txt", "".join(f"{r}\n" for r in leak["top"]))
    if drop is not None:
        _write_text(out / "drop_rows.txt", "".join(f"{r}\n" for r in drop["rows"]))
        if "files" in drop:
            _write_text(out / "drop.txt", "".join(f"{f}\n" for f in drop["files"]))
    _plot(out / "analysis.png", report, ids.genuine, impostor)
    _write_text(out / "analysis.md", _markdown(report))
    save_json(out / "analysis.json", report)


def _markdown(r: dict) -> str:
    intra, inter = r["intra_class_noise"], r["inter_class_noise"]
    rows = [
        ("images / identities", f"{r['n_images']} / {r['n_identities']} (d = {r['d']})"),
        (f"intra-class noise (leave-one-out cos to mean < {intra['threshold']})",
         f"{intra['outlier_images']} images ({intra['share']:.4%}), "
         f"{intra['identities_with_outliers']} identities"
         + (f", {intra['unjudged_images']} images alone in their identity not judged"
            if intra["unjudged_images"] else "")),
        (f"inter-class noise (identity means > {inter['threshold']})",
         f"{inter['identity_pairs']} pairs, {inter['identities_involved']} identities "
         f"({inter['share_of_identities']:.4%})"),
        ("identity consistency (mean leave-one-out cos to own mean)",
         f"mean {r['identity_consistency'].get('mean', float('nan')):.4f}, "
         f"p05 {r['identity_consistency'].get('p05', float('nan')):.4f}"),
        ("genuine cos", f"{r['genuine']['mean']:.4f} +- {r['genuine']['std']:.4f} "
                        f"({r['genuine']['pairs']} pairs)"),
        ("impostor cos", f"{r['impostor']['mean']:.4f} +- {r['impostor']['std']:.4f} "
                         f"({r['impostor']['pairs']} pairs, "
                         f"{'exact' if r['impostor']['exact'] else 'sampled'})"),
        ("EER", f"{r['eer']:.4%} at threshold {r['eer_threshold']:.4f}"),
        ("d'", f"{r['d_prime']:.4f}"),
    ]
    if "id_consistency_to_identity_embeddings" in r:
        ic = r["id_consistency_to_identity_embeddings"]
        rows.append(("ID consistency (image vs its identity embedding)",
                     f"mean {ic['per_image']['mean']:.4f}, p05 {ic['per_image']['p05']:.4f}, "
                     f"{ic['images_below_outlier_threshold']} images below the outlier "
                     "threshold"))
    if "leakage" in r:
        lk = r["leakage"]
        rows.append((f"identity leakage (> {lk['threshold']} to a reference identity)",
                     f"{lk['leaked_identities']} identities ({lk['share']:.4%})"))
        if lk["top_k_pairs"]:
            rows.append(("top-k synthetic/real image pairs",
                         f"{len(lk['top_k_pairs'])} images, cos {lk['top_k_pairs'][-1]['cos']:.4f}"
                         f" to {lk['top_k_pairs'][0]['cos']:.4f} (clean_drop.txt)"))
    if "drop" in r:
        dr = r["drop"]
        rows.append(("images to drop (" + ", ".join(dr["rules"]) + ")",
                     f"{dr['rows']} (drop_rows.txt" + (", drop.txt)" if dr["files"] else ")")))
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    return (f"# Dataset analysis of {r['flags']['embeddings']}\n\n| figure | value |\n|---|---|\n"
            f"{table}\n\nWall time {r['wall_seconds']} s.\n")


def histogram_range(*counts: np.ndarray, margin: float = 0.05,
                    min_pad: float = 0.005) -> tuple[float, float]:
    """x limits that hold every non-empty bin of the histograms (on `quality.bin_edges()`),
    padded by `margin` of their span (at least `min_pad`), within [-1, 1]: a narrow
    distribution is not squashed into a fixed [-1, 1] axis."""
    filled = np.flatnonzero(np.sum(counts, axis=0))
    edges = quality.bin_edges()
    if not len(filled):
        return -1.0, 1.0
    lo, hi = edges[filled[0]], edges[filled[-1] + 1]
    pad = max(margin * (hi - lo), min_pad)
    return float(max(-1.0, lo - pad)), float(min(1.0, hi + pad))


def _plot(path: Path, report, genuine, impostor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = quality.bin_edges()
    lo, hi = histogram_range(genuine.counts, impostor.counts)
    # About 100 bars over the plotted range, each a whole number of histogram bins.
    factor = max(1, int(round((hi - lo) / 100 / (2.0 / quality.BINS))))
    first = max(0, int(np.floor((lo + 1) * quality.BINS / 2)))
    last = min(quality.BINS, int(np.ceil((hi + 1) * quality.BINS / 2)))
    starts = np.arange(first, last, factor)
    width = factor * 2.0 / quality.BINS
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for dist, name, color in ((genuine, "genuine", "C0"), (impostor, "impostor", "C3")):
        counts = np.add.reduceat(dist.counts[first:last], starts - first)
        ax.bar(edges[starts] + width / 2, counts / max(1, dist.n) / width, width=width,
               alpha=0.5, color=color, label=f"{name} ({dist.n} pairs)")
    ax.axvline(report["eer_threshold"], color="k", ls="--", lw=1,
               label=f"EER {report['eer']:.3%} at {report['eer_threshold']:.3f}")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(f"genuine vs impostor (d' = {report['d_prime']:.2f})")
    ax.legend(fontsize=8)
    ax = axes[1]
    frr = np.concatenate([[0], np.cumsum(genuine.counts)]) / max(1, genuine.n)
    far = 1 - np.concatenate([[0], np.cumsum(impostor.counts)]) / max(1, impostor.n)
    ax.plot(edges, frr, label="false reject rate")
    ax.plot(edges, far, label="false accept rate")
    ax.plot([report["eer_threshold"]], [report["eer"]], "ko", label="EER")
    ax.set_xlim(lo, hi)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_ylim(0, 1.5)  # rates are never negative
    ax.set_xlabel("threshold")
    ax.set_ylabel("rate")
    ax.set_title("error rates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)
