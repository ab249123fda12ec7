"""HyperFace in JAX: pack synthetic identities on the hypersphere (the public API).

    from hyperface_jax import pack_references
    result = pack_references(num_identities=2000, dim=512, steps=400, alpha=0.0)

The CLIs (`python -m hyperface_jax.pack`, `.sample`, `.analyze`, `.compare`) are thin
layers over these modules; the names below are the stable ones. They are loaded on first
use, so `python -m hyperface_jax.<tool>` and `import hyperface_jax.files` stay light.
"""

import importlib

_EXPORTS = {
    "PackResult": "api", "pack_config": "api", "pack_references": "api",
    "bound_max_cos": "bounds",
    "InputError": "files", "RunFailed": "files", "load_embeddings": "files",
    "packing_figures": "metrics",
    "OBJECTIVES": "objective", "LossTerms": "objective", "hyperface_loss": "objective",
    "on_sphere": "optimizers", "tangent_projection": "optimizers",
    "LOCAL": "placement", "Local": "placement",
    "LocalSearch": "search",
    "SolverConfig": "solver", "SolverState": "solver", "init_state": "solver",
    "make_runner": "solver", "make_step": "solver",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hyperface_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hyperface_jax.{_EXPORTS[name]}"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
