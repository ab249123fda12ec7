"""The insightface verification-set format (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...).

A `.bin` is a pickle of `(bins, issame_list)`: `bins` is a list of 2 n encoded images
(JPEG or PNG bytes; images 2i and 2i+1 form pair i), `issame_list` n booleans. Pickles can
run code when loaded, so `read` uses an unpickler that resolves no global at all: only
bytes, lists, tuples, bools (and ints/None) can appear. A crafted file is refused with
`InputError`, never executed. The one exception is `_codecs.encode(str, 'latin1')`, the
way protocol-2 pickles written by Python 3 spell bytes; it is admitted only with those
argument types and returns bytes.

A pickle may also refer to one object many times (memo references), so a small file can
stand for any number of images, and a small PNG can declare millions of pixels. `read`
refuses, each with one line saying which bound:
- a set of more than `max_images` images (default MAX_IMAGES, seven times the largest
  published set, cfp_fp's 14,000);
- any image whose header declares more than MAX_IMAGE_PIXELS pixels;
- a set whose headers declare more pixels in all (every reference counted) than its
  decoding budget, `pixel_budget(file size)`: PIXELS_PER_FILE_BYTE per byte of the file,
  at least MIN_PIXEL_BUDGET, at most MAX_SET_PIXELS. Colour photos compress to far
  fewer pixels per byte; 100,000 references to one 4096 x 4096 PNG (a 300 KB file
  declaring 1.7 T pixels, about half a day of decoding) are refused after reading the
  headers only.
`decode` refuses a decoded array above MAX_DECODED_BYTES and oversized images as well.
"""

import codecs
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from bridges import require_path
from hyperface_jax.io.files import InputError, atomic_write

MAX_IMAGES = 100_000
MAX_DECODED_BYTES = 8 << 30
MAX_IMAGE_PIXELS = 4096 * 4096
PIXELS_PER_FILE_BYTE = 1000  # a blank 4096 x 4096 RGB PNG: 343 pixels per byte
MIN_PIXEL_BUDGET = 1 << 26   # small sets: ~5,000 images of 112 x 112, a few seconds
MAX_SET_PIXELS = 1 << 33     # ~700,000 images of 112 x 112, minutes of decoding


class _Forbidden(pickle.UnpicklingError):
    """The pickle asks for something a verification set never holds."""


