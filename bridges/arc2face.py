"""Arc2Face: faces from ArcFace embeddings (paper Eq. 3 and Algorithm 3).

`load(arc2face_dir, base_model_dir)` assembles the published components: the fine-tuned
UNet (`<arc2face_dir>/arc2face/`) and CLIP text encoder (`<arc2face_dir>/encoder/`), and
Stable Diffusion 1.5's tokenizer, VAE and scheduler config (`<base_model_dir>/`).
`images(model, embeddings, latent_seeds, ...)` is the one function from embeddings and
seeds to uint8 images; the CLI (`bridges.generate`) only iterates and writes files.

Conditioning. The prompt "photo of a id person" is tokenised; the *input* embedding of
the `id` token is replaced by the unit ArcFace embedding zero-padded to the encoder width;
the CLIP text transformer (causal, so only positions from `id` onward change) turns that
into `prompt_embeds`. Arc2Face's own wrapper subclasses transformers 4.x internals that
5.x removed; here a forward hook on `text_encoder.get_input_embeddings()` replaces the
`id` rows, which works with any transformers whose CLIP text model embeds tokens through
that module (4.x and 5.x), on the unmodified `CLIPTextModel`. transformers 5 maps the
`text_model.`-prefixed keys of checkpoints saved by 4.x onto its layout when loading.

Determinism. Image (i, k) depends only on (seed, i, k) and the fixed denoiser tile:
- its embedding noise eps_ik and initial latent z_ik come from generators seeded by
  `image_seeds(seed, i, k)` (numpy SeedSequence), never from a shared stream;
- the denoiser always runs on the same *tile* of images, (i, k // micro_batch): the
  `micro_batch` images of identity i with k in [g*m, (g+1)*m) (k >= images_per_identity
  are computed and thrown away). Batched matrix products round differently for different
  batch shapes, so fixing the tile (not `--batch_size`, sharding or resume) fixes the bits.
  The cost: up to micro_batch - 1 wasted images per identity when micro_batch does not
  divide images_per_identity, and micro_batch itself is part of the result's identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from hyperface_jax.io.files import InputError

PROMPT = "photo of a id person"
ID_WORD = "id"
ARCFACE_DIM = 512


@dataclasses.dataclass
class Arc2Face:
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    id_token_id: int
    prompt_ids: torch.Tensor        # (1, L) token ids of PROMPT, padded to max length
    negative_embeds: torch.Tensor   # (1, L, W): the encoder's output for "" (no hook)

    @property
    def width(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = int(self.unet.config.sample_size)
        return (int(self.unet.config.in_channels), size, size)

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale


# ----------------------------------------------------------------------------- loading

def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found: {path}")


def check_layout(arc2face_dir, base_model_dir) -> None:
    """Raise InputError naming the first missing folder or config of the two layouts."""
    a, b = Path(arc2face_dir), Path(base_model_dir)
    _require(a, "--arc2face folder")
    _require(a / "arc2face" / "config.json", "Arc2Face UNet config (--arc2face/arc2face/)")
    _require(a / "encoder" / "config.json", "Arc2Face encoder config (--arc2face/encoder/)")
    _require(b, "--base_model folder")
    _require(b / "tokenizer", "tokenizer folder (--base_model/tokenizer/)")
    _require(b / "vae" / "config.json", "VAE config (--base_model/vae/)")
    _require(b / "scheduler" / "scheduler_config.json",
             "scheduler config (--base_model/scheduler/)")


def _loading(what: str, path: Path, fn):
    try:
        return fn()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad model folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"cannot load {what} from {path}: {type(e).__name__}: {first}") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in table:
        raise InputError(f"--dtype={name}: expected auto, float16, bfloat16 or float32")
    return table[name]


def load(arc2face_dir, base_model_dir, *, device="cpu", dtype=torch.float32) -> Arc2Face:
    """Load the Arc2Face components from the published layouts (see module docstring)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    check_layout(arc2face_dir, base_model_dir)
    a, b = Path(arc2face_dir), Path(base_model_dir)
    device = torch.device(device)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = _loading("the tokenizer", b / "tokenizer",
                             lambda: CLIPTokenizer.from_pretrained(b / "tokenizer"))
        text_encoder = _loading("the Arc2Face encoder", a / "encoder",
                                lambda: CLIPTextModel.from_pretrained(a / "encoder", dtype=dtype))
        unet = _loading("the Arc2Face UNet", a / "arc2face",
                        lambda: UNet2DConditionModel.from_pretrained(a / "arc2face", dtype=dtype))
        vae = _loading("the VAE", b / "vae",
                       lambda: AutoencoderKL.from_pretrained(b / "vae", dtype=dtype))
        scheduler_config = _loading(
            "the scheduler config", b / "scheduler",
            lambda: json.loads((b / "scheduler" / "scheduler_config.json").read_text()))
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()

    ids = tokenizer.encode(ID_WORD, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(f"tokenizer in {b / 'tokenizer'} splits {ID_WORD!r} into {len(ids)} "
                         "tokens; Arc2Face needs it to be one token")
    width = int(text_encoder.config.hidden_size)
    if width < ARCFACE_DIM:
        raise InputError(f"encoder width {width} in {a / 'encoder'} is smaller than the "
                         f"ArcFace dimension {ARCFACE_DIM}")
    if int(unet.config.cross_attention_dim) != width:
        raise InputError(f"UNet cross-attention width {unet.config.cross_attention_dim} "
                         f"does not match the encoder width {width}")
    for module in (text_encoder, unet, vae):
        module.to(device).eval().requires_grad_(False)
    prompt_ids = _tokens(tokenizer, PROMPT).to(device)
    if int((prompt_ids == ids[0]).sum()) != 1:
        raise InputError(f"tokenizer in {b / 'tokenizer'} does not give one {ID_WORD!r} token "
                         f"for the prompt {PROMPT!r}")
    with torch.inference_mode():
        negative = text_encoder(input_ids=_tokens(tokenizer, "").to(device))[0]
    return Arc2Face(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae,
                    scheduler_config=dict(scheduler_config), device=device, dtype=dtype,
                    id_token_id=int(ids[0]), prompt_ids=prompt_ids, negative_embeds=negative)


def _tokens(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


# ----------------------------------------------------------------------------- Eq. 3

def image_seeds(seed: int, identity: int, k: int) -> tuple[int, int]:
    """(embedding_seed, latent_seed) of image (identity, k): 63-bit integers derived from
    (seed, identity, k) alone."""
    state = np.random.SeedSequence([int(seed), int(identity), int(k)]).generate_state(
        2, np.uint64)
    return int(state[0] >> np.uint64(1)), int(state[1] >> np.uint64(1))


def perturbed_embedding(reference: np.ndarray, beta: float, embedding_seed: int) -> np.ndarray:
    """Eq. 3: e = normalize(x + beta * eps), eps ~ N(0, I) from `embedding_seed`.
    Computed in float64, returned as float32 (unit norm)."""
    x = np.asarray(reference, np.float64)
    eps = np.random.default_rng(embedding_seed).standard_normal(x.shape[-1])
    e = x + beta * eps
    return (e / np.linalg.norm(e)).astype(np.float32)


def initial_latents(model: Arc2Face, latent_seeds) -> torch.Tensor:
    """z_ik ~ N(0, I), one CPU generator per image (device-independent draws)."""
    draws = []
    for s in latent_seeds:
        g = torch.Generator("cpu").manual_seed(int(s))
        draws.append(torch.randn(model.latent_shape, generator=g, dtype=torch.float32))
    return torch.stack(draws).to(model.device, model.dtype)


# ----------------------------------------------------------------------------- conditioning

@contextlib.contextmanager
def id_token_replaced(text_encoder: torch.nn.Module, id_token_id: int,
                      token_embeddings: torch.Tensor):
    """While active, the input embedding of every `id` token of row r is replaced by
    `token_embeddings[r]` (shape (rows, width)); each row must hold exactly one `id`."""

    def hook(module, inputs, output):
        input_ids = inputs[0]
        mask = input_ids == id_token_id
        per_row = mask.sum(dim=1)
        if output.shape[0] != token_embeddings.shape[0] or not bool((per_row == 1).all()):
            raise ValueError(f"expected {token_embeddings.shape[0]} rows with one id token "
                             f"each; got {output.shape[0]} rows with {per_row.tolist()}")
        replaced = output.clone()
        replaced[mask] = token_embeddings.to(output.dtype)
        return replaced

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def prompt_embeds(model: Arc2Face, embeddings) -> torch.Tensor:
    """(rows, L, width) text-encoder states for unit ArcFace embeddings (rows, 512)."""
    e = torch.as_tensor(np.asarray(embeddings, np.float32)).to(model.device)
    padded = torch.nn.functional.pad(e, (0, model.width - e.shape[1]))
    ids = model.prompt_ids.expand(e.shape[0], -1)
    with torch.inference_mode(), id_token_replaced(model.text_encoder, model.id_token_id,
                                                   padded):
        return model.text_encoder(input_ids=ids)[0]


# ----------------------------------------------------------------------------- sampling

def make_scheduler(model: Arc2Face):
    """A fresh DPM-Solver multistep scheduler from the base model's config (as Arc2Face)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(model.scheduler_config)


@torch.inference_mode()
def denoise(model: Arc2Face, cond: torch.Tensor, latents: torch.Tensor, *, steps: int,
            guidance: float) -> torch.Tensor:
    """The Stable Diffusion sampling loop with classifier-free guidance (as diffusers'
    StableDiffusionPipeline with guidance_rescale 0); returns final latents."""
    scheduler = make_scheduler(model)
    scheduler.set_timesteps(steps, device=model.device)
    latents = latents * scheduler.init_noise_sigma
    guided = guidance > 1.0
    if guided:
        negative = model.negative_embeds.expand(cond.shape[0], -1, -1)
        cond = torch.cat([negative, cond])
    for t in scheduler.timesteps:
        x = torch.cat([latents] * 2) if guided else latents
        x = scheduler.scale_model_input(x, t)
        noise = model.unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]
        if guided:
            uncond, text = noise.chunk(2)
            noise = uncond + guidance * (text - uncond)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    return latents


@torch.inference_mode()
def decode(model: Arc2Face, latents: torch.Tensor) -> np.ndarray:
    """uint8 RGB images (rows, H, W, 3) from latents (diffusers' postprocessing)."""
    x = model.vae.decode(latents / model.vae.config.scaling_factor, return_dict=False)[0]
    x = (x * 0.5 + 0.5).clamp(0, 1)
    x = x.cpu().permute(0, 2, 3, 1).float().numpy()
    return (x * 255).round().astype(np.uint8)


def images(model: Arc2Face, embeddings, latent_seeds, *, steps: int = 25,
           guidance: float = 3.0) -> np.ndarray:
    """Images for unit embeddings (rows, 512) and per-image latent seeds, denoised as ONE
    batch: callers that need batch-independent bits pass fixed tiles (`tiles`)."""
    cond = prompt_embeds(model, embeddings)
    latents = initial_latents(model, latent_seeds)
    return decode(model, denoise(model, cond, latents, steps=steps, guidance=guidance))


def tile_members(identity: int, tile: int, micro_batch: int) -> list[tuple[int, int]]:
    """The (identity, k) images the denoiser always computes together."""
    return [(identity, k) for k in range(tile * micro_batch, (tile + 1) * micro_batch)]


def tile_images(model: Arc2Face, references: np.ndarray, identity: int, tile: int, *,
                micro_batch: int, seed: int, beta: float, steps: int, guidance: float):
    """Images of one tile, (micro_batch, H, W, 3) uint8, and their (e, seeds) records."""
    members = tile_members(identity, tile, micro_batch)
    seeds = [image_seeds(seed, i, k) for i, k in members]
    e = np.stack([perturbed_embedding(references[i], beta, s[0])
                  for (i, _), s in zip(members, seeds, strict=True)])
    out = images(model, e, [s[1] for s in seeds], steps=steps, guidance=guidance)
    return out, e, seeds
