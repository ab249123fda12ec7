"""IJB-B / IJB-C template evaluation for `python -m bridges.evaluate --ijb=DIR`.

Reads the protocol files of the IJB release in the layout insightface's evaluation uses
(`DIR/meta/<t>_face_tid_mid.txt`: `image template media` per face crop;
`<t>_name_5pts_score.txt`: `image x1 y1 ... x5 y5 faceness` in the same order;
`<t>_template_pair_label.txt`: `template1 template2 label`; the crops in `DIR/loose_crop/`;
`<t>` is `ijbb` or `ijbc`) and, when present, the 1:N gallery and probe lists
(`<t>_1N_gallery_G1.csv`/`_G2.csv` for IJB-C, `_S1`/`_S2` for IJB-B, `<t>_1N_probe_mixed.csv`).

Features as insightface computes them: each crop is aligned to 112 x 112 by its five
landmarks (ArcFace template); its feature is the model's raw embedding of the crop plus
that of the mirrored crop; by default the norm is kept and the feature is weighted by the
detector's faceness score; a template's feature is the mean over the crops of each media
(a video's frames or one photo), summed over its media and normalised. Pairs are scored
by the cosine of their template features.

1:1 verification: TAR at FAR 1e-6 ... 1e-1 by `verification.tar_at_far` over all pairs.
1:N identification (open set, per gallery as NIST defines it): rank-k is the share of
mated probe templates (their subject is in the gallery) whose subject is among the k best
gallery subjects; TPIR at FPIR f is the share of mated probes whose subject ranks first
with a score above the threshold at which at most a share f of the non-mated probes' best
scores lies above it (the same threshold rule as TAR at FAR).

insightface-comparable figures (what published IJB tables report), beside ours: 1:1 TAR
at the ROC point nearest each target FAR (insightface's ijb_11.py), and 1:N on the two
galleries merged, every probe mated (insightface's ijb_1n.py; `insightface_identification`
states its rule).

GroupFace with `--group_similarity` (template form, ours: GroupFace defines S* for two
images only): a template's final feature is pooled as above; its intermediate feature is
each crop's GDN intermediate feature (crop + mirrored crop, L2-normalised) pooled the
same way (media means summed, faceness-weighted with --ijb_detector_score) and
normalised; two templates score S* = cos(final) + beta * D(intermediate) ** -gamma.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bridges import require_path
from hyperface_jax.io.files import InputError, atomic_write, save_figure, save_json
from hyperface_jax.options import option

TARGETS = ("IJBB", "IJBC")
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (0.01, 0.1)
RANKS = (1, 5)
INSIGHTFACE_RANKS = (1, 5, 10)  # ijb_1n.py prints top-1, top-5 and top-10
GALLERIES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}
ALIGNED = 112
TAR_RULE = ("threshold t = the (floor(FAR * impostors) + 1)-th highest impostor score; a pair "
            "is accepted when its score is strictly above t, so impostors and genuines tied "
            "with t are rejected and the achieved FAR is <= the target: t is the most lenient "
            "threshold with FAR <= target")


@dataclass(frozen=True)
class IJBOptions:
    """The --ijb options of bridges.evaluate."""
    ijb: str = option("", "IJB-B/IJB-C folder holding meta/ and loose_crop/ (or its parent "
                      "holding IJBB/ or IJBC/): template evaluation instead of --bins. See "
                      "docs/recognition.md for the layout.", group="ijb")
    ijb_target: str = option("IJBC", "Which IJB protocol: the meta file prefix ijbb_ or ijbc_.",
                             group="ijb", choices=TARGETS)
    ijb_feature_norm: bool = option(True, "Keep each crop's feature norm as its weight in the "
                                    "template (insightface's N1); false: normalise crop "
                                    "features first.", group="ijb")
    ijb_detector_score: bool = option(True, "Weight each crop's feature by the faceness score "
                                      "of <t>_name_5pts_score.txt (insightface's D1).",
                                      group="ijb")
    ijb_1n: bool = option(True, "1:N identification when the gallery and probe lists are in "
                          "meta/ (all of them or none).", group="ijb")
    ijb_read_threads: int = option(4, "Threads that decode and align crops.", group="ijb",
                                   low=1)


@dataclass(frozen=True)
class Protocol:
    """The 1:1 protocol of one IJB target: one row per face crop, one per template pair."""
    root: Path
    target: str
    names: tuple[str, ...]
    landmarks: np.ndarray   # (crops, 5, 2) float32, in loose-crop pixels
    faceness: np.ndarray    # (crops,) float64
    templates: np.ndarray   # (crops,) int64
    medias: np.ndarray      # (crops,) int64
    pairs: np.ndarray       # (pairs, 2) int64 template ids
    labels: np.ndarray      # (pairs,) bool, True: same subject

    @property
    def prefix(self) -> str:
        return self.target.lower()


# ----------------------------------------------------------------------------- reading

def find_root(spec: str, target: str) -> Path:
    root = Path(spec)
    if (root / "meta").is_dir():
        return root
    if (root / target / "meta").is_dir():
        return root / target
    raise InputError(f"--ijb={spec}: no meta/ folder in it nor in {root / target}")


def _table(path: Path, fields: int | None, what: str, *, sep=None) -> list[list[str]]:
    """Rows of a whitespace- (or `sep`-) separated file, checked for their field count."""
    require_path(path, f"IJB {what} file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"IJB {what} file {path} cannot be read ({e})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(sep) if sep else line.split()
        if fields is not None and len(parts) != fields:
            raise InputError(f"{path}:{number}: expected {fields} fields ({what}), "
                             f"got {len(parts)}: {line.strip()[:80]!r}")
        rows.append((number, [p.strip() for p in parts]))
    if not rows:
        raise InputError(f"IJB {what} file {path} is empty")
    return rows


def _integers(path: Path, number: int, values: list[str], what: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise InputError(f"{path}:{number}: {what} must be integers, got "
                         f"{' '.join(values)!r}") from None


def read_protocol(root: Path, target: str) -> Protocol:
    """The crop list, landmarks and template pairs, validated (see `check_crops`,
    `check_landmarks`, `check_pairs`); `InputError` naming the file and line of the first
    problem."""
    meta, prefix = root / "meta", target.lower()
    tid_path = meta / f"{prefix}_face_tid_mid.txt"
    pts_path = meta / f"{prefix}_name_5pts_score.txt"
    pair_path = meta / f"{prefix}_template_pair_label.txt"
    crops = _table(tid_path, 3, "image template media")
    points = _table(pts_path, 12, "image, 5 landmarks, faceness")
    require_path(pair_path, "IJB template1 template2 label file")
    if len(points) != len(crops):
        raise InputError(f"{pts_path} lists {len(points)} crops but {tid_path} lists "
                         f"{len(crops)}; they must list the same crops in the same order")
    names, ids = [], []
    for number, (name, t, m) in crops:
        names.append(name)
        ids.append(_integers(tid_path, number, [t, m], "template and media ids"))
    check_crops(names, [number for number, _ in crops], tid_path)
    values = []
    for k, (number, row) in enumerate(points):
        if row[0] != names[k]:
            raise InputError(f"{pts_path}:{number}: crop {row[0]!r} where {tid_path.name} "
                             f"has {names[k]!r}; the files must list the same crops in order")
        try:
            values.append([float(v) for v in row[1:]])
        except ValueError:
            raise InputError(f"{pts_path}:{number}: landmarks and score must be numbers") from None
    values = np.asarray(values, np.float64)
    landmarks, faceness = values[:, :10].reshape(-1, 5, 2), values[:, 10]
    check_landmarks(landmarks, faceness, [number for number, _ in points], pts_path)
    ids = np.asarray(ids, np.int64)
    pair_ids, labels = read_pairs(pair_path, np.unique(ids[:, 0]), tid_path.name)
    if labels.all() or not labels.any():
        kind = "impostor" if labels.all() else "genuine"
        raise InputError(f"{pair_path} has no {kind} pairs (label {int(not labels.all())})")
    images = root / "loose_crop"
    for k, name in enumerate(names):
        if not (images / name).is_file():  # the common case fast, the message exact
            try:
                require_path(images / name, "crop")
            except InputError as e:
                raise InputError(f"{e} ({tid_path.name} line {crops[k][0]})") from None
    return Protocol(root, target, tuple(names), landmarks.astype(np.float32), faceness,
                    ids[:, 0], ids[:, 1], np.asarray(pair_ids, np.int64), labels)


# Landmarks are pixel positions in a loose crop: beyond MAX_LANDMARK pixels (any photo's
# size) they are not positions; five points within MIN_LANDMARK_SPREAD pixels of their
# centre (RMS) leave the alignment's scale undefined.
MAX_LANDMARK = 1e5
MIN_LANDMARK_SPREAD = 1.0


def check_crops(names: list[str], lines: list[int], path: Path) -> None:
    """Each crop listed once, by a name inside loose_crop/ (no absolute path, no `..`)."""
    first: dict[str, int] = {}
    for name, number in zip(names, lines, strict=True):
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            raise InputError(f"{path}:{number}: crop name {name!r} leaves loose_crop/ "
                             "(an absolute path or '..'); names are relative to loose_crop/")
        if first.setdefault(name, number) != number:
            raise InputError(f"{path}:{number}: crop {name!r} is listed again (first at "
                             f"line {first[name]}); each crop belongs to one template once")


def check_landmarks(landmarks: np.ndarray, faceness: np.ndarray, lines: list[int],
                    path: Path) -> None:
    """Five finite landmarks within MAX_LANDMARK pixels that do not (nearly) coincide, and
    a faceness score in [0, 1] (a detector's probability; it weights the crop)."""
    spread = np.sqrt(((landmarks - landmarks.mean(axis=1, keepdims=True)) ** 2)
                     .sum(axis=2).mean(axis=1))
    checks = [
        (np.isfinite(landmarks).all(axis=(1, 2)) & (np.abs(landmarks) <= MAX_LANDMARK)
         .all(axis=(1, 2)), f"landmarks must be finite pixel positions within "
                            f"{MAX_LANDMARK:g} of the crop's corner"),
        (spread >= MIN_LANDMARK_SPREAD, f"the five landmarks lie within "
                                        f"{MIN_LANDMARK_SPREAD:g} pixel of their centre "
                                        "(degenerate: no alignment)"),
        ((faceness >= 0) & (faceness <= 1), "the faceness score must be in [0, 1]"),
    ]
    for ok, problem in checks:
        if not ok.all():
            k = int(np.argmin(ok))
            shown = " ".join(f"{v:g}" for v in [*landmarks[k].ravel(), faceness[k]])
            raise InputError(f"{path}:{lines[k]}: {problem}, got {shown!r}")


def read_pairs(path: Path, known: np.ndarray, crop_list: str) -> tuple[np.ndarray, np.ndarray]:
    """((pairs, 2) template ids, (pairs,) bool labels) of a `t1 t2 label` file whose
    templates are all in `known` (sorted), checked by `check_pairs`. IJB-C lists 15.6 M
    pairs: NumPy's C reader reads a well-formed file; any problem is then located line by
    line for the message."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an empty file warns
            data = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
        fast = (data.shape[1] == 3 and len(data) > 0 and np.isin(data[:, 2], (0, 1)).all()
                and np.isin(data[:, :2], known).all())
    except (ValueError, UserWarning, OSError):
        fast = False
    if fast:
        pairs, labels = data[:, :2], data[:, 2] == 1
    else:
        pairs, labels = _read_pairs_by_line(path, known, crop_list)
    check_pairs(pairs, known, path)
    return pairs, labels


def _read_pairs_by_line(path: Path, known: np.ndarray, crop_list: str):
    pairs, labels, known_set = [], [], set(known.tolist())
    for number, row in _table(path, 3, "template1 template2 label"):
        t1, t2, label = _integers(path, number, row, "template ids and label")
        if label not in (0, 1):
            raise InputError(f"{path}:{number}: label must be 0 or 1, got {label}")
        for t in (t1, t2):
            if t not in known_set:
                raise InputError(f"{path}:{number}: template {t} has no crop in {crop_list}")
        pairs.append((t1, t2))
        labels.append(bool(label))
    return np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(labels, bool)


def check_pairs(pairs: np.ndarray, known: np.ndarray, path: Path) -> None:
    """No template paired with itself, no pair listed twice (in either order): a repeated
    pair would count twice in TAR and FAR. Vectorised (IJB-C: 15.6 M pairs); the line of
    a problem is found by reading the file again."""
    same = np.flatnonzero(pairs[:, 0] == pairs[:, 1])
    if len(same):
        raise InputError(f"{path}:{_line_of_row(path, same[0])}: template {pairs[same[0], 0]} "
                         "is paired with itself")
    a, b = np.searchsorted(known, pairs[:, 0]), np.searchsorted(known, pairs[:, 1])
    keys = np.minimum(a, b) * len(known) + np.maximum(a, b)
    ordered = np.sort(keys)
    if (ordered[1:] == ordered[:-1]).any():  # then find the lines (slower, rare)
        order = np.argsort(keys, kind="stable")
        repeat = keys[order][1:] == keys[order][:-1]
        again = order[1:][repeat].min()  # the earliest row repeating an earlier one
        first = order[np.searchsorted(keys[order], keys[again])]
        t1, t2 = pairs[again]
        raise InputError(f"{path}:{_line_of_row(path, again)}: the pair of templates {t1} "
                         f"and {t2} is listed again (first at line "
                         f"{_line_of_row(path, first)}); each pair counts once")


def _line_of_row(path: Path, row: int) -> int:
    """The line number of the `row`-th non-blank line of `path` (0-based row)."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                if row == 0:
                    return number
                row -= 1
    return -1


def identification_files(root: Path, target: str) -> dict[str, Path] | None:
    """{gallery name: path, ..., "probe": path} when all 1:N lists are in meta/, None when
    none is; `InputError` when only some are."""
    prefix = target.lower()
    files = {g: root / "meta" / f"{prefix}_1N_gallery_{g}.csv" for g in GALLERIES[target]}
    files["probe"] = root / "meta" / f"{prefix}_1N_probe_mixed.csv"
    present = [p.is_file() for p in files.values()]
    if not any(present):
        return None
    if not all(present):
        missing = [str(p) for p, ok in zip(files.values(), present, strict=True) if not ok]
        raise InputError(f"1:N list not found: {missing[0]} (give all of "
                         f"{', '.join(p.name for p in files.values())} or none, or "
                         "--noijb_1n)")
    return files


def read_subjects(path: Path, known: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, subject ids), one per template, of a 1:N csv (TEMPLATE_ID,SUBJECT_ID,
    ... per crop, a header line first)."""
    return _as_arrays(_subject_rows(path, known))


def _as_arrays(rows: dict[int, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    templates = np.asarray(sorted(rows), np.int64)
    return templates, np.asarray([rows[t][0] for t in templates], np.int64)


def _subject_rows(path: Path, known: set[int]) -> dict[int, tuple[int, int]]:
    """{template: (subject, first line)} of a 1:N csv; one subject per template."""
    rows = _table(path, None, "1:N template list", sep=",")
    subject_of: dict[int, tuple[int, int]] = {}
    for number, row in rows:
        if number == rows[0][0] and not row[0].lstrip("-").isdigit():
            continue  # the header
        if len(row) < 2:
            raise InputError(f"{path}:{number}: expected TEMPLATE_ID,SUBJECT_ID,...")
        t, s = _integers(path, number, row[:2], "template and subject ids")
        if t not in known:
            raise InputError(f"{path}:{number}: template {t} has no crop in the "
                             "face_tid_mid list")
        subject, line = subject_of.setdefault(t, (s, number))
        if subject != s:
            raise InputError(f"{path}:{number}: template {t} belongs to subject {s} here "
                             f"and to subject {subject} at line {line}")
    if not subject_of:
        raise InputError(f"1:N template list {path} has no templates")
    return subject_of


def read_identification(files: dict[str, Path], known: set[int]
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{list name: (template ids, subject ids)} of the 1:N lists `files` (galleries and
    "probe"), each read by `read_subjects`; a template may appear in one list only (the
    galleries are disjoint and the probes are not gallery templates: a probe found in
    the gallery would be its own mate)."""
    rows = {name: _subject_rows(path, known) for name, path in files.items()}
    seen: dict[int, str] = {}
    for name, path in files.items():
        for t, (s, line) in rows[name].items():
            other = seen.setdefault(t, name)
            if other == name:
                continue
            s0, line0 = rows[other][t]
            if s0 != s:
                raise InputError(f"{path}:{line}: template {t} belongs to subject {s} here "
                                 f"and to subject {s0} in {files[other]}:{line0}")
            raise InputError(f"{path}:{line}: template {t} is also in {files[other]}:"
                             f"{line0}; each template belongs to one 1:N list")
    return {name: _as_arrays(table) for name, table in rows.items()}


# ----------------------------------------------------------------------------- features

def aligned_crop(path: Path, landmarks: np.ndarray) -> np.ndarray:
    """RGB uint8 112 x 112 crop of a loose crop aligned by its 5 landmarks."""
    import warnings

    import cv2
    from insightface.utils.face_align import norm_crop

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"crop {path} is not a readable image")
    with warnings.catch_warnings():  # scikit-image's deprecation of `estimate`
        warnings.simplefilter("ignore", FutureWarning)
        face = norm_crop(bgr, landmark=landmarks, image_size=ALIGNED)
    return np.ascontiguousarray(face[:, :, ::-1])


