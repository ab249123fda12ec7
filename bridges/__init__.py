"""The torch side of hyperface-jax: embeddings in (insightface), faces out (Arc2Face).

- `bridges.gallery`     an unconditional generator (LDM, DDPM) -> faces/<n>.png, resumable
- `bridges.unconditional` those generators' published layouts, loading, per-image noise
- `bridges.embed`       face images -> unit ArcFace gallery (.npy) + listing
- `bridges.arc2face`    Arc2Face loading, Eq. 3, the id-token conditioning, the sampler
- `bridges.generate`    references -> dataset/<i>/<k>.png, resumable, multi-process
- `bridges.resumable`   what gallery and generate share: draw images for keys, resumably
- `bridges.faces`       detection (MTCNN or SCRFD), 5-point alignment, ArcFace features
- `bridges.mtcnn`       the paper's MTCNN: our cascade, the facenet-pytorch wheel's weights
- `bridges.tensors`     JAX <-> torch by DLPack
- `bridges.demo_models` tiny random models in the published layouts (try the pipeline)

This package's own import needs nothing beyond the core install: each CLI calls
`require_torch_extra` first, so a machine without the `torch` extra gets one line saying
what to install instead of a ModuleNotFoundError traceback.
"""

import importlib.util
import os
import stat
import sys
from pathlib import Path

# Import names of the `torch` extra in pyproject.toml (pip name -> import name differs
# for scikit-learn, pillow and opencv-python).
TORCH_EXTRA_MODULES = ("torch", "diffusers", "transformers", "accelerate", "insightface",
                       "onnx", "onnxruntime", "huggingface_hub", "sklearn", "PIL", "cv2")
INSTALL_HINT = "pip install 'hyperface-jax[torch]'"


def missing_torch_extra(modules=TORCH_EXTRA_MODULES) -> list[str]:
    """The modules of the torch extra that cannot be found (nothing is imported)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-removed install
            found = False
        if not found:
            missing.append(name)
    return missing


def require_torch_extra(command: str) -> None:
    """Exit 2 with one line naming the missing modules and the install command when the
    torch extra is not installed; return silently otherwise."""
    missing = missing_torch_extra()
    if missing:
        print(f"error: {command} needs the torch extra, which is not installed (missing: "
              f"{', '.join(missing)}); install it with: {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(2)


def require_path(path, what: str, kind: str = "file") -> Path:
    """`Path(path)` when it is a `kind` ("file": a regular file, or "folder"); otherwise
    `InputError` saying what is there instead: nothing, a folder, a file, or a FIFO,
    device or socket (a folder or /dev/zero is not "not found")."""
    from hyperface_jax.io.files import InputError

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except OSError as e:
        raise InputError(f"{what} {path} cannot be read ({e.strerror})") from None
    found = ("folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
             else "FIFO, device or socket")
    if found != kind:
        raise InputError(f"{what} {path} is a {found}, not a {kind}")
    return path


def free_cores() -> float:
    """Cores this process may use (its CPU affinity, which SLURM, cgroups and taskset
    restrict) minus their share of the machine's 1-minute load average (other processes
    already running), divided among the processes of this launch on this node
    (torchrun's and accelerate's LOCAL_WORLD_SIZE)."""
    total = os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on this platform
        load = 0.0
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0.0, mine - load * mine / total) / processes


def default_threads() -> int:
    """torch intra-op threads for `--threads=0`: the free cores, rounded, at least 1.
    torch's own default takes every core whatever the load; on a busy machine its spinning
    threads then fight the other processes (measured in benchmarks/threads.py)."""
    return max(1, int(free_cores() + 0.5))


def default_workers() -> int:
    """DataLoader worker processes for `bridges.train --workers=-1`: the free cores beyond
    the one the training step needs, at most 4 (benchmarks/threads.py)."""
    return max(0, min(4, int(free_cores() + 0.5) - 1))


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads to `threads`; 0: torch's current count (its default,
    every core, in a fresh process) lowered to default_threads(). Returns the count.
    Results are bitwise reproducible at a fixed count: pass one to compare runs."""
    import torch

    n = threads if threads > 0 else min(torch.get_num_threads(), default_threads())
    torch.set_num_threads(n)
    return n
