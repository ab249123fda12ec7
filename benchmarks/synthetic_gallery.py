"""A labelled synthetic gallery for the sampler and optimizer comparisons (no real faces).

    python benchmarks/synthetic_gallery.py --identities=500 --per_identity=8 --dim=128 \\
        --out_dir=runs/gallery128

`--identities` centres uniform on the unit sphere (numpy PCG64, --seed); each image is
normalize(centre + spread * eps), eps ~ N(0, I/d) (spread 0.7: cosine to the centre about
0.8). Writes gallery.npy (float32, unit rows) and gallery_labels.npy (int64).
It stands in for a real gallery's shape only: real FR embeddings are not uniform.
"""

import argparse
from pathlib import Path

import numpy as np

from hyperface_jax.io.files import save_embeddings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--identities", type=int, default=500)
    p.add_argument("--per_identity", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--spread", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out_dir", default="runs/gallery128")
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    centres = rng.standard_normal((a.identities, a.dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(a.identities), a.per_identity)
    x = centres[labels] + a.spread * rng.standard_normal((len(labels), a.dim)) / np.sqrt(a.dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = Path(a.out_dir)
    save_embeddings(out / "gallery.npy", x)
    np.save(out / "gallery_labels.npy", labels)
    print(f"{len(x)} images of {a.identities} identities in {a.dim}-D -> {out}")


if __name__ == "__main__":
    main()
