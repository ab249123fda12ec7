"""The command-line contract every `python -m ...` tool of this project shares.

Flags are absl `FlagValues`; `--help` prints them; a flag error, a stray argument or an
`InputError` prints one line `error: ...` on stderr and exits 2; Ctrl-C or SIGTERM (turned
into KeyboardInterrupt by the jobs that checkpoint) exits 130.
"""

import contextlib
import signal
import sys
import threading
from collections.abc import Callable

from absl import flags

from hyperface_jax.files import InputError, RunFailed


def run_main(argv: list[str] | None, fv: flags.FlagValues,
             job: Callable[[flags.FlagValues], object], *,
             describe: Callable[[InputError], str] = str) -> int:
    """Parse `argv` (sys.argv when None) into `fv`, run `job(fv)`, return the exit code."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(fv.get_help())
        return 0
    try:
        rest = fv(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(rest) > 1:
        print(f"error: unexpected arguments {rest[1:]}", file=sys.stderr)
        return 2
    try:
        job(fv)
    except InputError as e:
        print(f"error: {describe(e)}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


class _Interrupt:
    requested = False


@contextlib.contextmanager
def deferred_interrupts():
    """Ctrl-C and SIGTERM during the block set `.requested` (the job stops at its next safe
    point, e.g. after saving a checkpoint); a second one raises KeyboardInterrupt at once.
    Outside the main thread (where signals cannot be caught) nothing is installed."""
    state = _Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True
        print("stopping after the current chunk (a checkpoint is saved); interrupt again to "
              "stop at once", file=sys.stderr)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