def _latin1_bytes(text, encoding="latin1"):
    if not isinstance(text, str) or encoding != "latin1":
        raise _Forbidden("_codecs.encode is admitted only as (str, 'latin1')")
    return codecs.encode(text, "latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise _Forbidden(f"global {module}.{name} is not allowed in a .bin file")


def read(path, max_images: int = MAX_IMAGES) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame (n,) bool) from a `.bin`; `InputError` naming the file if it
    is missing, not a verification pickle, tries to load anything but plain data, or holds
    more than `max_images` images."""
    path = require_path(path, "verification file")
    try:
        with open(path, "rb") as f:
            blob = _RestrictedUnpickler(f, encoding="bytes").load()
    except _Forbidden as e:
        raise InputError(f"verification file {path} refused: {e}") from None
    except Exception as e:  # noqa: BLE001 - truncated or garbage file
        raise InputError(f"verification file {path} is not a .bin pickle "
                         f"({type(e).__name__}: {e})") from None
    if not (isinstance(blob, tuple | list) and len(blob) == 2):
        raise InputError(f"verification file {path} does not hold (bins, issame_list)")
    bins, issame = blob
    if not isinstance(bins, list | tuple) or not all(isinstance(b, bytes) for b in bins):
        raise InputError(f"verification file {path}: bins must be a list of encoded images")
    if len(bins) > max_images:
        distinct = len({id(b) for b in bins})
        shared = (f", only {distinct} distinct (the pickle repeats references)"
                  if distinct < len(bins) else "")
        raise InputError(f"verification file {path} holds {len(bins)} images{shared}: more "
                         f"than the bound of {max_images} per set (--max_images raises it)")
    if not isinstance(issame, list | tuple) or not all(isinstance(s, bool | int) for s in issame):
        raise InputError(f"verification file {path}: issame_list must be a list of booleans")
    if not issame or len(bins) != 2 * len(issame):
        raise InputError(f"verification file {path} has {len(bins)} images for "
                         f"{len(issame)} pairs; expected exactly 2 per pair")
    check_pixel_budget(bins, path, pixel_budget(path.stat().st_size))
    return list(bins), np.asarray(issame, dtype=bool)


def pixel_budget(file_bytes: int) -> int:
    """Pixels a set stored in `file_bytes` bytes may decode in all (see the module doc)."""
    return min(MAX_SET_PIXELS, max(MIN_PIXEL_BUDGET, PIXELS_PER_FILE_BYTE * file_bytes))


def declared_size(blob: bytes, index: int, path="") -> tuple[int, int]:
    """(width, height) from an encoded image's header (nothing is decoded); `InputError`
    if it is not an image or declares more than MAX_IMAGE_PIXELS pixels."""
    try:
        with Image.open(io.BytesIO(blob)) as im:
            width, height = im.size
    except Exception as e:  # noqa: BLE001 - any unreadable header
        raise InputError(f"verification file {path}: image {index} cannot be decoded "
                         f"({type(e).__name__})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"verification file {path}: image {index} is {width} x {height} "
                         f"pixels, above the bound of {MAX_IMAGE_PIXELS} pixels")
    return width, height


def check_pixel_budget(bins, path, budget: int) -> int:
    """The pixels the headers of `bins` declare in all (every reference counted, each
    distinct object's header read once); `InputError` when above `budget`."""
    pixels, seen = 0, {}
    for i, blob in enumerate(bins):
        if id(blob) not in seen:
            width, height = declared_size(blob, i, path)
            seen[id(blob)] = width * height
        pixels += seen[id(blob)]
    if pixels > budget:
        shared = (f" ({len(seen)} distinct: the pickle repeats references)"
                  if len(seen) < len(bins) else "")
        raise InputError(
            f"verification file {path}: its {len(bins)} images{shared} declare {pixels:,} "
            f"pixels, above its decoding budget of {budget:,} ({PIXELS_PER_FILE_BYTE} per "
            f"byte of the file, at least {MIN_PIXEL_BUDGET:,}, at most {MAX_SET_PIXELS:,})")
    return pixels


def decode(bins: list[bytes], size: int, path="",
           max_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """uint8 (N, size, size, 3) RGB images (resized when stored at another size)."""
    needed = len(bins) * size * size * 3
    if needed > max_bytes:
        raise InputError(f"verification file {path}: {len(bins)} images at {size} x {size} "
                         f"need {needed / 2**30:.1f} GiB decoded, above the bound of "
                         f"{max_bytes / 2**30:.1f} GiB")
    out = np.empty((len(bins), size, size, 3), np.uint8)
    for i, blob in enumerate(bins):
        declared_size(blob, i, path)
        try:
            with Image.open(io.BytesIO(blob)) as im:
                im = im.convert("RGB")
        except Exception as e:  # noqa: BLE001
            raise InputError(f"verification file {path}: image {i} cannot be decoded "
                             f"({type(e).__name__})") from None
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(im)
    return out


def encode(image, fmt: str = "png") -> bytes:
    """An (H, W, 3) or (H, W) uint8 array or a PIL image as PNG/JPEG bytes."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    buffer = io.BytesIO()
    im.convert("RGB").save(buffer, format={"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}[fmt])
    return buffer.getvalue()


def write(path, pairs, issame, fmt: str = "png") -> None:
    """Write a `.bin` from image pairs: `pairs` is a sequence of (image_a, image_b) (uint8
    arrays or PIL images) or a flat sequence of 2 n images; `issame` n booleans. Written
    atomically, as a protocol-4 pickle that insightface's loader reads."""
    flat = [im for pair in pairs for im in pair] if _is_pairs(pairs) else list(pairs)
    issame = [bool(s) for s in issame]
    if len(flat) != 2 * len(issame) or not issame:
        raise InputError(f"{len(flat)} images for {len(issame)} pairs; expected 2 per pair")
    blob = pickle.dumps(([encode(im, fmt) for im in flat], issame), protocol=4)
    atomic_write(Path(path), lambda f: f.write(blob))


def _is_pairs(pairs) -> bool:
    first = pairs[0]
    return isinstance(first, tuple | list) and len(first) == 2 and not isinstance(
        first, np.ndarray)
