"""How fast every CLI answers `--help` and a mistyped flag (issue 27: under 2 s).

    nice -n 10 python benchmarks/cli_startup.py [--repeats=3]

Runs `python -m <cli> --help` and `python -m <cli> --no_such_flag=1` in fresh processes
from the repository root, `--repeats` times each, and prints a markdown table of the
median wall times with the machine's load average before and after (docs/cli.md quotes
it). A fresh process pays Python's own start-up (~0.05 s) and the imports of the CLI
module; the jobs' heavy imports (JAX, torch, matplotlib) are deferred to the job.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIS = ["hyperface_jax.pack", "hyperface_jax.sample", "hyperface_jax.figures",
        "hyperface_jax.analyze", "hyperface_jax.compare", "bridges.gallery", "bridges.embed",
        "bridges.generate", "bridges.evaluate", "bridges.train", "bridges.demo_models",
        "bridges.recognition.digits"]


def seconds(module: str, arg: str, expect: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", module, arg], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - t
    if r.returncode != expect:
        raise SystemExit(f"{module} {arg}: exit {r.returncode}, expected {expect}\n{r.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for module in CLIS:
        helps = [seconds(module, "--help", 0) for _ in range(args.repeats)]
        bads = [seconds(module, "--no_such_flag=1", 2) for _ in range(args.repeats)]
        rows.append((module, statistics.median(helps), statistics.median(bads)))
    print(f"{os.cpu_count()} cores, load average {load:.1f} before, {os.getloadavg()[0]:.1f} "
          f"after; median of {args.repeats} fresh processes\n")
    print("| CLI | `--help` (s) | `--no_such_flag=1` (s) |")
    print("|---|---|---|")
    for module, h, b in rows:
        print(f"| `{module}` | {h:.2f} | {b:.2f} |")


if __name__ == "__main__":
    main()