def crop_features(model, protocol: Protocol, *, batch_size: int, device, flip: bool = True,
                  threads: int = 4, bar=None, intermediate: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """((crops, d) float32 raw embeddings (no normalisation), plus the mirrored crop's with
    `flip` (summed in float32, as insightface), in the order of the crop list; with
    `intermediate`, GroupFace's GDN intermediate features summed the same way, else None)."""
    import torch
    from PIL import Image

    from bridges.recognition.data import to_tensor

    size = model.spec["input_size"]

    def load(k):
        face = aligned_crop(protocol.root / "loose_crop" / protocol.names[k],
                            protocol.landmarks[k])
        if size != ALIGNED:
            face = np.asarray(Image.fromarray(face).resize((size, size), Image.BILINEAR))
        return to_tensor(face)

    keys = ("embedding", "intermediate") if intermediate else ("embedding",)
    out = dict.fromkeys(keys)
    with ThreadPoolExecutor(threads) as pool, torch.no_grad():
        for start in range(0, len(protocol.names), batch_size):
            index = range(start, min(start + batch_size, len(protocol.names)))
            x = torch.stack(list(pool.map(load, index))).to(device)
            y = model(x)
            mirrored = model(torch.flip(x, dims=[3])) if flip else None
            for key in keys:
                f = y[key].float() + (mirrored[key].float() if flip else 0)
                if out[key] is None:  # one float32 row per crop (IJB-C: ~469k x 512, ~1 GB)
                    out[key] = np.empty((len(protocol.names), f.shape[1]), np.float32)
                out[key][start:start + len(index)] = f.cpu().numpy()
            if bar is not None:
                bar.update(len(index))
    return out["embedding"], out.get("intermediate")


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                      chosen=None, scale=None, chunk: int = 65_536
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, unit template features): per template, the mean of each media's
    (scaled) crop features summed over its media, then normalised. `scale`: a factor per
    crop (faceness, 1 / norm); `chosen`: only these templates (sorted ids), default all.

    The pooling is one sparse (templates x crops) matrix of weights
    scale / (crops of the same media in the template), applied in float64 to chunks of
    crops: no copy of the crop features is made."""
    from scipy import sparse

    ids = np.unique(templates) if chosen is None else np.asarray(chosen, np.int64)
    row = np.searchsorted(ids, templates).clip(0, len(ids) - 1)
    crops = np.flatnonzero(ids[row] == templates)
    _, inverse, counts = np.unique(np.stack([templates, medias], axis=1), axis=0,
                                   return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse.reshape(-1)]
    if scale is not None:
        weight = weight * np.asarray(scale, np.float64)
    w = sparse.csc_matrix((weight[crops], (row[crops], crops)),
                          shape=(len(ids), len(templates)))
    pooled = np.zeros((len(ids), features.shape[1]))
    for s in range(0, len(templates), chunk):
        pooled += w[:, s:s + chunk] @ np.asarray(features[s:s + chunk], np.float64)
    norms = np.linalg.norm(pooled, axis=1)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        k = int(np.argmax(~(np.isfinite(norms) & (norms > 0))))
        own = crops[row[crops] == k]
        raise InputError(f"template {int(ids[k])} has no feature: "
                         f"{_why_no_feature(features[own], weight[own], norms[k])}")
    return ids, pooled / norms[:, None]


def similarity(a, b, a_inter=None, b_inter=None) -> np.ndarray:
    """(len(a), len(b)) template scores: the cosines of unit features, plus GroupFace's
    group term of the unit intermediate features when they are given (S*)."""
    s = a @ b.T
    if a_inter is None:
        return s
    from bridges.recognition.groupface import group_term_of_cosine

    return s + group_term_of_cosine(a_inter @ b_inter.T)


def pooled(protocol: Protocol, feats, scale, inter=None, inter_scale=None, chosen=None):
    """(template ids, unit template features, unit template intermediate features or None
    without `inter`): `template_features` of both, each with its own crop weights."""
    ids, final = template_features(feats, protocol.templates, protocol.medias, chosen, scale)
    if inter is None:
        return ids, final, None
    return ids, final, template_features(inter, protocol.templates, protocol.medias, chosen,
                                         inter_scale)[1]


def _why_no_feature(features, weights, norm) -> str:
    """The cause of a template's zero or non-finite pooled feature, from its crops."""
    if not np.isfinite(features).all():
        return "the model's features of its crops hold NaN or Inf"
    if not np.isfinite(weights).all():
        return "its crops' weights (faceness score / feature norm) are not finite"
    if not np.isfinite(norm):
        return "its weighted crop features overflow"
    if not weights.any():
        return ("the faceness scores of all its crops are 0 (--noijb_detector_score "
                "ignores them)")
    return "its crops' weighted features sum to zero"


