"""`python -m bridges.generate`: a synthetic face dataset from packed references.

    python -m bridges.generate --flagfile=configs/generate_paper.flags \
        --references=runs/pack/embeddings.npy --out_dir=dataset/
    accelerate launch --num_processes=4 -m bridges.generate ...   # identities split
    python -m bridges.generate ... --identities=0:2500             # one SLURM array task

For identity i and sample k (paper Eq. 3): e_ik = normalize(x_i + beta * eps_ik), image =
Arc2Face(e_ik, z_ik). Writes `<out_dir>/<i:06d>/<k:03d>.png` (each to a temporary name,
then renamed), `manifest.jsonl`, `report.json` (`report.START-END.json` for a part of the
identities), `generation.json` (the settings that fix the pixels; a re-run with different
ones is refused) and, with --recognizer, `identity_cos.png`. Re-running skips finished
images after checking them: an image whose bytes differ from the sha256 manifest.jsonl
recorded, or (not yet in the manifest) does not decode completely, is drawn again.
Image (i, k) depends only on (seed, i, k) and --micro_batch (see bridges.arc2face): not
on --batch_size, the number of processes, --identities or resumption.

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure,
130 interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bridges import require_torch_extra, resumable, set_threads
from bridges.resumable import Drawn, png_decodes, write_png  # noqa: F401 - generate's API
from hyperface_jax import cli
from hyperface_jax.io import integrity
from hyperface_jax.io.files import (
    InputError,
    load_embeddings,
    save_figure,
    save_json,
)
from hyperface_jax.options import option

if TYPE_CHECKING:  # torch is imported where it is used (the CLI explains a missing extra)
    import torch

NO_FACE_DIR = "_no_face"
UNALIGNED_DIR = "_unaligned"
IMAGE_NAME = re.compile(r"^(\d{3,})\.png$")
IDENTITY_DIR = re.compile(r"^\d{6,}$")
# Flags whose change alters the pixels of an image (i, k): recorded in generation.json.
PIXEL_FLAGS = ("seed", "beta", "steps", "guidance", "micro_batch", "align")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    HELP_ORDER = ("inputs", "images", "alignment", "compute", "run")

    references: str = option("", "Reference embeddings (.npy, (n, 512), unit rows), e.g. the "
                             "embeddings.npy of hyperface_jax.pack.", group="inputs")
    arc2face: str = option("", "Arc2Face weights folder: arc2face/ (UNet) and encoder/ (CLIP "
                           "text encoder).", group="inputs")
    base_model: str = option("", "Stable Diffusion 1.5 folder for tokenizer/, vae/ and "
                             "scheduler/.", group="inputs")
    out_dir: str = option("", "Dataset folder: <i:06d>/<k:03d>.png, manifest.jsonl, report.json. "
                          "Re-running on it resumes.", group="run", role="output_dir")
    images_per_identity: int = option(64, "Images per identity (paper: 50 in the main table, 64 "
                                      "by default here).", group="images", low=1)
    beta: float = option(0.005, "Eq. 3 noise scale: e = normalize(x + beta * eps).",
                         group="images", low=0.0)
    steps: int = option(25, "DPM-Solver steps (25: Arc2Face's default; the HyperFace paper "
                        "states none).", group="images", low=1)
    guidance: float = option(3.0, "Classifier-free guidance scale (<= 1: none; 3.0: Arc2Face's "
                             "default, the HyperFace paper states none).", group="images", low=0.0)
    seed: int = option(0, "Seed; image (i, k) is a function of (seed, i, k).",
                       group="images", low=0)
    identities: str = option("", "START:END (half-open) range of identities to generate, e.g. "
                             "for SLURM job arrays; empty: all.", group="compute")
    batch_size: int = option(8, "No effect (each tile of --micro_batch images is written as soon "
                             "as it is drawn); kept so existing flagfiles still parse.",
                             group="compute", low=1)
    micro_batch: int = option(8, "Images the denoiser computes together: always the tile (i, k "
                              "// micro_batch). Part of the result's identity; pick a divisor of "
                              "--images_per_identity to waste nothing.", group="images", low=1)
    dtype: str = option("auto", "Model dtype; auto: float16 on CUDA, float32 on CPU.",
                        group="compute", choices=("auto", "float16", "bfloat16", "float32"))
    device: str = option("", "torch device; empty: the process's accelerate device (cuda:<local "
                         "rank> when GPUs exist, else cpu).", group="compute")
    threads: int = option(0, "torch CPU threads; 0: picked from the machine (free cores: the "
                          "cores this process may use minus the load average, shared among local "
                          "processes). Bits are reproducible at a fixed thread count.",
                          group="compute", low=0)
    align: bool = option(False, "Detect the largest face of each image and store it aligned to "
                         "112 x 112 (ArcFace 5-point template); needs --detector.",
                         group="alignment")
    detector: str = option("", "Face detector for --align: mtcnn (the paper's aligner; weights "
                           "from the facenet-pytorch wheel) or an insightface SCRFD model "
                           "(.onnx), e.g. det_10g.onnx of the antelopev2/buffalo_l packs.",
                           group="inputs")
    det_threshold: float | None = option(None, "Detection score threshold for --align; "
                                         "default: 0.5 for SCRFD, 0.7 (its published "
                                         "final-stage threshold) for MTCNN.",
                                         group="alignment", low=0, high=1)
    keep_unaligned: bool = option(False, "With --align, also keep the full image in "
                                  "<out_dir>/_unaligned/<i>/<k>.png.", group="alignment")
    recognizer: str = option("", "ArcFace ONNX model: embed every image of the run's identities "
                             "and report its cosine to x_i (report.json, identity_cos.png).",
                             group="inputs")
    progress: bool = option(True, "Show a progress bar (main process).", group="run")



# ----------------------------------------------------------------------------- helpers

def parse_identities(text: str, n: int) -> tuple[int, int]:
    if not text:
        return 0, n
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not m:
        raise InputError(f"--identities={text!r}: expected START:END")
    start = int(m.group(1)) if m.group(1) else 0
    end = int(m.group(2)) if m.group(2) else n
    if not 0 <= start < end <= n:
        raise InputError(f"--identities={text}: out of range for {n} references "
                         f"(need 0 <= START < END <= {n})")
    return start, end


def image_path(out: Path, i: int, k: int) -> Path:
    return out / f"{i:06d}" / f"{k:03d}.png"


def no_face_path(out: Path, i: int, k: int) -> Path:
    return out / NO_FACE_DIR / f"{i:06d}" / f"{k:03d}.png"


def is_done(out: Path, i: int, k: int) -> bool:
    return image_path(out, i, k).exists() or no_face_path(out, i, k).exists()


def manifest_checksums(out: Path) -> dict[tuple[int, int], str]:
    """{(identity, k): sha256} of out/manifest.jsonl."""
    return resumable.read_manifest_checksums(
        out / "manifest.jsonl", lambda r: (int(r["identity"]), int(r["k"])))


def remove_damaged_images(out: Path, tiles, K: int, m: int,
                          checksums: dict[tuple[int, int], str]) -> list[Path]:
    """Delete the damaged images of `tiles` so they are drawn again: an image the manifest
    lists must have its recorded sha256; one it does not list yet (written after the last
    manifest, e.g. before a kill), the _no_face and _unaligned copies must decode
    completely. A damaged copy also removes the image it belongs to (both are redrawn)."""
    removed = []
    for i, g in tiles:
        for k in range(g * m, min((g + 1) * m, K)):
            image, no_face = image_path(out, i, k), no_face_path(out, i, k)
            unaligned = out / UNALIGNED_DIR / f"{i:06d}" / f"{k:03d}.png"
            damaged = image.exists() and resumable.is_damaged(image, checksums.get((i, k)))
            for extra in (no_face, unaligned):
                damaged = damaged or (extra.exists() and not png_decodes(extra))
            if damaged:
                for p in (image, no_face, unaligned):
                    if p.exists():
                        p.unlink()
                        removed.append(p)
    return removed


# ----------------------------------------------------------------------------- the run

def validate(fv) -> dict:
    """Check every input that can be checked before loading models; InputError if bad."""
    for name in ("references", "arc2face", "base_model", "out_dir"):
        if not getattr(fv, name):
            raise InputError(f"--{name} is required")
    from bridges.arc2face import ARCFACE_DIM, check_layout

    refs = load_embeddings(fv.references, "references")
    if refs.shape[1] != ARCFACE_DIM:
        raise InputError(f"references file {fv.references} has dimension {refs.shape[1]}; "
                         f"Arc2Face takes {ARCFACE_DIM}-D ArcFace embeddings")
    start, end = parse_identities(fv.identities, refs.shape[0])
    check_layout(fv.arc2face, fv.base_model)
    if fv.align and not fv.detector:
        raise InputError("--align needs --detector=mtcnn or --detector=<SCRFD .onnx>")
    if fv.keep_unaligned and not fv.align:
        raise InputError("--keep_unaligned only makes sense with --align")
    return {"references": refs, "start": start, "end": end}


@dataclasses.dataclass
class Plan:
    """A generation job ready to draw: its validated inputs, where this process runs and
    the loaded models. Built before anything is written."""
    fv: GenerateConfig
    refs: np.ndarray  # (n, d) unit rows
    start: int  # identities start:end (half-open) of this run
    end: int
    proc: resumable.Processes
    device: torch.device
    dtype: torch.dtype
    threads: int
    model: object  # bridges.arc2face.Arc2Face
    detector: object | None  # with --align
    recognizer: object | None  # with --recognizer
    identity: dict  # generation.json: what fixes the pixels

    @property
    def out(self) -> Path:
        return Path(self.fv.out_dir)

    @property
    def K(self) -> int:  # images per identity
        return self.fv.images_per_identity

    @property
    def m(self) -> int:  # images per denoiser tile
        return self.fv.micro_batch

    def samples(self, g: int) -> range:
        """The sample indices k of tile g (the last tile may be cut short by K)."""
        return range(g * self.m, min((g + 1) * self.m, self.K))


def plan(fv) -> Plan:
    """Validate the flags, load the detector, recogniser and Arc2Face, and refuse an
    --out_dir whose images were made with other settings. Writes nothing."""

    from bridges import arc2face, faces

    inputs = validate(fv)
    refs = inputs["references"]
    n, d = refs.shape
    threads = set_threads(fv.threads)
    detector = faces.load_detector(fv.detector, threshold=fv.det_threshold) if fv.align else None
    recognizer = faces.load_recognizer(fv.recognizer) if fv.recognizer else None
    if recognizer is not None and int(recognizer.output_shape[-1]) != d:
        raise InputError(f"recognizer {fv.recognizer} gives {recognizer.output_shape[-1]}-D "
                         f"features; the references are {d}-D")

    proc, device = resumable.open_processes(fv.device)
    dtype = arc2face.resolve_dtype(fv.dtype, device)
    model = arc2face.load(fv.arc2face, fv.base_model, device=device, dtype=dtype)
    identity = {k: getattr(fv, k) for k in PIXEL_FLAGS}
    # Model folders are not part of it (they may be mounted elsewhere on another node);
    # their paths are in report.json.
    identity.update(references_sha256=integrity.sha256_file(fv.references), n=n, d=d,
                    dtype=str(dtype).removeprefix("torch."), image_size=model.image_size,
                    device_type=device.type)
    resumable.check_same_settings(Path(fv.out_dir) / "generation.json", identity)
    return Plan(fv, refs, inputs["start"], inputs["end"], proc, device, dtype, threads,
                model, detector, recognizer, identity)


def prepare_out_dir(p: Plan, log) -> None:
    """The main process creates --out_dir, records generation.json and deletes the
    temporary files a killed run left in this run's identities; the others wait."""
    if p.proc.is_main:
        p.out.mkdir(parents=True, exist_ok=True)
        save_json(p.out / "generation.json", p.identity)
        removed = resumable.remove_stale_temporaries(
            base / f"{i:06d}" for i in range(p.start, p.end)
            for base in (p.out, p.out / NO_FACE_DIR, p.out / UNALIGNED_DIR))
        if removed:
            log(f"removed {removed} temporary files left by an interrupted run")
    p.proc.barrier()


