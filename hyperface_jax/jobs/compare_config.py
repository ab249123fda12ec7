"""The tuned comparison's options (`compare --tune`), JAX-free: the CLI takes its flag
defaults from here, the job (jobs/compare.py) its protocol. docs/optimizers.md explains
each choice."""

import dataclasses

SELECTIONS = ("final", "time", "seconds")
TIME_KEYS = {"time": "step", "seconds": "seconds"}  # selection -> time_to_target key


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