def pair_scores(ids: np.ndarray, feats: np.ndarray, pairs: np.ndarray,
                block: int = 1024, inter: np.ndarray | None = None) -> np.ndarray:
    """Score (`similarity`) of the template features of each pair (ids sorted). Rows of
    the score matrix, `block` first templates at a time, are one BLAS product each; the
    pairs are read from them (4x faster than gathering both features of 15.6 M pairs)."""
    a, b = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    order = np.argsort(a, kind="stable")
    starts = np.searchsorted(a[order], [*range(0, len(ids), block), len(ids)])
    scores = np.empty(len(pairs))
    for k, s in enumerate(range(0, len(ids), block)):
        rows = order[starts[k]:starts[k + 1]]
        if len(rows):
            rows_inter = None if inter is None else inter[s:s + block]
            scores[rows] = similarity(feats[s:s + block], feats, rows_inter,
                                      inter)[a[rows] - s, b[rows]]
    return scores


# ----------------------------------------------------------------------------- figures

def verification_table(scores, labels, fars=FARS, curve=None) -> list[dict]:
    """TAR at each FAR (`verification.tar_at_fars`) with insightface's nearest-ROC-point
    figure beside it; `curve`: the (fpr, tpr) of `verification.roc` if already computed."""
    from bridges import verification

    impostors = int((~labels).sum())
    fpr, tpr = verification.roc(scores, labels) if curve is None else curve
    rows = []
    for far, r in zip(fars, verification.tar_at_fars(scores, labels, fars), strict=True):
        rows.append({"far": far, "tar": r["tar"], "threshold": r["threshold"],
                     "far_achieved": r["far"], "impostors_allowed": int(np.floor(far * impostors)),
                     "tar_nearest_roc_point": nearest_roc_point(fpr, tpr, far)})
    return rows