@dataclasses.dataclass
class Work:
    """This process's share: its tiles, those with an image still to draw, and counts."""
    mine: list[tuple[int, int]]  # (identity, tile) this process owns
    pending: list[tuple[int, int]]  # the tiles of `mine` with an image missing
    todo: int  # images to draw
    skipped: int  # images of `mine` already done


def resume(p: Plan, log) -> Work:
    """Delete the damaged images of this process's tiles (checked against the sha256 of
    manifest.jsonl, or by decoding) and list what is left to draw."""
    G = math.ceil(p.K / p.m)
    mine = [(i, g) for i in range(p.start, p.end) for g in range(G)
            if resumable.tile_owner(i * G + g, p.proc.count) == p.proc.index]
    damaged = remove_damaged_images(p.out, mine, p.K, p.m, manifest_checksums(p.out))
    if damaged:
        log(f"redrawing {len(damaged)} damaged images (checksum or decoding failed; first: "
            f"{damaged[0]})")
    missing = {(i, g): sum(not is_done(p.out, i, k) for k in p.samples(g)) for i, g in mine}
    todo = sum(missing.values())
    return Work(mine, [tile for tile in mine if missing[tile]], todo,
                sum(len(p.samples(g)) for _, g in mine) - todo)


def log_start(p: Plan, work: Work, log) -> None:
    log(f"process {p.proc.index}/{p.proc.count} on {p.device} ({p.dtype}, {p.threads} "
        f"threads): identities {p.start}:{p.end} of {p.refs.shape[0]}, {p.K} images each, "
        f"{work.todo} to generate, {work.skipped} already done, micro batch {p.m}")


