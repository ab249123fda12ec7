"""`python -m hyperface_jax.compare`: optimizers, objectives and identity samplers side by side.

    python -m hyperface_jax.compare --flagfile=configs/quickstart.flags \\
        --optimizers=adam,sgd,lion --objectives=max,logsumexp --seeds=3 \\
        --samplers=random_margin,hyperface --out_dir=runs/compare

A thin main over `hyperface_jax.jobs.compare` (the job; callable from Python): the flags
are `CompareConfig`'s fields (jobs/compare_config.py); this file hands them over and
replays a sweep's recorded flags for `--resume`. Three modes:

- plain: every optimizer x objective variant and every sampler on --seeds seeds, the
  same starts for every variant (docs/quality.md);
- tuned (`--tune`, or `--tune_trials=T`): each optimizer's adaptive search, its best
  setting re-run on --final_seeds fresh seeds shared by every optimizer, paired verdicts
  against the best, time to targets fixed by the workload (docs/optimizers.md);
- suite (`--suite=minimal`): the tuned comparison on every named workload and the
  Dolan-More performance profile over them (docs/optimizers.md).

`--resume --out_dir=...` continues a sweep with the flags recorded there. Exit codes: 0
success, 2 bad input (one line on stderr, nothing written), 1 failure.
"""

import dataclasses
import json
import sys
from pathlib import Path

from hyperface_jax import cli, options
from hyperface_jax.io.files import InputError
from hyperface_jax.jobs.compare_config import ARGUMENTS, CompareConfig, split

# Flags --resume accepts beside --out_dir: how to run, not what to run; plus the
# optimizer lists, which must then repeat the recorded ones (see _resumed).
RESUME_MAY_GIVE = ("workers", "progress", "optimizers", "optimizer")
# The key of compare_args.json that lists the flags given on the command line (the
# others came from flagfiles: defaults that an input file or a suite workload may
# override, see PackConfig.explicit). A record without it is from before: all of its
# flags count as given on the command line, as they then did.
COMMAND_LINE = "command_line"
FIELDS = {f.name: f for f in options.flag_fields(CompareConfig)}


def given(c: CompareConfig) -> dict:
    """The flags the command set: named on its command line, or (from a flagfile) away
    from their defaults."""
    return {name: getattr(c, name) for name, f in FIELDS.items()
            if name in c.explicit or getattr(c, name) != f.default}


def recorded_flags(c: CompareConfig) -> dict:
    """What compare_args.json holds for `--resume`: the flags set, and which of them were
    given on the command line."""
    values = {k: v for k, v in given(c).items() if k != "resume"}
    return {**values, COMMAND_LINE: sorted(c.explicit & set(values))}


def _user_optimizers(values: dict) -> set[str]:
    names = split(str(values.get("optimizers", ""))) + [str(values.get("optimizer", ""))]
    return {n for n in names if ":" in n}


def _resumed(c: CompareConfig) -> CompareConfig:
    """The recorded sweep's configuration (with this command's --workers/--progress). A
    recorded module:factory optimizer imports and runs code, so it is only run again when
    this command names it too: a planted compare_args.json cannot make --resume run code."""
    path = Path(c.out_dir) / ARGUMENTS
    if not path.exists():
        raise InputError(f"--resume: {path} does not exist (no sweep was started there)")
    now = given(c)
    extra = [n for n in now if n not in ("resume", "out_dir", *RESUME_MAY_GIVE)]
    if extra:
        raise InputError(f"--resume takes the sweep's flags from {path}; only --workers and "
                         f"--progress may be given, not --{extra[0]}")
    try:
        recorded = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"--resume: {path} is not valid JSON ({e})") from None
    if not isinstance(recorded, dict):
        raise InputError(f"--resume: {path} does not hold the flags of a sweep")
    named = recorded.pop(COMMAND_LINE, None)
    if named is not None and not (isinstance(named, list)
                                  and all(isinstance(n, str) for n in named)):
        raise InputError(f"--resume: {path}: {COMMAND_LINE} is not a list of flag names")
    confirmed = {n: now[n] for n in ("optimizers", "optimizer") if n in now}
    unconfirmed = sorted(_user_optimizers(recorded) - _user_optimizers(confirmed))
    if unconfirmed:
        raise InputError(f"--resume: the sweep in {c.out_dir} runs your optimizer "
                         f"{unconfirmed[0]} (its code is imported and run); give "
                         f"--optimizers={recorded.get('optimizers', '')} again to confirm")
    for name, value in confirmed.items():
        if value != recorded.get(name, FIELDS[name].default):
            raise InputError(f"--resume: --{name}={value} differs from the sweep's "
                             f"--{name}={recorded.get(name, '')} ({path})")
    recorded.update(out_dir=c.out_dir, **{n: now[n] for n in ("workers", "progress")
                                          if n in now})
    try:
        resumed = options.config_from_options(CompareConfig, recorded)
    except InputError as e:
        raise InputError(f"--resume: {path}: {e}") from None
    return dataclasses.replace(resumed, explicit=frozenset(recorded if named is None else named))


def job(c: CompareConfig) -> dict:
    from hyperface_jax.jobs import compare  # JAX and friends: not needed to print --help

    arguments = recorded_flags(c)
    if c.resume:
        c = _resumed(c)
        arguments = None  # the record stays as it was
    base, optimizers = c.pack_config(), split(c.optimizers)
    if c.suite:
        return compare.run_suite(
            base, split(c.suite), scale=c.suite_scale,
            optimizers=optimizers or ["adam", "sgd", "lion", "riemannian_adam"],
            t=c.tuning(), seeds=c.seeds, fraction=c.profile_target, cost=c.profile_cost,
            arguments=arguments)
    return compare.run(base, optimizers=optimizers, objectives=split(c.objectives),
                       methods=split(c.samplers), seeds=c.seeds, options=c.sampler_options(),
                       tuning_options=c.tuning(), arguments=arguments)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(argv, CompareConfig, job)


if __name__ == "__main__":
    sys.exit(main())
