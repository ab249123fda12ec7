"""The torch side of hyperface-jax: embeddings in (insightface), faces out (Arc2Face).

- `bridges.embed`       face images -> unit ArcFace gallery (.npy) + listing
- `bridges.arc2face`    Arc2Face loading, Eq. 3, the id-token conditioning, the sampler
- `bridges.generate`    references -> dataset/<i>/<k>.png, resumable, multi-process
- `bridges.faces`       SCRFD detection, 5-point alignment, ArcFace features (insightface)
- `bridges.tensors`     JAX <-> torch by DLPack
- `bridges.demo_models` tiny random models in the published layouts (try the pipeline)

This package's own import needs nothing beyond the core install: each CLI calls
`require_torch_extra` first, so a machine without the `torch` extra gets one line saying
what to install instead of a ModuleNotFoundError traceback.
"""

import importlib.util
import os
import sys

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


def default_threads() -> int:
    """torch intra-op threads for the CLIs' `--threads=0`: the cores this process may use
    (its CPU affinity, which SLURM/cgroups/taskset restrict) minus the load other
    processes already put on the machine (1-minute load average), at least 1. torch's own
    default takes every core whatever the load, and its spinning threads then fight the
    other processes (benchmarks/threads.py)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))
