"""`python -m bridges.embed`: face images in, a gallery of unit ArcFace embeddings out.

    python -m bridges.embed --images=faces/ --recognizer=w600k_r50.onnx \
        --detector=det_10g.onnx --out=runs/gallery.npy
    python -m bridges.embed --images=crops/ --recognizer=arcface.onnx --aligned --flip \
        --out=runs/gallery.npy

Reads every .jpg/.jpeg/.png under --images (recursively, sorted by path). When identity
sub-folders hold images, they are the samples: images loose at the root are not (e.g. the
`identity_cos.png` that `bridges.generate` writes beside its identity folders); they are
listed in the sidecar as "ignored". With --detector
the largest face of each image is aligned to 112 x 112 with the ArcFace 5-point template;
with --aligned the inputs must already be 112 x 112 crops. --flip averages each feature
with its mirror image's. Writes --out (float32 (rows, d), unit rows), `<out stem>_labels.npy`
(int64, one label per row: the identity is the image's folder relative to --images, labels
index the sorted folder names; images directly in --images share the identity ".") and a
sidecar `<out stem>.json` listing the source file of every row ("rows", relative to
"images"), the identity folder of every label ("identities") and separately every file
that was skipped and why (unreadable, no face, wrong size), with their numbers ("counts"):
nothing is dropped silently.
`hyperface_jax.analyze --embeddings=<out> --labels=<out stem>_labels.npy` reads them.
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from bridges import require_path, require_torch_extra
from hyperface_jax import cli
from hyperface_jax.io.files import InputError, atomic_write, save_embeddings, save_json
from hyperface_jax.options import option

EXTENSIONS = {".jpg", ".jpeg", ".png"}


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    HELP_ORDER = ("inputs", "models", "run")

    images: str = option("", "Folder of face images (.jpg/.jpeg/.png, recursive).", group="inputs")
    recognizer: str = option("", "ArcFace ONNX model (insightface model zoo), e.g. "
                             "w600k_r50.onnx or Arc2Face's arcface.onnx.", group="models")
    detector: str = option("", "Face detector that aligns the largest face of each image: mtcnn "
                           "(the paper's aligner; weights from the facenet-pytorch wheel) or an "
                           "insightface SCRFD model (.onnx).", group="models")
    aligned: bool = option(False, "Inputs are already aligned 112 x 112 crops (no detector).",
                           group="inputs")
    flip: bool = option(False, "Average each feature with its mirror image's.", group="models")
    det_threshold: float | None = option(None, "Detection score threshold; default: 0.5 for "
                                         "SCRFD, 0.7 (its published final-stage threshold) "
                                         "for MTCNN.", group="models", low=0, high=1)
    batch_size: int = option(64, "Faces per recognizer call.", group="run", low=1)
    out: str = option("", "Output embeddings (.npy); the labels go to <stem>_labels.npy, the "
                      "listing to <stem>.json.", group="run", role="output_file")
    progress: bool = option(True, "Show a progress bar.", group="run")


def find_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(samples, ignored), sorted by path: every image under `folder`, except that when
    identity sub-folders hold images, those alone are samples and the images at the root
    are ignored (a dataset's own files, such as bridges.generate's identity_cos.png)."""
    images = sorted(p for p in folder.rglob("*")
                    if p.is_file() and p.suffix.lower() in EXTENSIONS)
    in_folders = [p for p in images if p.parent != folder]
    if not in_folders:
        return images, []
    return in_folders, [p for p in images if p.parent == folder]


def labels_path(out: Path) -> Path:
    return out.with_name(out.stem + "_labels.npy")


def folder_labels(rows: list[str]) -> tuple[np.ndarray, list[str]]:
    """(int64 label per row, identity folder per label): a row's identity is its folder."""
    folders = [Path(r).parent.as_posix() for r in rows]
    identities = sorted(set(folders))
    index = {name: k for k, name in enumerate(identities)}
    return np.asarray([index[f] for f in folders], np.int64), identities


def skip_counts(images: int, embedded: int, skipped: list[dict]) -> dict:
    """{"images", "embedded", and per reason the skipped files ("no face", "unreadable",
    "not 112x112 (...)" counted as "wrong size")}."""
    counts = {"images": images, "embedded": embedded, "no_face": 0, "unreadable": 0,
              "wrong_size": 0}
    for s in skipped:
        reason = s["reason"]
        counts["no_face" if reason == "no face" else "unreadable" if reason == "unreadable"
               else "wrong_size"] += 1
    return counts


