"""Does an image's denoising depend on the batch it is computed in? And what does the
fixed micro-batch (tile) of bridges.generate cost in throughput?

    python benchmarks/denoiser_batch_invariance.py [--threads=1] [--width=64]

Builds a randomly initialised UNet2DConditionModel and CLIP encoder (the real classes,
wider than the test fixtures) with the tiny VAE of tests/bridges_models.py, then:
1. denoises image 0 alone and inside batches of 2, 4 and 8 (same seeds, same conditioning)
   and prints the largest latent difference and how many uint8 pixels differ;
2. times images/s for micro-batches 1, 4, 8.
Random weights: the figures speak about arithmetic, not image quality.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridges import arc2face  # noqa: E402
from tests import bridges_models  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=64, help="first UNet block width")
    p.add_argument("--sample", type=int, default=32, help="latent side")
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = bridges_models.base_model(root / "sd15")
        a2f = bridges_models.arc2face(root / "a2f")
        from diffusers import UNet2DConditionModel

        torch.manual_seed(0)
        UNet2DConditionModel(
            sample_size=a.sample, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(a.width, 2 * a.width), norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=bridges_models.WIDTH, attention_head_dim=8,
        ).save_pretrained(a2f / "arc2face")
        model = arc2face.load(a2f, base)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, 512)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        seeds = list(range(100, 108))
        cond = arc2face.prompt_embeds(model, x)
        z = arc2face.initial_latents(model, seeds)
        alone = arc2face.denoise(model, cond[:1], z[:1], steps=a.steps, guidance=3.0)
        alone_img = arc2face.decode(model, alone)
        print(f"torch {torch.__version__}, threads {a.threads}, UNet width {a.width}, "
              f"latent {a.sample}x{a.sample}, {a.steps} steps")
        for b in (2, 4, 8):
            lat = arc2face.denoise(model, cond[:b], z[:b], steps=a.steps, guidance=3.0)
            img = arc2face.decode(model, lat)
            diff = float((lat[:1] - alone).abs().max())
            pixels = int((img[0] != alone_img[0]).any(axis=-1).sum())
            print(f"image 0 in a batch of {b}: max |latent diff| = {diff:.3g}, "
                  f"differing pixels = {pixels} of {img.shape[1] * img.shape[2]}")
        for mb in (1, 4, 8):
            t = time.perf_counter()
            for s in range(0, 8, mb):
                arc2face.images(model, x[s:s + mb], seeds[s:s + mb], steps=a.steps,
                                guidance=3.0)
            dt = time.perf_counter() - t
            print(f"micro_batch {mb}: {8 / dt:.2f} images/s")


if __name__ == "__main__":
    main()
