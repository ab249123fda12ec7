"""Folder-per-identity training images, streamed from disk by DataLoader workers.

Layout: `root/<identity>/<image>` (bridges.generate writes `%06d/%03d.png`; any folder
names and the usual image suffixes work). Identities are the sorted sub-folders that hold
at least one image; labels are their indices. `without` leaves out listed files (the
`--exclude` list of bridges.train, e.g. the drop list of a dataset analysis). Images are
decoded per item (nothing is held in memory), converted to RGB, resized to the model's
input, augmented and scaled to [-1, 1] as (x / 255 - 0.5) / 0.5 (the arcface_torch
convention).

Every random choice (sample order, augmentation) comes from a generator seeded by
(seed, epoch, index), so the run does not depend on the number of workers or processes,
and a resumed run repeats the interrupted one.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from bridges import require_path
from hyperface_jax.io.files import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
AUGMENTATIONS = ("flip", "crop", "color", "lowres", "erase")


@dataclass(frozen=True)
class ImageFolder:
    paths: tuple[str, ...]
    labels: np.ndarray
    identities: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.identities)


def scan(root) -> ImageFolder:
    """Find the identity folders and their images; `InputError` if there is nothing to
    train on."""
    root = require_path(root, "training data folder", "folder")
    paths, labels, identities = [], [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        images = sorted(f.name for f in os.scandir(entry.path)
                        if f.is_file() and not f.name.startswith(".")
                        and f.name.lower().endswith(IMAGE_SUFFIXES))
        if not images:
            continue
        paths += [os.path.join(entry.path, name) for name in images]
        labels += [len(identities)] * len(images)
        identities.append(entry.name)
    if len(identities) < 2:
        raise InputError(f"training data folder {root} has {len(identities)} identity folders "
                         "with images; expected root/<identity>/<image> with at least 2")
    return ImageFolder(tuple(paths), np.asarray(labels, np.int64), tuple(identities))


def read_exclude(path) -> list[tuple[int, str]]:
    """(line number, entry) of a list of files to leave out, one path per line (blank lines
    and lines starting with # ignored); `InputError` if it cannot be read."""
    path = require_path(path, "--exclude list")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--exclude list {path} cannot be read ({type(e).__name__})") from None
    return [(k, line.strip()) for k, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]


def without(folder: ImageFolder, root, entries: list[tuple[int, str]],
            what: str = "--exclude") -> tuple[ImageFolder, list[str]]:
    """`folder` minus the listed images, and the paths left out. An entry is a path
    relative to `root` (as bridges.embed's sidecar rows are), or an absolute path, or one
    relative to the working directory; one that names no image of the set is refused.
    Identities left without images are dropped and the labels renumbered."""
    root = Path(root)
    index = {os.path.realpath(p): k for k, p in enumerate(folder.paths)}
    drop = set()
    for number, entry in entries:
        candidates = [Path(entry)] if Path(entry).is_absolute() else [root / entry, Path(entry)]
        hit = next((index[r] for r in map(os.path.realpath, candidates) if r in index), None)
        if hit is None:
            raise InputError(f"{what} line {number}: {entry} is not an image of the training "
                             f"set {root}")
        drop.add(hit)
    keep = [k for k in range(len(folder.paths)) if k not in drop]
    kept_identities = sorted({int(folder.labels[k]) for k in keep})
    new_label = {old: new for new, old in enumerate(kept_identities)}
    if len(kept_identities) < 2:
        raise InputError(f"{what} leaves {len(kept_identities)} identities with images; "
                         "at least 2 are needed")
    result = ImageFolder(tuple(folder.paths[k] for k in keep),
                         np.asarray([new_label[int(folder.labels[k])] for k in keep], np.int64),
                         tuple(folder.identities[k] for k in kept_identities))
    return result, [folder.paths[k] for k in sorted(drop)]


def parse_augment(spec: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in spec.split(",") if a.strip() and a.strip() != "none")
    unknown = [a for a in names if a not in AUGMENTATIONS]
    if unknown:
        raise InputError(f"unknown --augment {','.join(unknown)}; expected any of "
                         f"{', '.join(AUGMENTATIONS)} or none")
    return names


def load_image(path: str, size: int) -> Image.Image:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - any undecodable file is bad input
        raise InputError(f"cannot read image {path} ({type(e).__name__}: {e})") from None
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return im


def augment(im: Image.Image, names, rng: np.random.Generator) -> np.ndarray:
    """Apply the named augmentations; returns uint8 (H, W, 3)."""
    size = im.size[0]
    if "crop" in names and rng.random() < 0.2:  # AdaFace: crop augmentation, p 0.2
        scale = rng.uniform(0.7, 1.0)
        side = max(int(round(size * np.sqrt(scale))), 2)
        x0, y0 = rng.integers(0, size - side + 1, size=2)
        im = im.crop((int(x0), int(y0), int(x0) + side, int(y0) + side)).resize(
            (size, size), Image.BILINEAR)
    if "lowres" in names and rng.random() < 0.2:  # AdaFace: low-resolution, p 0.2
        small = max(int(size * rng.uniform(0.2, 1.0)), 2)
        im = im.resize((small, small), Image.BILINEAR).resize((size, size), Image.BILINEAR)
    if "color" in names and rng.random() < 0.2:  # AdaFace: photometric, p 0.2
        f = rng.uniform(0.5, 1.5, size=3)
        im = ImageEnhance.Brightness(im).enhance(f[0])
        im = ImageEnhance.Contrast(im).enhance(f[1])
        im = ImageEnhance.Color(im).enhance(f[2])
    if "flip" in names and rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.array(im, dtype=np.uint8)
    if "erase" in names and rng.random() < 0.5:  # torchvision RandomErasing defaults
        area = rng.uniform(0.02, 0.33) * size * size
        ratio = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        h = min(int(round(np.sqrt(area * ratio))), size)
        w = min(int(round(np.sqrt(area / ratio))), size)
        y0 = rng.integers(0, size - h + 1)
        x0 = rng.integers(0, size - w + 1)
        array[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return array


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(
        (array.astype(np.float32) / 255.0 - 0.5) / 0.5).permute(2, 0, 1).contiguous()


class TrainSet(torch.utils.data.Dataset):
    """Items are (index, epoch) pairs (see `GlobalBatchSampler`); returns (image, label)."""

    def __init__(self, folder: ImageFolder, size: int, augmentations=(), seed: int = 0):
        self.folder = folder
        self.size = size
        self.augmentations = tuple(augmentations)
        self.seed = seed

    def __len__(self):
        return len(self.folder.paths)

    def __getitem__(self, item):
        index, epoch = item
        rng = np.random.default_rng([self.seed, epoch, index])
        im = load_image(self.folder.paths[index], self.size)
        return to_tensor(augment(im, self.augmentations, rng)), int(self.folder.labels[index])


class GlobalBatchSampler(torch.utils.data.Sampler):
    """The same global batches in any number of processes: a seeded permutation per
    epoch cut into full batches of `global_batch` (the last partial one dropped, as
    arcface_torch), of which process `rank` takes the `rank`-th contiguous slice."""

    def __init__(self, n: int, global_batch: int, *, rank: int = 0, world: int = 1,
                 seed: int = 0, epoch: int = 0):
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.local = global_batch // world
        self.seed, self.epoch = seed, epoch

    def __len__(self):
        return self.n // self.global_batch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch, 2**31 - 1]).permutation(self.n)
        for b in range(len(self)):
            start = b * self.global_batch + self.rank * self.local
            yield [(int(i), self.epoch) for i in order[start:start + self.local]]
