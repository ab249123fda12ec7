"""HyperFace in JAX: pack synthetic identities on the hypersphere (the public API).

    from hyperface_jax import pack_references
    result = pack_references(num_identities=2000, dim=512, steps=400, alpha=0.0)

The CLIs (`python -m hyperface_jax.pack`, `.sample`, `.analyze`, `.compare`) are thin
layers over these modules; the names below are the stable ones.
"""

from hyperface_jax.api import PackResult, pack_config, pack_references
from hyperface_jax.bounds import bound_max_cos
from hyperface_jax.files import InputError, RunFailed, load_embeddings
from hyperface_jax.metrics import packing_figures
from hyperface_jax.objective import OBJECTIVES, LossTerms, hyperface_loss
from hyperface_jax.optimizers import on_sphere, tangent_projection
from hyperface_jax.placement import LOCAL, Local
from hyperface_jax.search import LocalSearch
from hyperface_jax.solver import SolverConfig, SolverState, init_state, make_runner, make_step

__all__ = [
    "InputError", "LOCAL", "Local", "LocalSearch", "LossTerms", "OBJECTIVES", "PackResult",
    "RunFailed", "SolverConfig", "SolverState", "bound_max_cos", "hyperface_loss",
    "init_state", "load_embeddings", "make_runner", "make_step", "on_sphere",
    "pack_config", "pack_references", "packing_figures", "tangent_projection",
]
