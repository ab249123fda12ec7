"""The comparison's options, JAX-free: `CompareConfig`, the flags of `python -m
hyperface_jax.compare` (every pack option, the samplers' settings and the comparison's
own), and `Tuning`, the tuned comparison's budget and protocol that the job
(jobs/compare.py) takes. docs/optimizers.md explains each choice."""

import dataclasses

from hyperface_jax.baselines import samplers
from hyperface_jax.io.files import InputError
from hyperface_jax.jobs.config import PackConfig, SamplerOptions
from hyperface_jax.options import option

SELECTIONS = ("final", "time", "seconds")
TIME_KEYS = {"time": "step", "seconds": "seconds"}  # selection -> time_to_target key
PROFILE_COSTS = ("steps", "seconds")  # the performance profile's cost of a run
ARGUMENTS = "compare_args.json"  # a sweep's flags, in its folder, read back by --resume


@dataclasses.dataclass(frozen=True)
class Tuning:
    """A tuned comparison's budget and protocol."""
    trials: int = 16  # settings per optimizer and study (coarse half, then refinement)
    final_seeds: int = 10  # fresh seeds shared by every optimizer (never used in tuning)
    search_space: str = ""  # a JSON file; empty: search_spaces.SEARCH_SPACES
    # Fractions of the way from the start's worst pair to the goal. Denser below 80 %:
    # the Levenshtein bound is not tight, and short runs end around 75-80 % of the way.
    targets: tuple[float, ...] = (0.5, 0.7, 0.75, 0.8, 0.95)
    target: float | None = None  # an extra absolute max_cos target, fixed by the user
    best_known: float | None = None  # the goal instead of the Levenshtein bound
    selection: str = "final"  # "final": lowest final max_cos; "time"/"seconds": AlgoPerf's
    selection_target: float = 0.7  # with "time"/"seconds": the fraction whose target counts
    studies: int = 1  # independent tuning studies; the headline is the median study
    workers: int = 1


DEFAULT = Tuning()
PROFILE_TARGET = 0.7  # the suite's profile: time to this fraction's target
D = DEFAULT


@dataclasses.dataclass(frozen=True)
class CompareConfig(SamplerOptions, PackConfig):
    """`python -m hyperface_jax.compare`: the base run (every pack option), what to compare
    on it, the tuned comparison's protocol, the workload suite, the samplers' settings."""
    HELP_ORDER = (("compare", "tuned comparison", "workload suite") + PackConfig.HELP_ORDER
                  + ("sampler",))

    optimizers: str = option("", "Comma-separated optimizers to compare (catalogue names or "
                             "module:factory; empty: --optimizer).", group="compare")
    objectives: str = option("", "Comma-separated objectives to compare: max, logsumexp, "
                             "riesz (empty: --objective).", group="compare")
    seeds: int = option(1, "Seeds per variant (per tuning trial when tuning): --seed, "
                        "--seed + 1, ...", group="compare", low=1)
    samplers: str = option("", "Comma-separated identity samplers to compare at equal "
                           f"--num_identities: {', '.join(samplers.METHODS)}.",
                           group="compare")
    tune: bool = option(False, "Tune each optimizer (adaptive search of --tune_trials "
                        "settings, then --final_seeds fresh seeds); implied by --tune_trials "
                        "other than 0.", group="tuned comparison")
    tune_trials: int | None = option(None, "Settings per optimizer and study: half a coarse "
                                     "pass over its search space, the rest refining around "
                                     "the best; a range is widened (and said so) when the "
                                     f"best sits at its edge. Unset: {D.trials} with --tune "
                                     "or --suite; 0: no tuning.",
                                     group="tuned comparison", low=0)
    final_seeds: int = option(D.final_seeds, "Fresh seeds (never used in tuning) on which "
                              "every optimizer's chosen setting runs; paired verdicts over "
                              "them.", group="tuned comparison", low=1)
    search_space: str = option(D.search_space, "A JSON search-space table (empty: the "
                               "built-in one, hyperface_jax/research/search_spaces.py); may "
                               "tune recipe flags too (schedule, temperature_*, "
                               "neighbor_refresh_every ...).", group="tuned comparison")
    targets: str = option(",".join(map(str, D.targets)), "Targets as fractions of the way "
                          "from the start's worst pair to the Levenshtein bound (or "
                          "--best_known), fixed before the sweep.", group="tuned comparison")
    target: float | None = option(D.target, "An extra absolute max_cos target (fixed by you, "
                                  "not by a contender).", group="tuned comparison",
                                  low=-1, high=1)
    best_known: float | None = option(D.best_known, "The best known worst pair for this "
                                      "workload: the goal of --targets instead of the "
                                      "Levenshtein bound.", group="tuned comparison",
                                      low=-1, high=1)
    selection: str = option(D.selection, "How a study chooses a setting: 'final' (lowest "
                            "final max_cos over the tuning seeds), 'time' (AlgoPerf: fewest "
                            "steps to the --selection_target target within --steps) or "
                            "'seconds' (fewest stepping seconds to it).",
                            group="tuned comparison", choices=SELECTIONS)
    selection_target: float = option(D.selection_target, "With --selection=time or seconds: "
                                     "the fraction of --targets whose target is timed.",
                                     group="tuned comparison")
    studies: int = option(D.studies, "Independent tuning studies per optimizer (AlgoPerf uses "
                          ">= 3); the headline row is the median study.",
                          group="tuned comparison", low=1)
    workers: int = option(D.workers, "Tuning runs in this many processes at once (the "
                          "fresh-seed runs run one at a time); workers die with the sweep.",
                          group="tuned comparison", low=1)
    resume: bool = option(False, f"Continue the sweep recorded in --out_dir ({ARGUMENTS}) "
                          "with its own flags; only --workers and --progress may be given "
                          "(and a sweep of a module:factory optimizer needs its --optimizers "
                          "again).", group="tuned comparison")
    suite: str = option("", "Run the workload suite: 'minimal' or comma-separated workload "
                        "names (research/suite.py), each a tuned comparison in "
                        "<out_dir>/<workload>, then profile.png.", group="workload suite")
    suite_scale: float = option(1.0, "Multiply every suite workload's identities (and "
                                "gallery rows) by this.", group="workload suite",
                                low=0, low_open=True)
    profile_target: float = option(PROFILE_TARGET, "The fraction of --targets whose time to "
                                   "target the performance profile compares.",
                                   group="workload suite")
    profile_cost: str = option("steps", "Cost of the profile: steps or seconds to target.",
                               group="workload suite", choices=PROFILE_COSTS)

    def tuning(self) -> Tuning | None:
        """The tuned comparison's options, or None (no --tune, --tune_trials or --suite)."""
        if not (self.tune or self.tune_trials not in (None, 0) or self.suite):
            return None
        return Tuning(trials=D.trials if self.tune_trials is None else self.tune_trials,
                      final_seeds=self.final_seeds, search_space=self.search_space,
                      targets=fractions(self.targets), target=self.target,
                      best_known=self.best_known, selection=self.selection,
                      selection_target=self.selection_target, studies=self.studies,
                      workers=self.workers)


def split(value: str) -> list[str]:
    """The items of a comma-separated flag value."""
    return [v.strip() for v in value.split(",") if v.strip()]


def fractions(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in split(value))
    except ValueError:
        raise InputError(f"--targets must be comma-separated fractions, got {value!r}") from None
