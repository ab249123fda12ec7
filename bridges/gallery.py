"""`python -m bridges.gallery`: N unconditional face images from a generator, resumably.

    python -m bridges.gallery --generator=weights/ldm --num_images=10000 \
        --seed=0 --out_dir=faces/gallery
    python -m bridges.gallery --generator=weights/ldm --num_images=10000 \
        --seed=1 --out_dir=faces/init        # the paper's separate initialisation faces
    torchrun --nproc_per_node=4 -m bridges.gallery ...   # the images split over processes

The generator is a folder in its published diffusers layout (bridges.unconditional): the
Latent Diffusion Model of CompVis/ldm-celebahq-256 or the DDPM of google/ddpm-celebahq-256,
told apart by its model_index.json. Writes `<out_dir>/<n:06d>.png` for n in [0,
--num_images) (each to a temporary name, then renamed), `manifest.jsonl` (index, seed and
sha256 of every image), `generation.json` (the settings that fix the pixels; a re-run with
others is refused) and `report.json`. Then `bridges.embed --images=<out_dir>` makes the
gallery (or init) embeddings, listing and dropping the images without a face.

Image n is a function of (--seed, n, --steps) and the model alone: its noise is drawn from
its own stream (seed, n), and the denoiser computes it alone (a batch of one), since its
kernels sum in another order for another batch shape. So --batch_size (images drawn and
written per step), the number of processes, interruptions and --num_images never change
its bits.
Re-running redraws only missing or damaged images (sha256 of manifest.jsonl).

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

from bridges import require_torch_extra, resumable, set_threads
from bridges.resumable import Drawn
from hyperface_jax import cli
from hyperface_jax.io import integrity
from hyperface_jax.io.files import InputError, save_json
from hyperface_jax.options import option

IMAGE_NAME = re.compile(r"^(\d{6,})\.png$")
# Flags whose change alters the pixels of image n: recorded in generation.json.
PIXEL_FLAGS = ("seed", "steps")
# Images per denoiser call: one, so that no image depends on what it was batched with
# (recorded, so a folder drawn in batches by an earlier version is refused, not mixed).
DENOISER_BATCH = 1


@dataclasses.dataclass(frozen=True)
class GalleryConfig:
    HELP_ORDER = ("inputs", "images", "compute", "run")

    generator: str = option("", "Generator folder in its published diffusers layout: "
                            "CompVis/ldm-celebahq-256 (LDMPipeline) or google/ddpm-celebahq-256 "
                            "(DDPMPipeline), told apart by its model_index.json.", group="inputs")
    num_images: int | None = option(None, "Images to draw: indices 0 .. N-1 (required).",
                             group="images", low=1)
    steps: int = option(50, "Sampler steps (DDIM for the LDM; the DDPM strides its 1000 training "
                        "steps).", group="images", low=1)
    seed: int = option(0, "Seed; image n is drawn from the stream (seed, n). Use another seed "
                       "for a disjoint set (e.g. the init faces).", group="images", low=0)
    batch_size: int = option(8, "Images drawn and written per step (the tile a process claims). "
                             "Not part of the pixels: the denoiser draws each image alone.",
                             group="images", low=1)
    out_dir: str = option("", "Folder of <n:06d>.png, manifest.jsonl, report.json. Re-running on "
                          "it resumes.", group="run", role="output_dir")
    device: str = option("", "torch device; empty: the process's device (cuda:<local rank> when "
                         "GPUs exist, else cpu).", group="compute")
    threads: int = option(0, "torch CPU threads; 0: picked from the free cores. Bits are "
                          "reproducible at a fixed thread count.", group="compute", low=0)
    progress: bool = option(True, "Show a progress bar (main process).", group="run")


def image_path(out: Path, n: int) -> Path:
    return out / f"{n:06d}.png"


def tile_indices(tile: int, batch_size: int, num_images: int) -> range:
    return range(tile * batch_size, min((tile + 1) * batch_size, num_images))


def manifest_checksums(out: Path) -> dict[int, str]:
    return resumable.read_manifest_checksums(out / "manifest.jsonl", lambda r: int(r["index"]))


@dataclasses.dataclass
class Plan:
    """A drawing job ready to run: validated flags, this process and the loaded pipeline."""
    fv: GalleryConfig
    proc: resumable.Processes
    device: object
    threads: int
    pipe: object
    identity: dict

    @property
    def out(self) -> Path:
        return Path(self.fv.out_dir)

    @property
    def tiles(self) -> int:
        return math.ceil(self.fv.num_images / self.fv.batch_size)

    def indices(self, tile: int) -> range:
        return tile_indices(tile, self.fv.batch_size, self.fv.num_images)


def plan(fv) -> Plan:
    """Check the flags and the generator's layout, load it and refuse an --out_dir whose
    images were made with other settings. Writes nothing."""
    from bridges import unconditional

    if not fv.generator:
        raise InputError("--generator is required")
    if fv.num_images is None:
        raise InputError("--num_images is required")
    name = unconditional.check_layout(fv.generator)
    threads = set_threads(fv.threads)
    proc, device = resumable.open_processes(fv.device)
    pipe = unconditional.load(fv.generator, device=device)
    identity = {k: getattr(fv, k) for k in PIXEL_FLAGS}
    identity["denoiser_batch"] = DENOISER_BATCH
    # The folder's path is not part of it (it may be mounted elsewhere); it is in the report.
    identity.update(pipeline=name, image_size=unconditional.image_size(pipe),
                    device_type=device.type,
                    model_index_sha256=integrity.sha256_file(
                        Path(fv.generator) / "model_index.json"))
    resumable.check_same_settings(Path(fv.out_dir) / "generation.json", identity)
    return Plan(fv, proc, device, threads, pipe, identity)


@dataclasses.dataclass
class Work:
    mine: list[int]  # tiles this process owns
    pending: list[int]  # those with an image missing
    todo: int
    skipped: int


def resume(p: Plan, log) -> Work:
    """Delete the damaged images of this process's tiles and list what is left to draw."""
    mine = [t for t in range(p.tiles) if resumable.tile_owner(t, p.proc.count) == p.proc.index]
    checksums = manifest_checksums(p.out)
    damaged = [image_path(p.out, n) for t in mine for n in p.indices(t)
               if image_path(p.out, n).exists()
               and resumable.is_damaged(image_path(p.out, n), checksums.get(n))]
    for path in damaged:
        path.unlink()
    if damaged:
        log(f"redrawing {len(damaged)} damaged images (checksum or decoding failed; first: "
            f"{damaged[0]})")
    missing = {t: sum(not image_path(p.out, n).exists() for n in p.indices(t)) for t in mine}
    todo = sum(missing.values())
    return Work(mine, [t for t in mine if missing[t]], todo,
                sum(len(p.indices(t)) for t in mine) - todo)


