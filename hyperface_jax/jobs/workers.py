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
    from hyperface_jax.jobs import compare

    compare.use_cache(cache)
