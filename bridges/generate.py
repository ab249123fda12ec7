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

import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags

from bridges import require_torch_extra, set_threads
from hyperface_jax import cli, integrity, runs
from hyperface_jax.files import (
    InputError,
    atomic_write,
    load_embeddings,
    save_figure,
    save_json,
)

NO_FACE_DIR = "_no_face"
UNALIGNED_DIR = "_unaligned"
IMAGE_NAME = re.compile(r"^(\d{3,})\.png$")
IDENTITY_DIR = re.compile(r"^\d{6,}$")
# Flags whose change alters the pixels of an image (i, k): recorded in generation.json.
PIXEL_FLAGS = ("seed", "beta", "steps", "guidance", "micro_batch", "align")


def define_flags(fv: flags.FlagValues) -> None:
    d = dict(flag_values=fv)
    flags.DEFINE_string("references", "", "Reference embeddings (.npy, (n, 512), unit rows), "
                        "e.g. the embeddings.npy of hyperface_jax.pack.", **d)
    flags.DEFINE_string("arc2face", "", "Arc2Face weights folder: arc2face/ (UNet) and "
                        "encoder/ (CLIP text encoder).", **d)
    flags.DEFINE_string("base_model", "", "Stable Diffusion 1.5 folder for tokenizer/, vae/ "
                        "and scheduler/.", **d)
    flags.DEFINE_string("out_dir", "", "Dataset folder: <i:06d>/<k:03d>.png, manifest.jsonl, "
                        "report.json. Re-running on it resumes.", **d)
    flags.DEFINE_integer("images_per_identity", 64, "Images per identity (paper: 50 in the "
                         "main table, 64 by default here).", lower_bound=1, **d)
    flags.DEFINE_float("beta", 0.005, "Eq. 3 noise scale: e = normalize(x + beta * eps).",
                       lower_bound=0.0, **d)
    flags.DEFINE_integer("steps", 25, "DPM-Solver steps.", lower_bound=1, **d)
    flags.DEFINE_float("guidance", 3.0, "Classifier-free guidance scale (<= 1: none).",
                       lower_bound=0.0, **d)
    flags.DEFINE_integer("seed", 0, "Seed; image (i, k) is a function of (seed, i, k).",
                         lower_bound=0, **d)
    flags.DEFINE_string("identities", "", "START:END (half-open) range of identities to "
                        "generate, e.g. for SLURM job arrays; empty: all.", **d)
    flags.DEFINE_integer("batch_size", 8, "Images per step (whole tiles of --micro_batch): "
                         "write and progress granularity. Does not change any pixel.",
                         lower_bound=1, **d)
    flags.DEFINE_integer("micro_batch", 8, "Images the denoiser computes together: always "
                         "the tile (i, k // micro_batch). Part of the result's identity; "
                         "pick a divisor of --images_per_identity to waste nothing.",
                         lower_bound=1, **d)
    flags.DEFINE_enum("dtype", "auto", ["auto", "float16", "bfloat16", "float32"],
                      "Model dtype; auto: float16 on CUDA, float32 on CPU.", **d)
    flags.DEFINE_string("device", "", "torch device; empty: the process's accelerate device "
                        "(cuda:<local rank> when GPUs exist, else cpu).", **d)
    flags.DEFINE_integer("threads", 0, "torch CPU threads; 0: picked from the machine "
                         "(free cores: the cores this process may use minus the load "
                         "average, shared among local processes). Bits are reproducible at "
                         "a fixed thread count.", lower_bound=0, **d)
    flags.DEFINE_bool("align", False, "Detect the largest face of each image and store it "
                      "aligned to 112 x 112 (ArcFace 5-point template); needs --detector.", **d)
    flags.DEFINE_string("detector", "", "insightface SCRFD detection model (.onnx) for "
                        "--align, e.g. det_10g.onnx of the antelopev2/buffalo_l packs.", **d)
    flags.DEFINE_float("det_threshold", 0.5, "Detection score threshold for --align.", **d)
    flags.DEFINE_bool("keep_unaligned", False, "With --align, also keep the full image in "
                      f"<out_dir>/{UNALIGNED_DIR}/<i>/<k>.png.", **d)
    flags.DEFINE_string("recognizer", "", "ArcFace ONNX model: embed every image of the run's "
                        "identities and report its cosine to x_i (report.json, "
                        "identity_cos.png).", **d)
    flags.DEFINE_bool("progress", True, "Show a progress bar (main process).", **d)


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


def write_png(path: Path, rgb: np.ndarray) -> str:
    """Write an RGB uint8 image atomically (temporary name in the folder, then rename);
    returns the sha256 of the file's bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def png_decodes(path: Path) -> bool:
    """The file is a PNG that decodes completely (a truncated or garbled stream fails)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return im.format == "PNG"
    except Exception:  # noqa: BLE001 - any failure means the file is damaged
        return False


