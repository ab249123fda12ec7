"""Real-data check on scikit-learn's bundled handwritten digits (no download needed).

`build(root)` turns the ten digit classes into identities: two thirds of the images,
upscaled, go to `root/dataset/<%06d>/<%04d>.png` (the layout bridges.generate writes),
pairs of the held-out third to `root/bins/digits.bin`. `python -m
bridges.recognition.digits --out_dir=D` then trains every head through the real
`bridges.train` and verifies it through the real `bridges.evaluate` (10-fold), printing
the table docs/recognition.md quotes (the tests run the same recipe).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from bridges import require_torch_extra

SIZE = 16
MODEL = ["--arch=ir18", "--width=8", f"--input_size={SIZE}", "--embedding_size=64",
         "--batch_size=64", "--lr=0.1", "--workers=0", "--progress=false"]
HEADS = {"adaface": ["--head=adaface"], "arcface": ["--head=arcface"],
         "cosface": ["--head=cosface"], "groupface": ["--head=groupface", "--groups=4"]}
# (head, epochs, epoch of the lr step): the tests' runs, AdaFace full length (> 90 %),
# the other heads shorter (> 75 %).
RUNS = [("adaface", 8, 6), ("arcface", 4, 3), ("cosface", 4, 3), ("groupface", 4, 3)]
FULL = (8, 6)


def _image(pixels: np.ndarray, size: int):
    from PIL import Image

    gray = (pixels * (255.0 / 16.0)).round().astype(np.uint8)
    return Image.fromarray(gray).resize((size, size), Image.BILINEAR).convert("RGB")


def build(root, *, size: int = SIZE, pairs: int = 1000, seed: int = 0) -> tuple[Path, Path]:
    """(training folder, folder holding digits.bin): `pairs` held-out pairs, every other
    one genuine."""
    from sklearn.datasets import load_digits

    from bridges import bins
    from hyperface_jax.io.files import atomic_write

    root = Path(root)
    d = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(d.target))
    cut = len(order) * 2 // 3
    for i in order[:cut]:
        folder = root / "dataset" / f"{d.target[i]:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        image = _image(d.images[i], size)
        atomic_write(folder / f"{i:04d}.png", lambda f, im=image: im.save(f, format="PNG"))
    held = order[cut:]
    labels = d.target[held]
    images, issame = [], []
    for k in range(pairs):
        same = k % 2 == 0
        a = rng.integers(len(held))
        pool = (labels == labels[a]) & (np.arange(len(held)) != a) if same else (
            labels != labels[a])
        b = rng.choice(np.flatnonzero(pool))
        images.append((_image(d.images[held[a]], size), _image(d.images[held[b]], size)))
        issame.append(same)
    (root / "bins").mkdir(parents=True, exist_ok=True)
    bins.write(root / "bins" / "digits.bin", images, issame)
    return root / "dataset", root / "bins"


def train_and_verify(data, bin_dir, out, head_flags, epochs: int, lr_step: int) -> dict:
    """Run the two CLIs; the digits result of results.json."""
    from bridges import evaluate, train

    out = Path(out)
    code = train.main(["train", f"--data={data}", f"--out_dir={out / 'train'}",
                       f"--epochs={epochs}", f"--lr_steps={lr_step}", *MODEL, *head_flags])
    if code:
        raise RuntimeError(f"bridges.train exited with {code}")
    code = evaluate.main(["evaluate", f"--model={out / 'train' / 'model.pt'}",
                          f"--bins={bin_dir}", f"--out_dir={out / 'eval'}", "--progress=false"])
    if code:
        raise RuntimeError(f"bridges.evaluate exited with {code}")
    return json.loads((out / "eval" / "results.json").read_text())["results"]["train"]["digits"]


def main(argv=None) -> int:
    require_torch_extra("bridges.recognition.digits")
    from absl import flags

    from hyperface_jax import cli

    fv = flags.FlagValues()
    flags.DEFINE_string("out_dir", "", "Working folder (required).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the split and the pairs.", flag_values=fv)
    flags.DEFINE_list("train_seeds", ["0"], "Training seeds (--seed of bridges.train); "
                      "figures are reported per seed and as mean and std.", flag_values=fv)
    flags.DEFINE_bool("full", True, "Also train every head for the full length "
                      f"({FULL[0]} epochs).", flag_values=fv)
    flags.DEFINE_integer("threads", 1, "torch intra-op threads.", flag_values=fv)
    return cli.run_main(argv, fv, _run)


def _run(fv) -> None:
    import torch

    torch.set_num_threads(fv.threads)
    out = Path(fv.out_dir)
    data, bin_dir = build(out, seed=fv.seed)
    runs = list(RUNS)
    if fv.full:
        runs += [(head, *FULL) for head in HEADS if (head, *FULL) not in RUNS]
    rows = []
    for head, epochs, lr_step in runs:
        accs, tars, seconds = [], [], []
        for seed in fv.train_seeds:
            t = time.perf_counter()
            r = train_and_verify(data, bin_dir, out / f"{head}_e{epochs}_s{seed}",
                                 [*HEADS[head], f"--seed={seed}"], epochs, lr_step)
            accs.append(r["accuracy_mean"])
            tars.append(r["tar_at_far"])
            seconds.append(time.perf_counter() - t)
        rows.append((head, epochs, accs, tars, float(np.mean(seconds))))
    print("| head | epochs | accuracy (%) per training seed | mean | TAR@FAR=1e-3 (%) mean | "
          "seconds per run |")
    print("|---|---|---|---|---|---|")
    for head, epochs, accs, tars, sec in rows:
        per_seed = ", ".join(f"{100 * a:.1f}" for a in accs)
        print(f"| {head} | {epochs} | {per_seed} | {100 * np.mean(accs):.1f} | "
              f"{100 * np.mean(tars):.1f} | {sec:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
