"""`python -m hyperface_jax.compare`: optimizers, objectives and identity samplers side by side.

    python -m hyperface_jax.compare --flagfile=configs/quickstart.flags \\
        --optimizers=adam,sgd,lion --objectives=max,logsumexp --seeds=3 \\
        --samplers=random_margin,hyperface --out_dir=runs/compare

A thin main over `hyperface_jax.jobs.compare` (the job; callable from Python): this file
only defines the flags (all of them here, in one place) and hands them over. Three modes:

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

import json
import sys
from pathlib import Path

from absl import flags

from hyperface_jax import cli
from hyperface_jax.baselines import samplers
from hyperface_jax.io.files import InputError
from hyperface_jax.jobs import sampler_flags
from hyperface_jax.jobs.compare_config import DEFAULT, PROFILE_TARGET
from hyperface_jax.jobs.config import HELP_GROUPS, config_from_flags, define_flags

ARGUMENTS = "compare_args.json"  # the sweep's flags, read back by --resume (= jobs.compare's)
# Flags --resume accepts beside --out_dir: how to run, not what to run; plus the
# optimizer lists, which must then repeat the recorded ones (see _resumed_flags).
RESUME_MAY_GIVE = ("workers", "progress", "optimizers", "optimizer")

COMPARE_FLAGS = {  # name: (kind, default, help)
    "optimizers": ("string", "", "Comma-separated optimizers to compare (catalogue names or "
                                 "module:factory; empty: --optimizer)."),
    "objectives": ("string", "", "Comma-separated objectives to compare: max, logsumexp, "
                                 "riesz (empty: --objective)."),
    "seeds": ("integer", 1, "Seeds per variant (per tuning trial when tuning): --seed, "
                            "--seed + 1, ..."),
    "samplers": ("string", "", "Comma-separated identity samplers to compare at equal "
                               f"--num_identities: {', '.join(samplers.METHODS)}."),
}
D = DEFAULT
TUNING_FLAGS = {
    "tune": ("bool", False,
             "Tune each optimizer (adaptive search of --tune_trials settings, then "
             "--final_seeds fresh seeds); implied by --tune_trials other than 0."),
    "tune_trials": ("integer", D.trials,
                    "Settings per optimizer and study: half a coarse pass over its search "
                    "space, the rest refining around the best; a range is widened (and said "
                    "so) when the best sits at its edge."),
    "final_seeds": ("integer", D.final_seeds,
                    "Fresh seeds (never used in tuning) on which every optimizer's chosen "
                    "setting runs; paired verdicts over them."),
    "search_space": ("string", D.search_space,
                     "A JSON search-space table (empty: the built-in one, hyperface_jax/"
                     "research/search_spaces.py); may tune recipe flags too (schedule, "
                     "temperature_*, neighbor_refresh_every ...)."),
    "targets": ("string", ",".join(map(str, D.targets)),
                "Targets as fractions of the way from the start's worst pair to the "
                "Levenshtein bound (or --best_known), fixed before the sweep."),
    "target": ("float", D.target,
               "An extra absolute max_cos target (fixed by you, not by a contender)."),
    "best_known": ("float", D.best_known,
                   "The best known worst pair for this workload: the goal of --targets "
                   "instead of the Levenshtein bound."),
    "selection": ("string", D.selection,
                  "How a study chooses a setting: 'final' (lowest final max_cos over the "
                  "tuning seeds), 'time' (AlgoPerf: fewest steps to the --selection_target "
                  "target within --steps) or 'seconds' (fewest stepping seconds to it)."),
    "selection_target": ("float", D.selection_target,
                         "With --selection=time or seconds: the fraction of --targets whose "
                         "target is timed."),
    "studies": ("integer", D.studies,
                "Independent tuning studies per optimizer (AlgoPerf uses >= 3); the headline "
                "row is the median study."),
    "workers": ("integer", D.workers,
                "Tuning runs in this many processes at once (the fresh-seed runs run one at "
                "a time); workers die with the sweep."),
    "resume": ("bool", False,
               f"Continue the sweep recorded in --out_dir ({ARGUMENTS}) with its own flags; "
               "only --workers and --progress may be given (and a sweep of a module:factory "
               "optimizer needs its --optimizers again)."),
}
SUITE_FLAGS = {
    "suite": ("string", "",
              "Run the workload suite: 'minimal' or comma-separated workload names "
              "(research/suite.py), each a tuned comparison in <out_dir>/<workload>, then "
              "profile.png."),
    "suite_scale": ("float", 1.0,
                    "Multiply every suite workload's identities (and gallery rows) by this."),
    "profile_target": ("float", PROFILE_TARGET,
                       "The fraction of --targets whose time to target the performance "
                       "profile compares."),
    "profile_cost": ("string", "steps", "Cost of the profile: steps or seconds to target."),
}


def make_flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    define_flags(fv)
    sampler_flags.define_sampler_flags(
        fv, names=[n for n in sampler_flags.SAMPLER_FLAGS if n != "method"])
    for table in (COMPARE_FLAGS, TUNING_FLAGS, SUITE_FLAGS):
        for name, (kind, default, help_text) in table.items():
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=fv)
    return fv


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _fractions(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _split(value))
    except ValueError:
        raise InputError(f"--targets must be comma-separated fractions, got {value!r}") from None


def _user_optimizers(values: dict) -> set[str]:
    names = _split(str(values.get("optimizers", ""))) + [str(values.get("optimizer", ""))]
    return {n for n in names if ":" in n}


def _resumed_flags(fv: flags.FlagValues) -> flags.FlagValues:
    """The recorded sweep's flags (plus this command's --workers/--progress). A recorded
    module:factory optimizer imports and runs code, so it is only run again when this
    command names it too: a planted compare_args.json cannot make --resume run code."""
    out = fv["out_dir"].value
    if not out:
        raise InputError("--resume needs --out_dir, the folder of the sweep to continue")
    path = Path(out) / ARGUMENTS
    if not path.exists():
        raise InputError(f"--resume: {path} does not exist (no sweep was started there)")
    extra = [n for n in fv if fv[n].present and n not in ("resume", "out_dir", *RESUME_MAY_GIVE)]
    if extra:
        raise InputError(f"--resume takes the sweep's flags from {path}; only --workers and "
                         f"--progress may be given, not --{extra[0]}")
    try:
        recorded = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"--resume: {path} is not valid JSON ({e})") from None
    if not isinstance(recorded, dict):
        raise InputError(f"--resume: {path} does not hold the flags of a sweep")
    given = {n: fv[n].value for n in ("optimizers", "optimizer") if fv[n].present}
    unconfirmed = sorted(_user_optimizers(recorded) - _user_optimizers(given))
    if unconfirmed:
        raise InputError(f"--resume: the sweep in {out} runs your optimizer "
                         f"{unconfirmed[0]} (its code is imported and run); give "
                         f"--optimizers={recorded.get('optimizers', '')} again to confirm")
    for name, value in given.items():
        if value != recorded.get(name, fv[name].default):
            raise InputError(f"--resume: --{name}={value} differs from the sweep's "
                             f"--{name}={recorded.get(name, '')} ({path})")
    recorded.update(out_dir=out)
    for name in ("workers", "progress"):
        if fv[name].present:
            recorded[name] = fv[name].value
    resumed = make_flag_values()
    argv = ["compare"] + [f"--{k}={v}" for k, v in recorded.items()]
    try:
        resumed(argv)
    except flags.Error as e:
        raise InputError(f"--resume: {path}: {e}") from None
    return resumed


def tuning_of(fv: flags.FlagValues):
    """The Tuning options of the flags, or None without --tune / --tune_trials / --suite."""
    from hyperface_jax.jobs.compare_config import Tuning

    asked = fv["tune_trials"].present and fv["tune_trials"].value != 0  # 0: no tuning
    if not (fv["tune"].value or asked or fv["suite"].value):
        return None
    return Tuning(trials=fv["tune_trials"].value, final_seeds=fv["final_seeds"].value,
                  search_space=fv["search_space"].value, targets=_fractions(fv["targets"].value),
                  target=fv["target"].value, best_known=fv["best_known"].value,
                  selection=fv["selection"].value,
                  selection_target=fv["selection_target"].value, studies=fv["studies"].value,
                  workers=fv["workers"].value)


def job(fv: flags.FlagValues) -> dict:
    from hyperface_jax.jobs import compare  # JAX and friends: not needed to print --help

    arguments = {name: fv[name].value for name in fv if fv[name].present
                 and name not in ("resume", "flagfile")}
    if fv["resume"].value:
        fv = _resumed_flags(fv)
        arguments = None  # the record stays as it was
    c = config_from_flags(fv)
    optimizers = _split(fv["optimizers"].value)
    if fv["suite"].value:
        return compare.run_suite(
            c, _split(fv["suite"].value), scale=fv["suite_scale"].value,
            optimizers=optimizers or ["adam", "sgd", "lion", "riemannian_adam"],
            t=tuning_of(fv), seeds=fv["seeds"].value, fraction=fv["profile_target"].value,
            cost=fv["profile_cost"].value, arguments=arguments)
    return compare.run(c, optimizers=optimizers, objectives=_split(fv["objectives"].value),
                       methods=_split(fv["samplers"].value), seeds=fv["seeds"].value,
                       options=sampler_flags.sampler_options(fv),
                       tuning_options=tuning_of(fv), arguments=arguments)


def main(argv: list[str] | None = None) -> int:
    groups = {"compare": tuple(COMPARE_FLAGS), "tuned comparison": tuple(TUNING_FLAGS),
              "workload suite": tuple(SUITE_FLAGS), **HELP_GROUPS,
              "samplers (--samplers)": tuple(sampler_flags.SAMPLER_FLAGS)}
    return cli.run_main(argv, make_flag_values(), job, help_groups=groups)


if __name__ == "__main__":
    sys.exit(main())