def run(fv, *, log=None) -> dict:
    import cv2
    from tqdm import tqdm

    from bridges import faces

    log = log or (lambda msg: print(msg, file=sys.stderr))
    started = time.time()
    if not fv.images:
        raise InputError("--images is required")
    if not fv.recognizer:
        raise InputError("--recognizer is required")
    if not fv.out:
        raise InputError("--out is required")
    out = Path(fv.out)
    if out.suffix != ".npy":
        raise InputError(f"--out={out} must end with .npy")
    if bool(fv.detector) == bool(fv.aligned):
        raise InputError("give exactly one of --detector (mtcnn or an SCRFD .onnx) and "
                         "--aligned")
    folder = require_path(fv.images, "--images folder", "folder")
    paths, ignored = find_images(folder)
    if not paths:
        raise InputError(f"--images folder {folder} holds no .jpg/.jpeg/.png files")
    recognizer = faces.load_recognizer(fv.recognizer)
    detector = faces.load_detector(fv.detector, threshold=fv.det_threshold) \
        if fv.detector else None

    rows: list[str] = []
    skipped: list[dict] = []
    features: list[np.ndarray] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush():
        if batch:
            features.append(faces.features(recognizer, [b[1] for b in batch], flip=fv.flip))
            rows.extend(b[0] for b in batch)
            batch.clear()

    for path in tqdm(paths, unit="img", disable=not fv.progress, file=sys.stderr,
                     dynamic_ncols=True):
        name = str(path.relative_to(folder))
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            skipped.append({"path": name, "reason": "unreadable"})
            continue
        if detector is not None:
            face = faces.align_largest(detector, image)
            if face is None:
                skipped.append({"path": name, "reason": "no face"})
                continue
        else:
            if image.shape[:2] != (faces.ALIGNED_SIZE, faces.ALIGNED_SIZE):
                skipped.append({"path": name, "reason": f"not {faces.ALIGNED_SIZE}x"
                                f"{faces.ALIGNED_SIZE} ({image.shape[1]}x{image.shape[0]})"})
                continue
            face = image
        batch.append((name, face))
        if len(batch) >= fv.batch_size:
            flush()
    flush()
    if not rows:
        raise InputError(f"no face could be embedded from the {len(paths)} images in {folder} "
                         f"(first skipped: {skipped[0]['path']}: {skipped[0]['reason']})")
    gallery = np.concatenate(features)
    unit = np.isfinite(gallery).all(axis=1) & (np.abs(np.linalg.norm(gallery, axis=1) - 1)
                                               < 1e-3)
    if not unit.all():
        raise InputError(f"the recognizer gives a zero or non-finite feature for "
                         f"{rows[int(np.argmin(unit))]}; nothing written")
    labels, identities = folder_labels(rows)
    listing = {
        "images": str(folder), "recognizer": fv.recognizer,
        "detector": fv.detector or None, "aligned": bool(fv.aligned), "flip": bool(fv.flip),
        "rows": rows, "labels": labels_path(out).name, "identities": identities,
        "skipped": skipped, "ignored": [str(p.relative_to(folder)) for p in ignored],
        "count": len(rows), "dim": int(gallery.shape[1]),
        "counts": skip_counts(len(paths), len(rows), skipped),
        "seconds": round(time.time() - started, 3),
    }
    save_embeddings(out, gallery)
    atomic_write(labels_path(out), lambda f: np.save(f, labels, allow_pickle=False))
    save_json(out.with_suffix(".json"), listing)
    counts = listing["counts"]
    log(f"{len(rows)} embeddings ({gallery.shape[1]}-D) of {len(identities)} identities -> "
        f"{out}, labels {labels_path(out).name}; {len(skipped)} files skipped ("
        f"{counts['no_face']} without a face, {counts['unreadable']} unreadable, "
        f"{counts['wrong_size']} of the wrong size; listed in {out.with_suffix('.json')})"
        + (f"; {len(ignored)} images at the root ignored (not in an identity folder)"
           if ignored else ""))
    return listing


def main(argv: list[str] | None = None) -> int:
    require_torch_extra("bridges.embed")
    return cli.run_main(argv, EmbedConfig, run)


if __name__ == "__main__":
    cli.exit_process(main())
