"""The statistics of `compare --tune_trials`: trial draws, choice, intervals, time to target.

Pure functions on plain dicts, so that the sweep (compare.py) only runs and records.
"""

import math

import numpy as np
from scipy.stats import qmc
from scipy.stats import t as student_t

from hyperface_jax.engine import optimizers
from hyperface_jax.io.files import InputError

SCALES = ("log", "linear", "log1m")
TUNABLE = ("learning_rate",) + optimizers.HYPER_FLAGS
VALIDATION = ("mean over the tuning seeds of the final worst-pair cosine (max_cos); "
              "a trial with a failed or non-finite run counts as +inf")


def check_space(name: str, space: dict) -> None:
    if "learning_rate" not in space:
        raise InputError(f"search space of {name!r} has no learning_rate")
    for flag, spec in space.items():
        if flag not in TUNABLE:
            raise InputError(f"search space of {name!r}: {flag!r} is not tunable; "
                             f"choose from {', '.join(TUNABLE)}")
        if len(spec) != 3 or spec[2] not in SCALES:
            raise InputError(f"search space of {name!r}: {flag} must be [low, high, scale] "
                             f"with scale in {', '.join(SCALES)}, got {spec!r}")
        low, high, scale = spec
        ok = math.isfinite(low) and math.isfinite(high) and low <= high
        ok = ok and (low > 0 if scale == "log" else True) and (high < 1 if scale == "log1m"
                                                               else True)
        if not ok:
            raise InputError(f"search space of {name!r}: bad range for {flag}: {spec!r}")


def draw_trials(space: dict, trials: int, seed: int) -> list[dict]:
    """`trials` points of a scrambled Halton sequence (seeded) mapped onto the space."""
    flags = sorted(space)
    points = qmc.Halton(d=len(flags), scramble=True, seed=seed).random(trials)
    out = []
    for u in points:
        trial = {}
        for flag, ui in zip(flags, u):
            low, high, scale = space[flag]
            # Rounded to 3 significant digits (of 1 - value for log1m): readable flags.
            if scale == "log":
                value = _round(math.exp(math.log(low) + ui * (math.log(high) - math.log(low))))
            elif scale == "log1m":
                a, b = math.log(1 - high), math.log(1 - low)
                value = 1 - _round(math.exp(a + ui * (b - a)))
            else:
                value = _round(low + ui * (high - low))
            trial[flag] = min(max(value, low), high)
        out.append(trial)
    return out


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def validation_figure(runs: list[dict]) -> float:
    values = [r.get("figures", {}).get("max_cos", math.inf) for r in runs]
    if not values or not all(math.isfinite(v) for v in values):
        return math.inf
    return float(np.mean(values))


def best_trial(scores: list[float]) -> int | None:
    """Index of the lowest validation figure (the first of equals); None if all failed."""
    if not scores or not math.isfinite(min(scores)):
        return None
    return int(np.argmin(scores))


def mean_and_interval(values: list[float], level: float = 0.95):
    """Mean and the Student-t interval of the mean; no interval from one value."""
    a = np.asarray(values, np.float64)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, None
    half = float(student_t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, [mean - half, mean + half]


def time_to_target(history: list[dict], target: float) -> dict:
    """First logged step (and stepping seconds) at which max_cos <= target, or None."""
    for entry in history:
        if entry["max_cos"] <= target:
            return {"step": entry["step"], "seconds": entry["seconds"]}
    return {"step": None, "seconds": None}


def summarise_time_to_target(hits: list[dict]) -> dict:
    """Median over seeds, counting a seed that never reached the target as infinite
    (so the median is None when half or more never reached it)."""
    out = {"reached": sum(h["step"] is not None for h in hits), "of": len(hits)}
    for key, name in (("step", "median_steps"), ("seconds", "median_seconds")):
        values = [math.inf if h[key] is None else h[key] for h in hits]
        median = float(np.median(values)) if values else math.inf
        out[name] = median if math.isfinite(median) else None
    return out


def performance_profile(costs: dict[str, dict[str, float | None]], taus) -> dict[str, list]:
    """Dolan and More (2002): for each solver, the share of workloads it solves within a
    factor tau of the best solver on that workload. costs[workload][solver]: None or inf
    when the solver never reached the target there."""
    solvers = sorted({s for row in costs.values() for s in row})
    ratios = {s: [] for s in solvers}
    for row in costs.values():
        finite = [v for v in row.values() if v is not None and math.isfinite(v)]
        best = min(finite) if finite else math.inf
        for s in solvers:
            v = row.get(s)
            ok = v is not None and math.isfinite(v) and math.isfinite(best)
            ratios[s].append(v / best if ok and best > 0 else (1.0 if ok else math.inf))
    n = max(1, len(costs))
    return {s: [sum(r <= tau for r in ratios[s]) / n for tau in taus] for s in solvers}
