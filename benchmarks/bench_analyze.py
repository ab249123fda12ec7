"""Time `python -m hyperface_jax.analyze` on a large synthetic labelled set on disk.

    python benchmarks/bench_analyze.py --rows=1000000 --dim=512 --data_dir=/tmp/bench_analyze

The generator (run once; reused when the files exist with the same shape): `rows / per`
identity centres drawn uniformly on the unit sphere (numpy PCG64, --seed), each image
= normalize(centre + spread * eps), eps ~ N(0, I/d), labels in identity order (as a
generated set is written), written blockwise into `embeddings.npy` (float32, memory-mapped,
never fully in RAM) and `labels.npy` (int64). With spread 1.0 an image's cosine to its
centre is about 0.7. The analysis then runs in a subprocess (so its peak RSS is its own)
with the flags given after `--`, e.g. `-- --impostor_sample=20000`.
Prints and writes `<data_dir>/bench_<rows>.json`: generation seconds, analysis wall seconds,
the analysis' own timings, peak RSS of the analysis process.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

REPO = Path(__file__).resolve().parents[1]


def generate(path: Path, rows: int, dim: int, per: int, spread: float, seed: int,
             block: int = 65_536) -> float:
    emb, lab = path / f"embeddings_{rows}x{dim}.npy", path / f"labels_{rows}.npy"
    if emb.exists() and lab.exists():
        x = np.load(emb, mmap_mode="r")
        if x.shape == (rows, dim):
            return 0.0
    path.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    identities = -(-rows // per)
    centres = rng.standard_normal((identities, dim), np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.arange(rows, dtype=np.int64) // per
    tmp = emb.with_suffix(".tmp.npy")
    out = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    for s in range(0, rows, block):
        e = min(rows, s + block)
        x = centres[labels[s:e]] + spread * rng.standard_normal((e - s, dim), np.float32) / np.sqrt(
            dim)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    tmp.rename(emb)
    np.save(lab, labels)
    return time.perf_counter() - t


def main() -> int:
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--per_identity", type=int, default=64)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default="/tmp/bench_analyze")
    a = p.parse_args(argv)
    data = Path(a.data_dir).resolve()  # analyze runs from the repository root
    gen_seconds = generate(data, a.rows, a.dim, a.per_identity, a.spread, a.seed)
    out = data / f"analysis_{a.rows}"
    cmd = [sys.executable, "-m", "hyperface_jax.analyze",
           f"--embeddings={data}/embeddings_{a.rows}x{a.dim}.npy",
           f"--labels={data}/labels_{a.rows}.npy", f"--out_dir={out}", "--progress=false", *extra]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return r.returncode
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report = json.loads((out / "analysis.json").read_text())
    result = {
        "rows": a.rows, "dim": a.dim, "per_identity": a.per_identity,
        "file_gb": round(a.rows * a.dim * 4 / 1e9, 2),
        "generation_seconds": round(gen_seconds, 1),
        "analysis_wall_seconds": round(wall, 1),
        "analysis_timings_seconds": report["timings_seconds"],
        "analysis_peak_rss_mb": round(peak_mb),
        "eer": report["eer"], "d_prime": report["d_prime"],
        "genuine_pairs": report["genuine"]["pairs"], "impostor_pairs": report["impostor"]["pairs"],
        "command": " ".join(["python", "benchmarks/bench_analyze.py", *sys.argv[1:]]),
    }
    (data / f"bench_{a.rows}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
