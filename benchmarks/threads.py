"""Thread and worker counts of the torch CLIs on this machine, under its current load.

    nice -n 15 python benchmarks/threads.py [--repeats=2] [--out=runs/threads.json]

Runs the real CLIs in fresh processes on the demo models (bridges.demo_models):
1. `bridges.generate` with --threads=1, 2, ..., cores and 0 (the machine-derived default,
   bridges.default_threads): images per second from report.json (model loading excluded),
   and whether every count gives the same PNG bytes;
2. `bridges.evaluate` with --threads=1 .. cores and 0: seconds per run (one small trained
   model on a .bin of --pairs pairs);
3. `bridges.train` with --workers=0, 1, 2, 4 (and --threads=0): seconds per run.
Variants run interleaved (ABC ABC ...) so load drift hits all alike; the median is
reported with the 1-minute load average before and after each run. Ratios within one run
are what this measures, not absolute speed.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(module: str, *args) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{module} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t, r.stderr


def _pngs(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))
            if p.parent.name.isdigit()}


def _interleaved(variants: dict, repeats: int, measure) -> dict:
    times = {name: [] for name in variants}
    loads = []
    for r in range(repeats):
        for name, args in variants.items():
            before = os.getloadavg()[0]
            times[name].append(measure(name, args, r))
            loads.append((before, os.getloadavg()[0]))
    return {name: {"median": statistics.median(v), "runs": v} for name, v in times.items()} | {
        "_load_1min": [round(x, 2) for pair in loads for x in pair]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="")
    p.add_argument("--pairs", type=int, default=100, help="pairs of the evaluate .bin")
    p.add_argument("--parts", default="generate,evaluate,train")
    p.add_argument("--per_person", type=int, default=16, help="training images per person")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per train run")
    a = p.parse_args()
    import bridges  # this checkout's (sys.path above)

    cores = len(os.sched_getaffinity(0))
    counts = sorted({1, 2, cores})
    result = {"cores": cores, "uptime_before": subprocess.run(
        ["uptime"], capture_output=True, text=True).stdout.strip(),
        "default_threads_at_start": bridges.default_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from bridges import demo_models

        demo = demo_models.build(root / "demo")
        refs = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
        refs /= np.linalg.norm(refs, axis=1, keepdims=True)
        np.save(root / "refs.npy", refs)

        # 1. generate
        outputs = {}

        def generate(name, threads, r):
            out = root / f"gen_{name}_{r}"
            _run("bridges.generate", f"--references={root / 'refs.npy'}",
                 f"--arc2face={demo['arc2face']}", f"--base_model={demo['base_model']}",
                 f"--out_dir={out}", "--images_per_identity=8", "--micro_batch=4",
                 "--steps=8", f"--threads={threads}", "--progress=false")
            report = json.loads((out / "report.json").read_text())
            outputs[name] = (_pngs(out), report["torch_threads"])
            shutil.rmtree(out)
            return 1.0 / report["images_per_second"]  # seconds per image

        variants = {f"threads={t}": t for t in counts} | {"threads=0 (auto)": 0}
        if "generate" in a.parts:
            gen = _interleaved(variants, a.repeats, generate)
            first = next(iter(outputs.values()))[0]
            result["generate_seconds_per_image"] = gen
            result["generate_same_pixels"] = {n: o[0] == first for n, o in outputs.items()}
            result["generate_auto_threads"] = outputs["threads=0 (auto)"][1]
            print(json.dumps({k: result[k] for k in result if k.startswith("generate")}),
                  file=sys.stderr, flush=True)

        # 2. a small trained model for evaluate, and the train timings
        data = root / "data"
        demo_models.photos(data, people=8, per_person=a.per_person, size=112)
        model_dir = root / "model"
        _run("bridges.train", f"--data={data}", f"--out_dir={model_dir}", "--arch=ir18",
             "--width=8", "--embedding_size=64", "--batch_size=32", "--max_steps=1",
             "--epochs=1", "--workers=0", "--progress=false", "--threads=1")
        pairs = [(np.asarray(p1), np.asarray(p2)) for p1, p2 in _photo_pairs(data, a.pairs)]
        from bridges import bins

        bins.write(root / "bins" / "pairs.bin", pairs, [k % 2 == 0 for k in range(a.pairs)])

        def evaluate(name, threads, r):  # seconds inside the run (imports excluded)
            out = root / f"ev_{name}_{r}"
            _run("bridges.evaluate", f"--model={model_dir}", f"--bins={root / 'bins'}",
                 f"--out_dir={out}", f"--threads={threads}", "--progress=false")
            return json.loads((out / "results.json").read_text())["wall_seconds"]

        if "evaluate" in a.parts:
            result["evaluate_seconds"] = _interleaved(variants, a.repeats, evaluate)
            print(json.dumps(result["evaluate_seconds"]), file=sys.stderr, flush=True)

        def train(name, workers, r):  # seconds inside the run (imports excluded)
            out = root / f"tr_{name}_{r}"
            _run("bridges.train", f"--data={data}", f"--out_dir={out}", "--arch=ir18",
                 "--width=8", "--embedding_size=64", "--batch_size=16", f"--epochs={a.epochs}",
                 f"--workers={workers}", "--progress=false", "--threads=0")
            report = json.loads((out / "report.json").read_text())
            picked.setdefault(name, []).append((report["torch_threads"],
                                                report["loader_workers"]))
            return report["wall_seconds"]

        picked = {}

        if "train" in a.parts:
            result["train_seconds"] = _interleaved(
                {f"workers={w}": w for w in (0, 1, 2, 4)} | {"workers=-1 (auto)": -1},
                a.repeats, train)
            result["train_threads_and_workers_used"] = picked
    result["uptime_after"] = subprocess.run(["uptime"], capture_output=True,
                                            text=True).stdout.strip()
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")


def _photo_pairs(folder: Path, n: int):
    from PIL import Image

    people = sorted(p for p in folder.iterdir() if p.is_dir())
    shots = [sorted(p.glob("*.png")) for p in people]
    rng = np.random.default_rng(0)
    for k in range(n):
        a = int(rng.integers(len(people)))
        b = a if k % 2 == 0 else (a + 1) % len(people)
        i, j = rng.choice(len(shots[a]), 2, replace=False)
        yield Image.open(shots[a][i]).convert("RGB"), Image.open(shots[b][j]).convert("RGB")


if __name__ == "__main__":
    main()
