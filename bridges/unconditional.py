"""Unconditional face generators in their published diffusers layouts: check, load, draw.

- LDM, `CompVis/ldm-celebahq-256`: `model_index.json` naming `LDMPipeline`, `unet/`
  (UNet2DModel), `vqvae/` (VQModel), `scheduler/` (DDIMScheduler); the sampler is DDIM
  with eta = 0 (no noise after the start).
- DDPM, `google/ddpm-celebahq-256`: `model_index.json` naming `DDPMPipeline` with the
  UNet2DModel and DDPMScheduler; published flat (the UNet's `config.json` and weights and
  `scheduler_config.json` beside `model_index.json`), which diffusers loads as it loads
  `unet/` and `scheduler/` subfolders; ancestral sampling draws fresh noise at every step.

Image n of a run with seed s is drawn from its own torch generator seeded with
`image_seed(s, n)`: its starting noise and, for DDPM, every step's noise come from that
stream alone, so which other images share its batch, process or run never changes the
noise it sees. (The denoiser's arithmetic does depend on the batch it runs in: CPU and GPU
kernels sum in a different order for another batch shape, so bridges.gallery draws every
image alone.)

StyleGAN, the paper's default, is published as pickles that run code when loaded; it is
not supported (docs/bridges.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hyperface_jax.io.files import InputError

# pipeline class -> {component: (library class, files one of which must exist)}
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LAYOUTS = {
    "LDMPipeline": {"unet": ("UNet2DModel", WEIGHTS), "vqvae": ("VQModel", WEIGHTS),
                    "scheduler": ("DDIMScheduler", ("scheduler_config.json",))},
    "DDPMPipeline": {"unet": ("UNet2DModel", WEIGHTS),
                     "scheduler": ("DDPMScheduler", ("scheduler_config.json",))},
}
PUBLISHED = {"LDMPipeline": "CompVis/ldm-celebahq-256", "DDPMPipeline": "google/ddpm-celebahq-256"}


def image_seed(seed: int, index: int) -> int:
    """The 63-bit seed of image `index` of a run with `seed`: a function of both alone
    (different seeds give unrelated streams, so two runs with different seeds draw
    disjoint image sets)."""
    state = np.random.SeedSequence([int(seed), int(index), 0x6A11]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def check_layout(folder) -> str:
    """The pipeline class of a generator folder in a supported published layout; an
    InputError naming what is wrong otherwise. Reads only small JSON files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--generator folder not found: {folder}")
    index = folder / "model_index.json"
    if not index.is_file():
        pickles = sorted(p.name for p in folder.glob("*.pkl"))
        why = (f" ({pickles[0]} looks like a StyleGAN pickle: pickles run code when loaded "
               "and are not supported, see docs/bridges.md)" if pickles else "")
        raise InputError(f"--generator={folder} is not a diffusers generator folder (no "
                         f"model_index.json){why}")
    try:
        spec = json.loads(index.read_text())
        name = spec["_class_name"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(f"{index} is not a diffusers model index (JSON with "
                         "_class_name)") from None
    if name not in LAYOUTS:
        raise InputError(f"--generator={folder} holds a {name}; bridges.gallery draws with "
                         f"{' or '.join(f'{k} ({v})' for k, v in PUBLISHED.items())}")
    for component, (cls, files) in LAYOUTS[name].items():
        if not isinstance(spec.get(component), list) or spec[component][-1] != cls:
            raise InputError(f"{index}: {name} needs {component} = {cls} (the layout of "
                             f"{PUBLISHED[name]}), found {spec.get(component)!r}")
        # A component without its subfolder lives in the folder itself (diffusers' rule).
        sub = folder / component if (folder / component).is_dir() else folder
        config = "scheduler_config.json" if component == "scheduler" else "config.json"
        if not (sub / config).is_file():
            raise InputError(f"wrong layout: {sub / config} is missing (the {component} of "
                             f"{PUBLISHED[name]})")
        if not any((sub / f).is_file() for f in files):
            raise InputError(f"wrong layout: {sub} has no weights ({' or '.join(files)})")
    return name


def load(folder, *, device="cpu"):
    """The diffusers pipeline of a checked generator folder, in float32 on `device`
    (local files only; a .bin checkpoint is read with torch's weights-only loader)."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    name = check_layout(folder)
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" on stderr
    try:
        pipe = getattr(diffusers, name).from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors, torch and diffusers raise many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"cannot load the {name} in {folder}: {type(e).__name__}: "
                         f"{first[:200]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def image_size(pipe) -> int:
    """Side of the images the pipeline draws (the VQ-VAE upsamples the UNet's latents)."""
    size = pipe.unet.config.sample_size
    if hasattr(pipe, "vqvae"):
        size *= 2 ** (len(pipe.vqvae.config.block_out_channels) - 1)
    return int(size)


def draw(pipe, seeds: list[int], *, steps: int) -> np.ndarray:
    """RGB uint8 images (len(seeds), H, W, 3): one batch through the published pipeline,
    image j from the generator seeded with seeds[j] (starting noise and every step's)."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    with torch.inference_mode():
        images = pipe(batch_size=len(seeds), generator=generators, num_inference_steps=steps,
                      output_type="np").images
    return (np.asarray(images) * 255).round().astype(np.uint8)  # as the pipeline's to-PIL