def nearest_roc_point(fpr, tpr, far: float) -> float:
    """insightface's figure (ijb_11.py): the TPR of the ROC point whose FPR is nearest to
    `far` (that FPR may exceed `far`; among equally near points the last, i.e. the one
    with the highest TPR); reported for comparison with published tables."""
    fpr, tpr = np.asarray(fpr)[::-1], np.asarray(tpr)[::-1]
    return float(tpr[int(np.argmin(np.abs(fpr - far)))])


def identification(probe_feats, probe_subjects, gallery_feats, gallery_subjects,
                   ranks=RANKS, fpirs=FPIRS, block: int = 2048, probe_inter=None,
                   gallery_inter=None) -> dict:
    """Open-set 1:N figures of probe templates against one gallery (see the module doc);
    with the intermediate features, scored by S* (`similarity`)."""
    from bridges import verification

    subjects = np.unique(gallery_subjects)
    column = np.searchsorted(subjects, gallery_subjects)
    mated = np.isin(probe_subjects, subjects)
    mate = np.searchsorted(subjects, probe_subjects).clip(0, len(subjects) - 1)
    top, rank = np.zeros(len(probe_feats)), np.zeros(len(probe_feats), np.int64)
    for s in range(0, len(probe_feats), block):  # probe blocks: memory ~ block x gallery
        per_subject = np.full((min(block, len(probe_feats) - s), len(subjects)), -np.inf)
        # A subject's score is its best gallery template's (one template each in IJB).
        scores = similarity(probe_feats[s:s + block], gallery_feats,
                            None if probe_inter is None else probe_inter[s:s + block],
                            gallery_inter)
        np.maximum.at(per_subject.T, column, scores.T)
        rows = np.arange(len(per_subject))
        own = per_subject[rows, mate[s:s + block]]
        # Mated: the mate's score and rank (1 + subjects strictly higher: ties favour the
        # mate). Non-mated: the best score.
        top[s:s + block] = np.where(mated[s:s + block], own, per_subject.max(axis=1))
        rank[s:s + block] = 1 + (per_subject > own[:, None]).sum(axis=1)
    result = {"mated_probes": int(mated.sum()), "non_mated_probes": int((~mated).sum()),
              "gallery_subjects": int(len(subjects))}
    true, rank = top[mated], rank[mated]
    if mated.any():
        for k in ranks:
            result[f"rank_{k}"] = float((rank <= k).mean())
    for f in fpirs:
        key = f"tpir_at_fpir_{f:g}"
        if not mated.any() or mated.all():
            result[key] = None
            continue
        t = verification.tar_at_far(top, mated, f)["threshold"]
        result[key] = float(((rank == 1) & (true > t)).mean())
        result[f"threshold_at_fpir_{f:g}"] = t
    return result


