"""HyperFace in JAX: pack synthetic identities on the hypersphere (the public API).

    from hyperface_jax import pack_references
    result = pack_references(num_identities=2000, dim=512, steps=400, alpha=0.0)

The CLIs (`python -m hyperface_jax.pack`, `.sample`, `.analyze`, `.compare`) are thin
layers over these modules; the names below are the stable ones. They are loaded on first
use, so `python -m hyperface_jax.<tool>` and `import hyperface_jax.io.files` stay light.
"""

import importlib

_EXPORTS = {
    "PackResult": "jobs.api", "pack_config": "jobs.api", "pack_references": "jobs.api",
    "bound_max_cos": "measure.bounds",
    "InputError": "io.files", "RunFailed": "io.files", "load_embeddings": "io.files",
    "packing_figures": "measure.metrics",
    "OBJECTIVES": "engine.objective", "LossTerms": "engine.objective",
    "hyperface_loss": "engine.objective",
    "on_sphere": "engine.optimizers", "tangent_projection": "engine.optimizers",
    "LOCAL": "engine.placement", "Local": "engine.placement",
    "Search": "engine.search",
    "SolverConfig": "engine.solver", "SolverState": "engine.solver", "init_state": "engine.solver",
    "make_runner": "engine.solver", "make_step": "engine.solver",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hyperface_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hyperface_jax.{_EXPORTS[name]}"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
