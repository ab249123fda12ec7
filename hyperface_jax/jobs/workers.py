"""Worker processes that die with their parent (issue 23: a killed `compare --workers=P`
must leave no orphan writing trial folders). Light on purpose: a spawned worker imports
this module first, before JAX, so the guard is set within a fraction of a second."""

import os
import sys


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG); if the
    parent is already gone, exit now. Elsewhere only the second check applies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def start_sweep_worker(parent: int, cache: str) -> None:
    """The initializer of `compare`'s worker pool: the guard first, then the shared
    compilation cache (which imports JAX)."""
    die_with_parent(parent)
    use_cache(cache)


def use_cache(directory: str) -> None:
    """JAX's persistent compilation cache in `directory` (runs of one sweep share it)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()  # (re)initialised at the first compile, in this folder
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