def run_loop(p: Plan, work: Work, log) -> Drawn:
    """Draw the pending tiles and store each of their images not on disk yet (stopped by
    Ctrl-C or SIGTERM with every stored image kept: resumable.draw_tiles)."""
    return resumable.draw_tiles(work.pending, lambda tile, drawn: draw_tile(p, *tile, drawn),
                                total=work.todo, progress=p.fv.progress and p.proc.is_main,
                                log=log)


def draw_tile(p: Plan, i: int, g: int, drawn: Drawn) -> None:
    """Draw tile (i, g) and store its images that are not done yet, counting into `drawn`."""
    from bridges import arc2face

    fv = p.fv
    rgb, _, _ = arc2face.tile_images(p.model, p.refs, i, g, micro_batch=p.m, seed=fv.seed,
                                     beta=fv.beta, steps=fv.steps, guidance=fv.guidance)
    for j, k in enumerate(p.samples(g)):
        if is_done(p.out, i, k):
            continue
        digest = _store(p.out, i, k, rgb[j], p.detector, keep_unaligned=fv.keep_unaligned)
        drawn.written += 1
        drawn.no_face += digest is None
        if digest is not None:
            drawn.checksums.append(((i, k), digest))


@dataclasses.dataclass
class Gathered:
    """Every process's results, on every process."""
    counts: list[dict]  # per process: written, no_face, skipped_existing, seconds
    identity_cos: list[dict]  # {identity, k, cos} of every image checked (--recognizer)
    checksums: dict[tuple[int, int], str]  # sha256 of the images written by this run


