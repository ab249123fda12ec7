"""Tiny random models in the published layouts: try the torch side without the weights.

    python -m bridges.demo_models --out_dir=demo      # then docs/walkthrough.md

The real weights (Arc2Face, Stable Diffusion 1.5, insightface packs; third_party/README.md)
are gigabytes and licence-bound. This module builds models of the same classes with random
weights, a few hundred kilobytes each, saved in the same folder layouts, so every loader a
user runs on the published weights (`bridges.arc2face.load`, insightface's model zoo)
loads them unchanged. The tests build theirs with the same functions.

- `<base>/tokenizer/`  a CLIP byte-level BPE tokenizer whose vocabulary holds the words
  of Arc2Face's prompt ("photo of a id person");
- `<base>/vae/`        a two-level AutoencoderKL (images 2x the latent size);
- `<base>/scheduler/`  Stable Diffusion 1.5's scheduler config (a PNDM config, as
  published; Arc2Face swaps in DPM-Solver from it);
- `<arc2face>/arc2face/` a tiny UNet2DConditionModel (32 x 32 images);
- `<arc2face>/encoder/`  a tiny CLIP text encoder (width > 512, so the zero padding of the
  ArcFace embedding is exercised) saved the way transformers 4.x saved Arc2Face's:
  `pytorch_model.bin` with `text_model.`-prefixed keys and a `CLIPTextModelWrapper`
  architecture name;
- `recognizer()` a tiny ArcFace-shaped ONNX model (1x3x112x112 -> 1x512, legacy exporter,
  opset 17) that insightface's model zoo routes to `ArcFaceONNX`;
- `detector()` a tiny SCRFD-format ONNX detector that insightface routes to `SCRFD`;
- `ldm()`, `ddpm()` tiny unconditional generators saved by diffusers' `LDMPipeline` and
  `DDPMPipeline` (the layouts of CompVis/ldm-celebahq-256 and google/ddpm-celebahq-256),
  for `bridges.gallery`.

The pictures these models draw are coloured noise, not faces: the demo shows the
commands, files, reports and checks of the pipeline, not its quality.
"""

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path

from hyperface_jax.options import SEED_MAX, option

PROMPT_WORDS = ("photo", "of", "a", "id", "person")
WIDTH = 544  # text-encoder width (> 512: the ArcFace embedding is zero-padded to it)
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tokenizer_files(folder: Path, words=PROMPT_WORDS) -> Path:
    """Write vocab.json, merges.txt and the configs of a tiny CLIP tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        # Merge left to right: p h o t o</w> -> ph o t o</w> -> pho t o</w> -> ...
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "do_lower_case": True}))
    return folder


def base_model(folder: Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-1.5-shaped folder: tokenizer/, vae/, scheduler/."""
    import torch
    from diffusers import AutoencoderKL

    folder = Path(folder)
    tokenizer_files(folder / "tokenizer")
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=32)
    vae.save_pretrained(folder / "vae")
    # Stable Diffusion 1.5's published scheduler/scheduler_config.json, verbatim.
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "trained_betas": None, "clip_sample": False}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "tokenizer": ["transformers", "CLIPTokenizer"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "PNDMScheduler"]}))
    return folder