def read_manifest_checksums(out: Path) -> dict[tuple[int, int], str]:
    """{(identity, k): sha256} of manifest.jsonl; unreadable lines are skipped (their
    images are then checked by decoding)."""
    path = out / "manifest.jsonl"
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            r = json.loads(line)
            key, digest = (int(r["identity"]), int(r["k"])), r["sha256"]
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
            sums[key] = digest
    return sums


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
            damaged = False
            if image.exists():
                expected = checksums.get((i, k))
                damaged = (integrity.sha256_file(image) != expected if expected
                           else not png_decodes(image))
            for extra in (no_face, unaligned):
                damaged = damaged or (extra.exists() and not png_decodes(extra))
            if damaged:
                for p in (image, no_face, unaligned):
                    if p.exists():
                        p.unlink()
                        removed.append(p)
    return removed


def remove_stale_temporaries(out: Path, identities: range) -> int:
    """Delete temporary files a killed run left in the identity folders it owned."""
    removed = 0
    for i in identities:
        for folder in (out / f"{i:06d}", out / NO_FACE_DIR / f"{i:06d}",
                       out / UNALIGNED_DIR / f"{i:06d}"):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    p.unlink(missing_ok=True)
                    removed += 1
    return removed


def check_same_generation(out: Path, identity: dict) -> None:
    before = runs.read_identity(out / "generation.json")
    if before is not None:
        runs.check_identity(before, identity, out, "images made with other settings")


def tile_owner(i: int, tile: int, tiles_per_identity: int, processes: int) -> int:
    """The process that generates tile (i, tile): a function of the tile alone, so every
    process agrees without communicating, whatever exists on disk."""
    return (i * tiles_per_identity + tile) % processes


class _Process:
    """Rank, size and barrier: accelerate's PartialState, or a single process."""

    def __init__(self, cpu: bool):
        from accelerate import PartialState

        # cpu=True makes a multi-process launch on a machine without GPUs a MULTI_CPU
        # (gloo) group instead of independent single processes.
        self.state = PartialState(cpu=cpu)
        self.index = self.state.process_index
        self.count = self.state.num_processes
        self.is_main = self.state.is_main_process

    def barrier(self):
        if self.count > 1:
            self.state.wait_for_everyone()

    def gather(self, items: list) -> list:
        if self.count == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)


# ----------------------------------------------------------------------------- the run

def validate(fv) -> dict:
    """Check every input that can be checked before loading models; InputError if bad."""
    for name in ("references", "arc2face", "base_model", "out_dir"):
        if not fv[name].value:
            raise InputError(f"--{name} is required")
    from bridges.arc2face import ARCFACE_DIM, check_layout

    refs = load_embeddings(fv.references, "references")
    if refs.shape[1] != ARCFACE_DIM:
        raise InputError(f"references file {fv.references} has dimension {refs.shape[1]}; "
                         f"Arc2Face takes {ARCFACE_DIM}-D ArcFace embeddings")
    start, end = parse_identities(fv.identities, refs.shape[0])
    check_layout(fv.arc2face, fv.base_model)
    if fv.align and not fv.detector:
        raise InputError("--align needs --detector=<SCRFD .onnx>")
    if fv.keep_unaligned and not fv.align:
        raise InputError("--keep_unaligned only makes sense with --align")
    return {"references": refs, "start": start, "end": end}