def gather(p: Plan, work: Work, drawn: Drawn) -> Gathered:
    """Run the identity check over every image of this process's tiles (new and earlier
    ones) and collect all processes' results; every process calls it."""
    identity_cos = []
    if p.recognizer is not None:
        identity_cos = _identity_check(p.recognizer, p.refs, p.out, work.mine, p.K, p.m)
    identity_cos = p.proc.gather(identity_cos)
    counts, checksums = resumable.gather_counts(p.proc, drawn, work.skipped)
    return Gathered(counts, identity_cos, checksums)


def run(fv, *, log=None) -> dict:
    """Draw (or resume) this process's share of the images; the main process then writes
    manifest.jsonl and the report. Returns the report (main process) or {}."""
    started = time.time()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    p = plan(fv)
    try:
        prepare_out_dir(p, log)  # inputs are valid: from here on, files are written
        work = resume(p, log)
        resumable.log_resume(p.out, work.skipped, work.todo, p.proc, log)
        log_start(p, work, log)
        drawn = run_loop(p, work, log)
        results = gather(p, work, drawn)
        return finish(p, results, started, log) if p.proc.is_main else {}
    finally:
        p.proc.close()


def finish(p: Plan, results: Gathered, started: float, log) -> dict:
    """Rewrite manifest.jsonl, write the report (and histogram); returns the report."""
    manifest = write_manifest(p.out, p.refs, p.fv.seed, p.fv.beta,
                              written=results.checksums)
    report = make_report(p, results, manifest, started)
    write_outputs(p, report, results.identity_cos)
    log(f"done: {report['written_this_run']} images written, {report['images_in_range']} of "
        f"{report['expected_images']} in identities {p.start}:{p.end} -> {p.out}")
    return report