INSIGHTFACE_1N_RULE = (
    "insightface ijb_1n.py: the galleries merged into one, every probe's subject exactly "
    "once in it; rank-k: share of probes whose mate is among the k best gallery templates; "
    "at 'FPIR' f the threshold is the ceil(f x probes)-th highest score among all non-mate "
    "(probe, gallery template) pairs and the figure is the share of probes whose mate "
    "scores above it, whatever its rank")


def insightface_identification(probe_feats, probe_subjects, gallery_feats, gallery_subjects,
                               ranks=INSIGHTFACE_RANKS, fpirs=FPIRS, block: int = 2048,
                               probe_inter=None, gallery_inter=None) -> dict:
    """1:N figures computed as insightface's ijb_1n.py computes them (`INSIGHTFACE_1N_RULE`),
    for comparison with published tables; the gallery is the merged one. A probe whose
    subject is not exactly once in the gallery makes the figures undefined there
    (ijb_1n.py stops): they are None, with the reason."""
    subjects, first, counts = np.unique(gallery_subjects, return_index=True,
                                        return_counts=True)
    where = np.searchsorted(subjects, probe_subjects).clip(0, len(subjects) - 1)
    once = (subjects[where] == probe_subjects) & (counts[where] == 1)
    result = {"probes": int(len(probe_feats)), "gallery_templates": int(len(gallery_feats)),
              "rule": INSIGHTFACE_1N_RULE}
    keys = [f"rank_{k}" for k in ranks] + [f"tpir_at_fpir_{f:g}" for f in fpirs]
    if not once.all():
        bad = int(probe_subjects[np.argmin(once)])
        return {**result, **dict.fromkeys(keys),
                "undefined": f"probe subject {bad} is not exactly once in the merged gallery"}
    mate = first[where]  # each probe's gallery column
    needed = [math.ceil(f * len(probe_feats)) for f in fpirs]
    top = np.full(0, -np.inf)  # the highest non-mate scores so far, at most max(needed)
    own, rank = np.empty(len(probe_feats)), np.empty(len(probe_feats), np.int64)
    for s in range(0, len(probe_feats), block):
        scores = similarity(probe_feats[s:s + block], gallery_feats,
                            None if probe_inter is None else probe_inter[s:s + block],
                            gallery_inter)
        rows = np.arange(len(scores))
        own[s:s + len(scores)] = scores[rows, mate[s:s + block]]
        rank[s:s + len(scores)] = 1 + (scores > own[s:s + len(scores), None]).sum(axis=1)
        scores[rows, mate[s:s + block]] = -np.inf
        top = np.concatenate([top, scores.ravel()])
        if len(top) > max(needed):
            top = np.partition(top, len(top) - max(needed))[len(top) - max(needed):]
    top = np.sort(top)[::-1]
    non_mates = len(probe_feats) * (len(gallery_feats) - 1)
    for k in ranks:
        result[f"rank_{k}"] = float((rank <= k).mean())
    for f, k in zip(fpirs, needed, strict=True):
        ok = 1 <= k <= non_mates
        result[f"tpir_at_fpir_{f:g}"] = float((own > top[k - 1]).mean()) if ok else None
        result[f"threshold_at_fpir_{f:g}"] = float(top[k - 1]) if ok else None
    return result