def run(fv, *, log=None) -> dict:
    import torch
    from tqdm import tqdm

    from bridges import arc2face, faces

    started = time.time()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    inputs = validate(fv)
    refs, start, end = inputs["references"], inputs["start"], inputs["end"]
    n, d = refs.shape
    K, m = fv.images_per_identity, fv.micro_batch
    G = math.ceil(K / m)
    out = Path(fv.out_dir)

    threads = set_threads(fv.threads)
    detector = faces.load_detector(fv.detector, threshold=fv.det_threshold) if fv.align else None
    recognizer = faces.load_recognizer(fv.recognizer) if fv.recognizer else None
    if recognizer is not None and int(recognizer.output_shape[-1]) != d:
        raise InputError(f"recognizer {fv.recognizer} gives {recognizer.output_shape[-1]}-D "
                         f"features; the references are {d}-D")

    proc = _Process(cpu=fv.device == "cpu" or not torch.cuda.is_available())
    device = torch.device(fv.device) if fv.device else proc.state.device
    dtype = arc2face.resolve_dtype(fv.dtype, device)
    if device.type == "cuda":
        # Same algorithms on every run (no autotuning race), so the same bits on one GPU.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    model = arc2face.load(fv.arc2face, fv.base_model, device=device, dtype=dtype)
    identity = {k: fv[k].value for k in PIXEL_FLAGS}
    # Model folders are not part of it (they may be mounted elsewhere on another node);
    # their paths are in report.json.
    identity.update(references_sha256=integrity.sha256_file(fv.references), n=n, d=d,
                    dtype=str(dtype).removeprefix("torch."), image_size=model.image_size,
                    device_type=device.type)
    check_same_generation(out, identity)

    # Inputs are valid: from here on, files are written.
    if proc.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "generation.json", identity)
        removed = remove_stale_temporaries(out, range(start, end))
        if removed:
            log(f"removed {removed} temporary files left by an interrupted run")
    proc.barrier()

    mine = [(i, g) for i in range(start, end) for g in range(G)
            if tile_owner(i, g, G, proc.count) == proc.index]
    damaged = remove_damaged_images(out, mine, K, m, read_manifest_checksums(out))
    if damaged:
        log(f"redrawing {len(damaged)} damaged images (checksum or decoding failed; first: "
            f"{damaged[0]})")
    pending = [(i, g) for i, g in mine
               if any(not is_done(out, i, k) for k in range(g * m, min((g + 1) * m, K)))]
    todo = sum(1 for i, g in pending for k in range(g * m, min((g + 1) * m, K))
               if not is_done(out, i, k))
    skipped = sum(min((g + 1) * m, K) - g * m for i, g in mine) - todo
    log(f"process {proc.index}/{proc.count} on {device} ({dtype}, {threads} threads): "
        f"identities {start}:{end} "
        f"of {n}, {K} images each, {todo} to generate, {skipped} already done, "
        f"micro batch {m}")

    tiles_per_step = max(1, math.ceil(fv.batch_size / m))
    bar = tqdm(total=todo, unit="img", disable=not (fv.progress and proc.is_main),
               dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
    written, no_face, generated_seconds = 0, 0, 0.0
    checksums: list[tuple[int, int, str]] = []  # (i, k, sha256) of the images written
    t0 = time.perf_counter()
    try:
        with cli.sigterm_as_interrupt():  # SLURM's time limit or `kill` ends it like Ctrl-C
            for s in range(0, len(pending), tiles_per_step):
                for i, g in pending[s:s + tiles_per_step]:
                    rgb, _, _ = arc2face.tile_images(
                        model, refs, i, g, micro_batch=m, seed=fv.seed, beta=fv.beta,
                        steps=fv.steps, guidance=fv.guidance)
                    for j, k in enumerate(range(g * m, (g + 1) * m)):
                        if k >= K or is_done(out, i, k):
                            continue
                        digest = _store(out, i, k, rgb[j], detector,
                                        keep_unaligned=fv.keep_unaligned)
                        written += 1
                        no_face += digest is None
                        if digest is not None:
                            checksums.append((i, k, digest))
                        bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        log(f"interrupted after {written} images; re-run the same command to continue")
        raise
    bar.close()
    generated_seconds = time.perf_counter() - t0

    # Identity check over every image of this process's tiles (new and earlier ones).
    identity_cos = []
    if recognizer is not None:
        identity_cos = _identity_check(recognizer, refs, out, mine, K, m)
    counts = proc.gather([{"process": proc.index, "written": written, "no_face": no_face,
                           "skipped_existing": skipped, "seconds": round(generated_seconds, 3)}])
    identity_cos = proc.gather(identity_cos)
    checksums = proc.gather(checksums)
    proc.barrier()
    if not proc.is_main:
        return {}

    manifest = write_manifest(out, refs, fv.seed, fv.beta,
                              written={(i, k): h for i, k, h in checksums})
    in_range = [r for r in manifest if start <= r["identity"] < end and r["k"] < K]
    cos_ref = np.array([r["cos_to_reference"] for r in in_range], np.float64)
    written_total = sum(c["written"] for c in counts)
    seconds = max(c["seconds"] for c in counts)
    report = {
        "identities": [start, end],
        "n": n, "d": d,
        "images_per_identity": K,
        "images_in_range": len(in_range),
        "expected_images": (end - start) * K,
        "no_face": _no_face_list(out, start, end, K),
        "written_this_run": written_total,
        "skipped_existing": sum(c["skipped_existing"] for c in counts),
        "processes": proc.count,
        "per_process": counts,
        "images_per_second": round(written_total / seconds, 4) if seconds and written_total
        else None,
        "wall_seconds": round(time.time() - started, 3),
        "eq3_cos_to_reference": _summary(cos_ref),
        "identity_check": _identity_summary(identity_cos, fv.recognizer),
        "generation": identity,
        "flags": {name: fv[name].value for name in sorted(fv)},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
    }
    name = "report.json" if (start, end) == (0, n) else f"report.{start}-{end}.json"
    save_json(out / name, report)
    if identity_cos:
        _histogram(identity_cos, out / ("identity_cos.png" if (start, end) == (0, n)
                                        else f"identity_cos.{start}-{end}.png"))
    log(f"done: {written_total} images written, {len(in_range)} of {(end - start) * K} in "
        f"identities {start}:{end} -> {out}")
    return report




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
    previous = read_manifest_checksums(out)
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
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(out / "manifest.jsonl", lambda f: f.write(text.encode()))
    return records


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


def make_flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    define_flags(fv)
    return fv


def main(argv: list[str] | None = None) -> int:
    require_torch_extra("bridges.generate")
    return cli.run_main(argv, make_flag_values(), run)


if __name__ == "__main__":
    sys.exit(main())