def make_report(p: Plan, results: Gathered, manifest: list[dict], started: float) -> dict:
    """report.json: counts and speed of every process, the Eq. 3 cosines of the run's
    identities (from the manifest), the identity check, settings and versions."""
    import torch

    fv, counts = p.fv, results.counts
    n, d = p.refs.shape
    in_range = [r for r in manifest if p.start <= r["identity"] < p.end and r["k"] < p.K]
    cos_ref = np.array([r["cos_to_reference"] for r in in_range], np.float64)
    written_total = sum(c["written"] for c in counts)
    return {
        "identities": [p.start, p.end],
        "n": n, "d": d,
        "images_per_identity": p.K,
        "images_in_range": len(in_range),
        "expected_images": (p.end - p.start) * p.K,
        "no_face": _no_face_list(p.out, p.start, p.end, p.K),
        "written_this_run": written_total,
        "skipped_existing": sum(c["skipped_existing"] for c in counts),
        "processes": p.proc.count,
        "per_process": counts,
        "images_per_second": resumable.speed(counts),
        "wall_seconds": round(time.time() - started, 3),
        "eq3_cos_to_reference": _summary(cos_ref),
        "identity_check": _identity_summary(results.identity_cos, fv.recognizer),
        "generation": p.identity,
        "flags": dict(sorted(dataclasses.asdict(fv).items())),
        "device": str(p.device),
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
    }


def write_outputs(p: Plan, report: dict, identity_cos: list[dict]) -> None:
    """report.json and identity_cos.png, suffixed .START-END for a part of the identities."""
    whole = (p.start, p.end) == (0, p.refs.shape[0])
    part = "" if whole else f".{p.start}-{p.end}"
    save_json(p.out / f"report{part}.json", report)
    if identity_cos:
        _histogram(identity_cos, p.out / f"identity_cos{part}.png")


def _store(out: Path, i: int, k: int, rgb: np.ndarray, detector, *,
           keep_unaligned) -> str | None:
    """Write image (i, k); with a detector, its aligned face. Returns the sha256 of the
    dataset image, or None when no face was found (the image then goes to _no_face/ so
    the run never silently drops it)."""
    if detector is None:
        return write_png(image_path(out, i, k), rgb)
    from bridges import faces

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    aligned = faces.align_largest(detector, bgr)
    if keep_unaligned:
        write_png(out / UNALIGNED_DIR / f"{i:06d}" / f"{k:03d}.png", rgb)
    if aligned is None:
        write_png(no_face_path(out, i, k), rgb)
        return None
    return write_png(image_path(out, i, k), np.ascontiguousarray(aligned[:, :, ::-1]))


def _identity_check(recognizer, refs, out: Path, tiles, K: int, m: int) -> list[dict]:
    import cv2

    from bridges import faces

    rows = []
    batch: list[tuple[int, int, np.ndarray]] = []

    def flush():
        if not batch:
            return
        f = faces.features(recognizer, [b[2] for b in batch])
        for (i, k, _), v in zip(batch, f, strict=True):
            rows.append({"identity": i, "k": k, "cos": float(v @ refs[i])})
        batch.clear()

    for i, g in tiles:
        for k in range(g * m, min((g + 1) * m, K)):
            p = image_path(out, i, k)
            if p.exists():
                batch.append((i, k, cv2.imread(str(p), cv2.IMREAD_COLOR)))
                if len(batch) == 64:
                    flush()
    flush()
    return rows


