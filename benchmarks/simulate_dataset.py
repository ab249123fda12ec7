"""Stand-in for a generated dataset at the embedding level: images around each identity.

    python benchmarks/simulate_dataset.py --identities=runs/x/embeddings.npy \\
        --per_identity=16 --noise=1.0 --out_dir=runs/x/simulated

For identity i with reference embedding x_i, image k's feature is
normalize(x_i + noise * eps_ik), eps ~ N(0, I/d) (numpy PCG64, --seed): with noise 1 its
cosine to x_i is about 0.71, a loose stand-in for what Arc2Face images of x_i embed to.
Writes features.npy (float32, unit rows) and labels.npy (int64, identity i). It lets
`python -m hyperface_jax.analyze` compare samplers before any image is drawn; it does not
replace measuring the features of real generated images.
"""

import argparse
from pathlib import Path

import numpy as np

from hyperface_jax.io.files import load_embeddings, save_embeddings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--identities", required=True, help="(n, d) reference embeddings .npy")
    p.add_argument("--per_identity", type=int, default=16)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out_dir", required=True)
    a = p.parse_args()
    x = load_embeddings(a.identities, "identities")
    n, d = x.shape
    rng = np.random.default_rng(a.seed)
    labels = np.repeat(np.arange(n), a.per_identity)
    f = x[labels] + a.noise * rng.standard_normal((len(labels), d), np.float32) / np.sqrt(d)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    out = Path(a.out_dir)
    save_embeddings(out / "features.npy", f)
    np.save(out / "labels.npy", labels)
    print(f"{len(f)} features of {n} identities -> {out}")


if __name__ == "__main__":
    main()