def text_encoder_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=WIDTH,
        hidden_act="quick_gelu",
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def arc2face(folder: Path, seed: int = 1, *, vocab_size: int | None = None) -> Path:
    """An Arc2Face-shaped folder: arc2face/ (UNet) and encoder/ (4.x-format CLIP text)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    if vocab_size is None:
        vocab_size = len(json.loads((tokenizer_files(folder / ".vocab") / "vocab.json")
                                    .read_text()))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH, attention_head_dim=4)
    unet.save_pretrained(folder / "arc2face")
    encoder = CLIPTextModel(text_encoder_config(vocab_size)).eval()
    save_encoder_like_transformers_4(encoder, folder / "encoder")
    return folder


def save_encoder_like_transformers_4(encoder, folder: Path) -> None:
    """Save a CLIP text encoder as Arc2Face's was saved (transformers 4.x): the module tree
    under `text_model.`, `pytorch_model.bin`, architecture `CLIPTextModelWrapper`."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    c = encoder.config
    # The keys a transformers 4.x CLIPTextConfig wrote (`torch_dtype`, not 5.x's `dtype`).
    config = {
        "_name_or_path": "runwayml/stable-diffusion-v1-5",
        "architectures": ["CLIPTextModelWrapper"], "model_type": "clip_text_model",
        "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": c.hidden_act,
        "hidden_size": c.hidden_size, "initializer_factor": 1.0, "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size, "layer_norm_eps": c.layer_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers, "projection_dim": c.projection_dim,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id, "vocab_size": c.vocab_size,
        "torch_dtype": "float32", "transformers_version": "4.38.2"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {f"text_model.{k}": v.clone() for k, v in encoder.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")


def _tiny_unet(cls, *, sample_size: int, widths: tuple[int, int]):
    """A two-level unconditional UNet2DModel on 3 channels, attention at the lower level
    (the published CelebA-HQ UNets have both kinds of blocks)."""
    return cls(sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1,
               block_out_channels=widths, norm_num_groups=8, attention_head_dim=8,
               down_block_types=("DownBlock2D", "AttnDownBlock2D"),
               up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def ldm(folder: Path, seed: int = 5) -> Path:
    """A folder in the layout of CompVis/ldm-celebahq-256 (diffusers' LDMPipeline:
    model_index.json, unet/ UNet2DModel, vqvae/ VQModel, scheduler/ DDIMScheduler), tiny:
    8 x 8 x 3 latents decoded to 32 x 32 images."""
    import torch
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(seed)
    unet = _tiny_unet(UNet2DModel, sample_size=8, widths=(16, 32))
    vqvae = VQModel(
        in_channels=3, out_channels=3, latent_channels=3, num_vq_embeddings=64, vq_embed_dim=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=32)
    # The published scheduler's settings (scaled-linear betas 0.0015..0.0195, as in the
    # LDM CelebA-HQ configuration).
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                              beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=True)
    # .bin weights, as published (read by diffusers with torch's weights-only loader).
    LDMPipeline(vqvae=vqvae.eval(), unet=unet.eval(), scheduler=scheduler).save_pretrained(
        folder, safe_serialization=False)
    return Path(folder)


def ddpm(folder: Path, seed: int = 6) -> Path:
    """A folder in the layout of google/ddpm-celebahq-256 (diffusers' DDPMPipeline, flat as
    published: model_index.json, the UNet2DModel's config.json and
    diffusion_pytorch_model.bin, the DDPMScheduler's scheduler_config.json), tiny: 16 x 16
    images."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = _tiny_unet(UNet2DModel, sample_size=16, widths=(8, 16))
    # The published scheduler's settings (the DDPM paper's linear betas 1e-4..0.02).
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                              beta_schedule="linear", variance_type="fixed_small",
                              clip_sample=True)
    folder = Path(folder)
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(
        folder, safe_serialization=False)
    for part in ("unet", "scheduler"):  # flatten: the published repository has no subfolders
        for f in (folder / part).iterdir():
            f.rename(folder / f.name)
        (folder / part).rmdir()
    return folder


@contextlib.contextmanager
def _legacy_onnx_export():
    """The TorchScript exporter (the graphs insightface's zoo routes by their shapes),
    without its deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        yield


def recognizer(path: Path, seed: int = 2, dim: int = 512) -> Path:
    """A tiny ArcFace-shaped ONNX model: (N, 3, 112, 112) float -> (N, dim)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4), nn.PReLU(8), nn.Conv2d(8, 16, 2, stride=2), nn.PReLU(16),
        nn.AvgPool2d(7), nn.Flatten(), nn.Linear(64, dim), nn.BatchNorm1d(dim)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _legacy_onnx_export():
        torch.onnx.export(model, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False,
                          opset_version=17, input_names=["input.1"],
                          output_names=["embedding"],
                          dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}})
    return path


def detector(path: Path, size: int = 64, level: float = 0.5) -> Path:
    """A tiny SCRFD-format detector (9 outputs: scores, box distances and 5 keypoints for
    strides 8, 16, 32, two anchors per cell, fixed size x size input) that insightface's
    model zoo routes to its `SCRFD` class. It "sees a face" in every cell whose mean
    brightness ((x - 127.5) / 128) exceeds `level`: a bright square is a face, a black
    image has none. Boxes and
    keypoints are fixed offsets around the cell centre (eyes, nose, mouth corners)."""
    import torch
    from torch import nn

    class TinySCRFD(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("box", torch.ones(1, 4))
            self.register_buffer("kps", torch.tensor(
                [[-0.7, -0.5, 0.7, -0.5, 0.0, 0.2, -0.5, 0.8, 0.5, 0.8]]))

        def forward(self, x):
            gray = x.mean(dim=1, keepdim=True)  # (x - 127.5) / 128 per pixel
            scores, boxes, points = [], [], []
            for stride in (8, 16, 32):
                cells = nn.functional.avg_pool2d(gray, stride)
                score = torch.sigmoid(20 * (cells - level)).permute(0, 2, 3, 1).reshape(-1, 1)
                score = score.repeat_interleave(2, dim=0)  # two anchors per cell
                ones = torch.ones_like(score)
                scores.append(score)
                boxes.append(ones * self.box)
                points.append(ones * self.kps)
            return (*scores, *boxes, *points)

    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    with _legacy_onnx_export():
        torch.onnx.export(TinySCRFD().eval(), (torch.zeros(1, 3, size, size),), str(path),
                          dynamo=False, opset_version=17, input_names=["input.1"],
                          output_names=names)
    return path


# ----------------------------------------------------------------------------- the demo

# A detector level below any pixel's brightness: the demo detector "sees" a face in every
# image (the tiny random UNet draws noise, which no real detector would accept), so the
# --align and --detector paths run on every image.
EVERYWHERE = -2.0


def photos(folder: Path, people: int = 6, per_person: int = 4, size: int = 96,
           seed: int = 3) -> Path:
    """`folder/<person>/<k>.png`: per person a smooth random colour pattern, its photos
    noisy copies (stand-ins for face photos; the demo recogniser is random anyway)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for p in range(people):
        coarse = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), float)
        person = folder / f"person_{p:02d}"
        person.mkdir(parents=True, exist_ok=True)
        for k in range(per_person):
            image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(person / f"{k}.png")
    return folder


def verification_bin(path: Path, photo_folder: Path, pairs: int = 40, seed: int = 4) -> Path:
    """An insightface-format `.bin` of photo pairs, every other pair the same person."""
    import numpy as np
    from PIL import Image

    from bridges import bins

    people = sorted(p for p in photo_folder.iterdir() if p.is_dir())
    shots = [sorted(p.glob("*.png")) for p in people]
    rng = np.random.default_rng(seed)
    chosen, issame = [], []
    for k in range(pairs):
        a = int(rng.integers(len(people)))
        if k % 2 == 0:
            i, j = rng.choice(len(shots[a]), 2, replace=False)
            files = (shots[a][i], shots[a][j])
        else:
            b = (a + 1 + int(rng.integers(len(people) - 1))) % len(people)
            files = (shots[a][int(rng.integers(len(shots[a])))],
                     shots[b][int(rng.integers(len(shots[b])))])
        chosen.append(tuple(np.asarray(Image.open(f).convert("RGB")) for f in files))
        issame.append(k % 2 == 0)
    bins.write(path, chosen, issame)
    return path


def build(out_dir, *, seed: int = 0, log=None) -> dict[str, str]:
    """Every demo model in the published layouts, demo photos and a verification set:

        <out_dir>/weights/arc2face/{arc2face/,encoder/,arcface.onnx}   --arc2face, --recognizer
        <out_dir>/weights/sd15/{tokenizer/,vae/,scheduler/}            --base_model
        <out_dir>/weights/buffalo_l/det_10g.onnx                       --detector
        <out_dir>/weights/ldm/{model_index.json,unet/,vqvae/,scheduler/} bridges.gallery --generator
        <out_dir>/weights/ddpm/{model_index.json,config.json,...}        bridges.gallery --generator
        <out_dir>/photos/person_<p>/<k>.png                            bridges.embed --images
        <out_dir>/bins/demo.bin                                        bridges.evaluate --bins

    Built in a temporary sibling folder and renamed into place: a failure or a kill
    leaves nothing at `out_dir`. Returns {what: path}."""
    import os
    import shutil
    import tempfile

    from hyperface_jax.io.files import InputError

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out_dir {out} already exists and is not an empty folder; "
                         "use a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = log or (lambda msg: None)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the demo is a normal folder
    try:
        weights = tmp / "weights"
        log("Stable Diffusion 1.5 layout (tokenizer, VAE, scheduler)")
        base_model(weights / "sd15", seed=seed)
        vocab = json.loads((weights / "sd15" / "tokenizer" / "vocab.json").read_text())
        log("Arc2Face layout (UNet, transformers-4.x encoder)")
        arc2face(weights / "arc2face", seed=seed + 1, vocab_size=len(vocab))
        log("ArcFace recogniser and SCRFD detector (ONNX)")
        recognizer(weights / "arc2face" / "arcface.onnx", seed=seed + 2)
        detector(weights / "buffalo_l" / "det_10g.onnx", level=EVERYWHERE)
        log("unconditional face generators: LDM and DDPM layouts")
        ldm(weights / "ldm", seed=seed + 5)
        ddpm(weights / "ddpm", seed=seed + 6)
        log("photos and a verification set")
        photos(tmp / "photos", seed=seed + 3)
        verification_bin(tmp / "bins" / "demo.bin", tmp / "photos", seed=seed + 4)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"arc2face": str(out / "weights" / "arc2face"),
            "base_model": str(out / "weights" / "sd15"),
            "recognizer": str(out / "weights" / "arc2face" / "arcface.onnx"),
            "detector": str(out / "weights" / "buffalo_l" / "det_10g.onnx"),
            "generator": str(out / "weights" / "ldm"),
            "generator_ddpm": str(out / "weights" / "ddpm"),
            "photos": str(out / "photos"), "bins": str(out / "bins")}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    # No output role (so no folder lock): build() makes the demo in a temporary sibling and
    # renames it into place; a lock file inside out_dir would make it non-empty.
    out_dir: str = option("", "Folder to create (must not exist or be empty).")
    seed: int = option(0, "Seed of the random weights and photos.", low=0, high=SEED_MAX)


def main(argv: list[str] | None = None) -> int:
    from bridges import require_torch_extra

    require_torch_extra("bridges.demo_models")
    import sys

    from hyperface_jax import cli

    def job(fv: DemoConfig):
        import time

        import torch

        from hyperface_jax.io.files import InputError

        if not fv.out_dir:
            raise InputError("--out_dir is required")
        started = time.perf_counter()
        with torch.random.fork_rng():
            paths = build(fv.out_dir, seed=fv.seed,
                          log=lambda msg: print(f"building {msg}", file=sys.stderr))
        print(f"demo models in {fv.out_dir} ({time.perf_counter() - started:.1f} s):",
              file=sys.stderr)
        for what, path in paths.items():
            print(f"  --{what}={path}", file=sys.stderr)
        print("next: the walk-through in docs/walkthrough.md", file=sys.stderr)

    return cli.run_main(argv, DemoConfig, job)


if __name__ == "__main__":
    from hyperface_jax import cli

    cli.exit_process(main())
