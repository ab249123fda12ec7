"""Tiny randomly-initialised stand-ins for the published weights, in the real layouts.

The real weights (Arc2Face, Stable Diffusion 1.5, insightface packs) cannot be fetched
here, so tests build models of the same classes, save them in the folder layouts that
`third_party/README.md` describes and load them back through the code users run:

- `<base>/tokenizer/`  a CLIP byte-level BPE tokenizer whose vocabulary holds the words
  of Arc2Face's prompt ("photo of a id person");
- `<base>/vae/`        a two-level AutoencoderKL (images 2x the latent size);
- `<base>/scheduler/`  Stable Diffusion 1.5's scheduler config (a PNDM config, as
  published; Arc2Face swaps in DPM-Solver from it);
- `<arc2face>/arc2face/` a tiny UNet2DConditionModel;
- `<arc2face>/encoder/`  a tiny CLIP text encoder (width > 512, so the zero padding of the
  ArcFace embedding is exercised) saved the way transformers 4.x saved Arc2Face's:
  `pytorch_model.bin` with `text_model.`-prefixed keys and a `CLIPTextModelWrapper`
  architecture name;
- `recognizer.onnx` a tiny ArcFace-shaped ONNX model (1x3x112x112 -> 1x512, legacy
  exporter, opset 17) that insightface's model zoo routes to `ArcFaceONNX`.
"""

import json
from pathlib import Path

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


def recognizer(path: Path, seed: int = 2, dim: int = 512) -> Path:
    """A tiny ArcFace-shaped ONNX model: (N, 3, 112, 112) float -> (N, dim)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4), nn.PReLU(8), nn.Conv2d(8, 16, 2, stride=2), nn.PReLU(16),
        nn.AvgPool2d(7), nn.Flatten(), nn.Linear(64, dim), nn.BatchNorm1d(dim)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False,
                      opset_version=17, input_names=["input.1"], output_names=["embedding"],
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
    torch.onnx.export(TinySCRFD().eval(), (torch.zeros(1, 3, size, size),), str(path),
                      dynamo=False, opset_version=17, input_names=["input.1"],
                      output_names=names)
    return path
