"""Draw images for a fixed set of keys, resumably: what `bridges.generate` (keys (i, k))
and `bridges.gallery` (keys n) share.

A run owns a list of tiles (groups of keys drawn together); which process draws a tile is
a function of the tile's number alone, so any number of processes agree without talking.
Each image is written to a temporary name and renamed (a kill leaves whole images or
none), its sha256 goes to the caller's manifest, and a re-run first deletes what is
damaged (bytes differing from the manifest's sha256, or, for an image written after the
last manifest, a PNG that does not decode completely), then draws only what is missing.
The settings that fix the pixels are stored in a JSON file; a re-run with others is
refused. Ctrl-C or SIGTERM stops the drawing with every stored image kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import sys
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

import numpy as np

from hyperface_jax import cli
from hyperface_jax.io import integrity, runs
from hyperface_jax.io.files import atomic_write

SHA256 = re.compile(r"[0-9a-f]{64}")


def write_png(path: Path, rgb: np.ndarray) -> str:
    """Write an RGB uint8 image atomically (temporary name in the folder, then rename);
    returns the sha256 of the file's bytes."""
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


def is_damaged(path: Path, expected_sha256: str | None) -> bool:
    """An existing image is damaged when its bytes differ from the sha256 the manifest
    recorded or, not listed yet (written after the last manifest), it does not decode."""
    if expected_sha256:
        return integrity.sha256_file(path) != expected_sha256
    return not png_decodes(path)


def read_manifest_checksums(path: Path, key: Callable[[dict], Hashable]) -> dict:
    """{key(record): sha256} of a manifest.jsonl; unreadable lines are skipped (their
    images are then checked by decoding)."""
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            r = json.loads(line)
            k, digest = key(r), r["sha256"]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if isinstance(digest, str) and SHA256.fullmatch(digest):
            sums[k] = digest
    return sums


def write_manifest(path: Path, records: Iterable[dict]) -> list[dict]:
    """Rewrite manifest.jsonl (one JSON record a line) atomically; returns the records."""
    records = list(records)
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda f: f.write(text.encode()))
    return records


def remove_stale_temporaries(folders: Iterable[Path]) -> int:
    """Delete the temporary files a killed run left in `folders`."""
    removed = 0
    for folder in folders:
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def check_same_settings(path: Path, identity: dict) -> None:
    """Refuse (InputError) when `path` records other pixel-fixing settings."""
    before = runs.read_identity(path)
    if before is not None:
        runs.check_identity(before, identity, path.parent, "images made with other settings")


def log_resume(out: Path, found: int, todo: int, proc: Processes, log) -> None:
    """The line a re-run prints (as pack's "resuming from the checkpoint at step ..."):
    how many of this process's images an earlier run left intact, how many it still draws."""
    if found:
        share = "" if proc.count == 1 else f" (process {proc.index}/{proc.count}'s share)"
        log(f"resuming in {out}: {found} of {found + todo} images{share} already there and "
            f"intact, {todo} left to draw")


def tile_owner(tile_number: int, processes: int) -> int:
    """The process that draws tile `tile_number`: a function of the tile alone, so every
    process agrees without communicating, whatever exists on disk."""
    return tile_number % processes


class Processes:
    """Rank, size, barrier and gather: accelerate's PartialState (torchrun and accelerate
    launches), or a single process."""

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

    def close(self):
        """Destroy the process group: a gloo group left to interpreter shutdown can abort
        the process (SIGABRT, "terminate called without an active exception")."""
        if self.count > 1:
            self.state.destroy_process_group()

    def gather(self, items: list) -> list:
        if self.count == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)


def open_processes(device_flag: str):
    """(Processes, torch.device) for a run: the launch's process group and its device
    (--device when given; cuda:<local rank> when GPUs exist, else cpu), with cuDNN pinned
    to the same algorithms on every run (no autotuning race, so the same bits)."""
    import torch

    proc = Processes(cpu=device_flag == "cpu" or not torch.cuda.is_available())
    device = torch.device(device_flag) if device_flag else proc.state.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return proc, device


@dataclasses.dataclass
class Drawn:
    """What one process's drawing loop wrote."""
    written: int = 0  # images stored
    no_face: int = 0  # of which stored as faceless (generate --align)
    seconds: float = 0.0
    checksums: list = dataclasses.field(default_factory=list)  # (key, sha256) written


def draw_tiles(tiles: list, draw: Callable[[object, Drawn], None], *, total: int,
               progress: bool, log) -> Drawn:
    """Call `draw(tile, drawn)` for every tile (it stores the tile's missing images and
    counts them into `drawn`) under a progress bar of `total` images. Ctrl-C or SIGTERM
    (SLURM's time limit, `kill`) stops it with every stored image kept; the
    KeyboardInterrupt goes on to the CLI (exit 130)."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True,
               file=sys.stderr, smoothing=0.1)
    drawn = Drawn()
    t0 = time.perf_counter()
    try:
        with cli.sigterm_as_interrupt():
            for tile in tiles:
                before = drawn.written
                draw(tile, drawn)
                bar.update(drawn.written - before)
    except KeyboardInterrupt:
        bar.close()
        log(f"interrupted after {drawn.written} images; re-run the same command to continue")
        raise
    bar.close()
    drawn.seconds = time.perf_counter() - t0
    return drawn


def gather_counts(proc: Processes, drawn: Drawn, skipped: int) -> tuple[list[dict], dict]:
    """Every process's counts and the checksums of every image this run wrote, on every
    process (each process calls it)."""
    counts = proc.gather([{"process": proc.index, "written": drawn.written,
                           "no_face": drawn.no_face, "skipped_existing": skipped,
                           "seconds": round(drawn.seconds, 3)}])
    checksums = proc.gather(drawn.checksums)
    proc.barrier()
    return counts, dict(checksums)


def speed(counts: list[dict]) -> float | None:
    """Images a second of the run: all processes' images over the slowest's seconds."""
    written = sum(c["written"] for c in counts)
    seconds = max(c["seconds"] for c in counts)
    return round(written / seconds, 4) if seconds and written else None
