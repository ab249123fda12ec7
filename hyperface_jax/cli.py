"""The command-line contract every `python -m ...` tool of this project shares.

Flags are absl `FlagValues`; `--help` prints them; a flag error, a stray argument or an
`InputError` prints one line `error: ...` on stderr and exits 2; Ctrl-C or SIGTERM (turned
into KeyboardInterrupt by the jobs that checkpoint) exits 130.
"""

import sys
from collections.abc import Callable

from absl import flags

from hyperface_jax.files import InputError


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
    except KeyboardInterrupt:
        return 130
    return 0