def draw_tile(p: Plan, tile: int, drawn: Drawn) -> None:
    """Draw the tile's images not on disk yet, each alone (batch-invariant bits)."""
    from bridges import unconditional

    for n in p.indices(tile):
        if not image_path(p.out, n).exists():
            rgb = unconditional.draw(p.pipe, [unconditional.image_seed(p.fv.seed, n)],
                                     steps=p.fv.steps)[0]
            drawn.checksums.append((n, resumable.write_png(image_path(p.out, n), rgb)))
            drawn.written += 1


def write_manifest(out: Path, seed: int, written: dict[int, str]) -> list[dict]:
    """Rewrite manifest.jsonl from the images on disk (sorted): the same file whoever writes
    it, however the images were split or resumed. An image's sha256 is the one taken when
    this run wrote it, else the previous manifest's (its owner verified it), else that of
    a file that decodes completely; one that does not decode is left out (redrawn next)."""
    from bridges import unconditional

    previous = manifest_checksums(out)
    records = []
    for n in sorted(int(m.group(1)) for p in out.iterdir() if (m := IMAGE_NAME.match(p.name))):
        digest = written.get(n) or previous.get(n)
        if digest is None:
            if not resumable.png_decodes(image_path(out, n)):
                continue
            digest = integrity.sha256_file(image_path(out, n))
        records.append({"index": n, "path": image_path(Path(), n).as_posix(),
                        "seed": unconditional.image_seed(seed, n), "sha256": digest})
    return resumable.write_manifest(out / "manifest.jsonl", records)


def run(fv, *, log=None) -> dict:
    """Draw (or resume) this process's tiles; the main process then writes manifest.jsonl
    and report.json. Returns the report (main process) or {}."""
    started = time.time()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    p = plan(fv)
    try:
        if p.proc.is_main:  # inputs are valid: from here on, files are written
            p.out.mkdir(parents=True, exist_ok=True)
            save_json(p.out / "generation.json", p.identity)
            if resumable.remove_stale_temporaries([p.out]):
                log("removed temporary files left by an interrupted run")
        p.proc.barrier()
        work = resume(p, log)
        resumable.log_resume(p.out, work.skipped, work.todo, p.proc, log)
        log(f"process {p.proc.index}/{p.proc.count} on {p.device} ({p.threads} threads): "
            f"{p.identity['pipeline']}, {fv.num_images} images, {work.todo} to draw, "
            f"{work.skipped} already done, batch {fv.batch_size}")
        drawn = resumable.draw_tiles(
            work.pending, lambda t, d: draw_tile(p, t, d), total=work.todo,
            progress=fv.progress and p.proc.is_main, log=log)
        counts, checksums = resumable.gather_counts(p.proc, drawn, work.skipped)
        if not p.proc.is_main:
            return {}
        manifest = write_manifest(p.out, fv.seed, checksums)
        report = make_report(p, counts, manifest, started)
        save_json(p.out / "report.json", report)
        log(f"done: {report['written_this_run']} images drawn, {report['images_in_range']} "
            f"of {fv.num_images} on disk -> {p.out}")
        return report
    finally:
        p.proc.close()


def make_report(p: Plan, counts: list[dict], manifest: list[dict], started: float) -> dict:
    import diffusers
    import torch

    fv = p.fv
    return {
        "generator": fv.generator,
        "pipeline": p.identity["pipeline"],
        "num_images": fv.num_images,
        "images_in_range": sum(r["index"] < fv.num_images for r in manifest),
        "written_this_run": sum(c["written"] for c in counts),
        "skipped_existing": sum(c["skipped_existing"] for c in counts),
        "processes": p.proc.count,
        "per_process": counts,
        "images_per_second": resumable.speed(counts),
        "wall_seconds": round(time.time() - started, 3),
        "generation": p.identity,
        "flags": dict(sorted(dataclasses.asdict(fv).items())),
        "device": str(p.device),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    require_torch_extra("bridges.gallery")
    return cli.run_main(argv, GalleryConfig, run)


if __name__ == "__main__":
    sys.exit(main())