def write_manifest(out: Path, refs: np.ndarray, seed: int, beta: float, *,
                   written: dict[tuple[int, int], str] | None = None) -> list[dict]:
    """Rewrite manifest.jsonl from the images on disk (every identity folder, sorted): the
    same file whoever writes it, however the images were split or resumed.

    Each record carries the image's sha256, which the next run checks: the checksum taken
    when this run wrote it (`written`), else the one the previous manifest recorded (its
    owner verifies it on resume), else that of a file which decodes completely; an image
    that does not decode is left out (its owner's next run redraws it)."""
    from bridges import arc2face

    written = written or {}
    previous = manifest_checksums(out)
    records = []
    folders = sorted(p for p in out.iterdir() if p.is_dir() and IDENTITY_DIR.match(p.name))
    for folder in folders:
        i = int(folder.name)
        if i >= refs.shape[0]:
            continue
        ks = sorted(int(mt.group(1)) for p in folder.iterdir()
                    if (mt := IMAGE_NAME.match(p.name)))
        for k in ks:
            digest = written.get((i, k)) or previous.get((i, k))
            if digest is None:
                path = image_path(out, i, k)
                if not png_decodes(path):
                    continue
                digest = integrity.sha256_file(path)
            es, ls = arc2face.image_seeds(seed, i, k)
            e = arc2face.perturbed_embedding(refs[i], beta, es)
            records.append({"identity": i, "k": k, "path": f"{i:06d}/{k:03d}.png",
                            "sha256": digest, "embedding_seed": es, "latent_seed": ls,
                            "cos_to_reference": round(float(e.astype(np.float64) @ refs[i]), 7)})
    return resumable.write_manifest(out / "manifest.jsonl", records)


def _no_face_list(out: Path, start: int, end: int, K: int) -> list[str]:
    base = out / NO_FACE_DIR
    if not base.is_dir():
        return []
    return [f"{NO_FACE_DIR}/{i:06d}/{k:03d}.png" for i in range(start, end) for k in range(K)
            if no_face_path(out, i, k).exists()]


def _summary(x: np.ndarray) -> dict | None:
    if x.size == 0:
        return None
    return {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max()),
            "std": float(x.std()), "count": int(x.size)}


def _identity_summary(rows: list[dict], recognizer: str) -> dict | None:
    if not recognizer:
        return None
    cos = np.array([r["cos"] for r in rows], np.float64)
    if cos.size == 0:
        return {"recognizer": recognizer, "count": 0}
    rows = sorted(rows, key=lambda r: (r["identity"], r["k"]))
    return {"recognizer": recognizer, "count": int(cos.size), "mean": float(cos.mean()),
            "q05": float(np.quantile(cos, 0.05)), "share_below_0.3": float((cos < 0.3).mean()),
            "min": float(cos.min()),
            "lowest": [{"identity": r["identity"], "k": r["k"], "cos": r["cos"]}
                       for r in sorted(rows, key=lambda r: r["cos"])[:10]]}


def _histogram(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cos = np.array([r["cos"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(cos, bins=50, color="tab:blue")
    ax.axvline(0.3, color="tab:red", ls="--", label="0.3")
    ax.axvline(float(np.quantile(cos, 0.05)), color="tab:orange", ls=":", label="5 % quantile")
    ax.set_xlabel("cos(ArcFace(image), x_i)")
    ax.set_ylabel("images")
    ax.set_title(f"identity check: {cos.size} images, mean {cos.mean():.3f}")
    ax.legend()
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def _versions() -> dict:
    import diffusers
    import torch
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


def main(argv: list[str] | None = None) -> int:
    require_torch_extra("bridges.generate")
    return cli.run_main(argv, GenerateConfig, run)


if __name__ == "__main__":
    cli.exit_process(main())