def gallery_mean(per_gallery: dict) -> dict:
    """Rank-k and TPIR figures averaged over the galleries (None if one lacks a figure)."""
    keys = [f"rank_{k}" for k in RANKS] + [f"tpir_at_fpir_{f:g}" for f in FPIRS]
    values = {k: [r.get(k) for r in per_gallery.values()] for k in keys}
    return {k: None if any(v is None for v in vs) else float(np.mean(vs))
            for k, vs in values.items()}


# ----------------------------------------------------------------------------- the command

def run(fv, names: dict[str, str]) -> dict:
    """Evaluate the models `names` (label -> path) on the IJB protocol of `fv`."""
    import torch
    from tqdm import tqdm

    from bridges import verification
    from bridges.recognition.model import load_model

    started = time.time()
    if fv.bins:
        raise InputError("give one of --bins and --ijb")
    root = find_root(fv.ijb, fv.ijb_target)
    protocol = read_protocol(root, fv.ijb_target)
    lists = identification_files(root, fv.ijb_target) if fv.ijb_1n else None
    known = set(np.unique(protocol.templates).tolist())
    one_n = None
    if lists:
        one_n = read_identification(lists, known)
    device = torch.device("cuda" if fv.device == "cuda" or (
        fv.device == "auto" and torch.cuda.is_available()) else "cpu")
    models = {name: load_model(path, device) for name, path in names.items()}
    group = bool(fv.group_similarity)
    if group:
        plain = [n for n, m in models.items() if m.groupface is None]
        if plain:
            raise InputError(f"--group_similarity needs GroupFace models; {plain[0]} is not one")
    weights = protocol.faceness if fv.ijb_detector_score else np.ones(len(protocol.names))

    results, curves, all_scores = {}, {}, {}
    bar = tqdm(total=len(protocol.names) * len(models), disable=not fv.progress, unit="crop",
               file=sys.stderr)
    for name, model in models.items():
        feats, inter = crop_features(model, protocol, batch_size=fv.batch_size, device=device,
                                     flip=fv.flip, threads=fv.ijb_read_threads, bar=bar,
                                     intermediate=group)
        scale = weights.copy()
        if not fv.ijb_feature_norm:
            norms = np.linalg.norm(feats, axis=1).astype(np.float64)
            if not (norms > 0).all():  # NaN norms too
                k = int(np.argmin(norms > 0))
                raise InputError(f"{name}: the feature of crop {protocol.names[k]} is "
                                 f"{'zero' if norms[k] == 0 else 'NaN or Inf'}")
            scale /= norms
        inter_scale = None
        if group:  # unit crop intermediate features, weighted like the final ones
            inter_norms = np.linalg.norm(inter, axis=1).astype(np.float64)
            if not (inter_norms > 0).all():
                raise InputError(f"{name}: zero intermediate feature for crop "
                                 f"{protocol.names[int(np.argmin(inter_norms > 0))]}")
            inter_scale = weights / inter_norms
        crops = (feats, scale, inter, inter_scale)
        ids, tfeats, tinter = pooled(protocol, *crops)
        scores = pair_scores(ids, tfeats, protocol.pairs, inter=tinter)
        if not np.isfinite(scores).all():
            raise FloatingPointError(f"{name}: non-finite pair scores")
        all_scores[name] = scores
        curves[name] = verification.roc(scores, protocol.labels)
        entry = {"verification": verification_table(scores, protocol.labels,
                                                    curve=curves[name])}
        if one_n:
            probe_t, probe_s = one_n["probe"]
            _, probe, probe_inter = pooled(protocol, *crops, probe_t)
            entry["identification"] = {}
            merged = [[], [], []]  # the galleries' subjects, features, intermediates
            for gallery in GALLERIES[fv.ijb_target]:
                g_t, g_s = one_n[gallery]
                _, g, g_inter = pooled(protocol, *crops, g_t)
                entry["identification"][gallery] = identification(
                    probe, probe_s, g, g_s, probe_inter=probe_inter, gallery_inter=g_inter)
                for part, value in zip(merged, (g_s, g, g_inter), strict=True):
                    part.append(value)
            entry["identification"]["mean"] = gallery_mean(entry["identification"])
            entry["identification_insightface"] = insightface_identification(
                probe, probe_s, np.concatenate(merged[1]), np.concatenate(merged[0]),
                probe_inter=probe_inter,
                gallery_inter=np.concatenate(merged[2]) if group else None)
        results[name] = entry
    bar.close()

    labels = protocol.labels
    report = {
        "target": fv.ijb_target, "root": str(root), "crops": len(protocol.names),
        "templates": int(len(np.unique(protocol.templates))),
        "pairs": int(len(labels)), "genuine_pairs": int(labels.sum()),
        "impostor_pairs": int((~labels).sum()), "results": results, "models": names,
        "protocol": {
            "template": "crop feature = embedding(crop) + embedding(mirrored crop)"
                        if fv.flip else "crop feature = embedding(crop)",
            "feature_norm_kept": bool(fv.ijb_feature_norm),
            "detector_score_weight": bool(fv.ijb_detector_score),
            "pooling": "mean over the crops of a media, sum over media, normalise",
            "tar_at_far": TAR_RULE,
            "tar_nearest_roc_point": "insightface ijb_11.py: TPR at the ROC point whose FPR "
                                     "is nearest the target (comparable with published "
                                     "tables)",
            "identification_insightface": INSIGHTFACE_1N_RULE,
            "scores": "group-aware similarity S* of template features (template form "
                      "ours: see bridges/ijb.py)" if group else "cosine of template features",
            "identification": "open set per gallery: mated probes' subject in the gallery; "
                              "TPIR counts rank-1 mates scoring above the FPIR threshold "
                              "over the non-mated probes' best scores"},
        "flags": dataclasses.asdict(fv),
        "wall_seconds": round(time.time() - started, 3)}
    out = Path(fv.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = protocol.prefix
    atomic_write(out / f"{prefix}_scores.npz", lambda f: np.savez(f, labels=labels, **{
        f"scores_{i}": s for i, s in enumerate(all_scores.values())}))
    save_json(out / f"{prefix}_results.json", report)
    text = markdown(report)
    atomic_write(out / f"{prefix}_results.md", lambda f: f.write(text.encode()))
    plot_roc(curves, out / f"{prefix}_roc.png", fv.ijb_target)
    print(text)
    return report


def markdown(report: dict) -> str:
    target, n_imp = report["target"], report["impostor_pairs"]
    lines = [f"# {target} 1:1 verification", "",
             f"{report['templates']} templates, {report['pairs']} pairs "
             f"({report['genuine_pairs']} genuine, {n_imp} impostor). TAR (%) at FAR: the "
             "most lenient threshold whose FAR over all impostor pairs is <= the target; "
             "ties with the threshold are rejected. † fewer than one impostor allowed "
             "(FAR x impostors < 1): the threshold is the highest impostor score.", "",
             "| model | " + " | ".join(f"{f:g}" for f in FARS) + " |",
             "|---" * (len(FARS) + 1) + "|"]
    for name, entry in report["results"].items():
        cells = [f"{100 * r['tar']:.2f}" + ("†" if r["impostors_allowed"] == 0 else "")
                 for r in entry["verification"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "insightface-comparable (ijb_11.py, as published IJB tables): TAR (%) at "
                  "the ROC point whose FAR is nearest each target (that FAR may exceed it).", "",
              "| model | " + " | ".join(f"{f:g}" for f in FARS) + " |",
              "|---" * (len(FARS) + 1) + "|"]
    for name, entry in report["results"].items():
        cells = [f"{100 * r['tar_nearest_roc_point']:.2f}" for r in entry["verification"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rows = [(name, g, r) for name, entry in report["results"].items()
            for g, r in entry.get("identification", {}).items()]
    if rows:
        lines += ["", f"# {target} 1:N identification (open set, mixed probes)", "",
                  "Ours: per gallery as NIST defines it (non-mated probes set the FPIR "
                  "threshold; TPIR counts rank-1 mates above it).", "",
                  "| model | gallery | " + " | ".join(f"rank-{k}" for k in RANKS) + " | "
                  + " | ".join(f"TPIR@FPIR={f:g}" for f in FPIRS) + " |",
                  "|---" * (2 + len(RANKS) + len(FPIRS)) + "|"]
        for name, g, r in rows:
            cells = [_percent(r.get(f"rank_{k}")) for k in RANKS]
            cells += [_percent(r.get(f"tpir_at_fpir_{f:g}")) for f in FPIRS]
            lines.append(f"| {name} | {g} | " + " | ".join(cells) + " |")
        merged = "+".join(GALLERIES[target])
        lines += ["", f"insightface-comparable 1:N (ijb_1n.py, as published IJB tables): "
                      f"galleries {merged} merged, every probe mated; 'TPIR' at f: the "
                      "threshold is the ceil(f x probes)-th highest non-mate score.", "",
                  "| model | " + " | ".join(f"rank-{k}" for k in INSIGHTFACE_RANKS) + " | "
                  + " | ".join(f"TPIR@FPIR={f:g}" for f in FPIRS) + " |",
                  "|---" * (1 + len(INSIGHTFACE_RANKS) + len(FPIRS)) + "|"]
        for name, entry in report["results"].items():
            r = entry["identification_insightface"]
            cells = [_percent(r.get(f"rank_{k}")) for k in INSIGHTFACE_RANKS]
            cells += [_percent(r.get(f"tpir_at_fpir_{f:g}")) for f in FPIRS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def plot_roc(curves: dict, path: Path, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for label, (far, tar) in curves.items():
        ax.plot(np.maximum(far, 1e-7), tar, label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xticks(FARS + (1.0,))
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{target} 1:1 verification ROC")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)
