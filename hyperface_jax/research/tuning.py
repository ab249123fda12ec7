"""The statistics of `compare`'s tuned sweeps: search, choice, paired verdicts, targets.

Pure functions on plain dicts and lists, so that the sweep (jobs/compare.py) only runs and
records. docs/optimizers.md states the protocol these implement.
"""

import math

import numpy as np
from scipy.stats import qmc
from scipy.stats import t as student_t

from hyperface_jax.engine.optimizers import HYPER_FLAGS
from hyperface_jax.io.files import InputError

SCALES = ("log", "linear", "log1m", "int_log", "int", "choice")
# Recipe flags a search space may also tune (the packing recipe, not only the optimizer).
RECIPE_FLAGS = ("schedule", "decay_rate", "decay_every", "final_learning_rate",
                "temperature_start", "temperature_end", "anneal_steps", "packing_reduce",
                "batch_size", "minibatch_update", "project_gradient", "restarts",
                "polish_steps", "polish_learning_rate", "neighbor_list_size",
                "gallery_list_size", "neighbor_rebuild", "neighbor_refresh_every",
                "neighbor_descent_every")
TUNABLE = ("learning_rate",) + HYPER_FLAGS + RECIPE_FLAGS
VALIDATION = ("mean over the tuning seeds of the final worst-pair cosine (max_cos); "
              "a trial with a failed or non-finite run counts as +inf")
VERDICTS = ("best", "better", "worse", "tied", "undecided", "lower bound")
WIDEN_ROUNDS = 3  # at most this many widenings of a search range per optimizer


# --- Search spaces and draws ---

def check_space(name: str, space: dict) -> None:
    if "learning_rate" not in space:
        raise InputError(f"search space of {name!r} has no learning_rate")
    for flag, spec in space.items():
        if flag not in TUNABLE:
            raise InputError(f"search space of {name!r}: {flag!r} is not tunable; "
                             f"choose from {', '.join(TUNABLE)}")
        if not isinstance(spec, (list, tuple)) or not spec or spec[-1] not in SCALES:
            raise InputError(f"search space of {name!r}: {flag} must be [low, high, scale] "
                             f"with scale in {', '.join(SCALES)}, or [value, value, ..., "
                             f"\"choice\"], got {spec!r}")
        if spec[-1] == "choice":
            if len(spec) < 3:
                raise InputError(f"search space of {name!r}: {flag} needs >= 2 choices")
            continue
        if len(spec) != 3 or not all(isinstance(v, (int, float)) for v in spec[:2]):
            raise InputError(f"search space of {name!r}: {flag} must be [low, high, scale] "
                             f"with scale in {', '.join(SCALES)}, got {spec!r}")
        low, high, scale = spec
        ok = math.isfinite(low) and math.isfinite(high) and low <= high
        ok = ok and (low > 0 if scale in ("log", "int_log") else True)
        ok = ok and (high < 1 if scale == "log1m" else True)
        if not ok:
            raise InputError(f"search space of {name!r}: bad range for {flag}: {spec!r}")


def _to_value(spec, u: float):
    if spec[-1] == "choice":
        choices = spec[:-1]
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    low, high, scale = spec
    if scale in ("log", "int_log"):
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    elif scale == "log1m":
        a, b = math.log(1 - high), math.log(1 - low)
        value = 1 - _round(math.exp(b + u * (a - b)))
    else:
        value = low + u * (high - low)
    if scale in ("int_log", "int"):
        return int(min(max(round(value), math.ceil(low)), math.floor(high)))
    # Rounded to 3 significant digits (of 1 - value for log1m): readable flags.
    value = value if scale == "log1m" else _round(value)
    return min(max(value, low), high)


def _to_unit(spec, value) -> float:
    if spec[-1] == "choice":
        choices = spec[:-1]
        return (choices.index(value) + 0.5) / len(choices)
    low, high, scale = spec
    if high == low:
        return 0.5
    if scale in ("log", "int_log"):
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    if scale == "log1m":
        a, b = math.log(1 - high), math.log(1 - low)
        return (math.log(max(1 - value, 1e-300)) - b) / (a - b)
    return (value - low) / (high - low)


def draw_trials(space: dict, trials: int, seed: int) -> list[dict]:
    """`trials` points of a scrambled Halton sequence (seeded) mapped onto the space."""
    flags = sorted(space)
    points = qmc.Halton(d=len(flags), scramble=True, seed=seed).random(trials)
    return [{flag: _to_value(tuple(space[flag]), float(u)) for flag, u in zip(flags, p)}
            for p in points]


def _round(value: float) -> float:
    return float(f"{value:.3g}")


# --- The adaptive search: coarse pass, widening at an edge, refinement ---

def _edges(space: dict, settings: list[dict], scores: list[float], best: int,
           band: float) -> list:
    """(flag, side) for every log-scaled flag whose best value is the most extreme value
    tried on that side (nothing beyond it was tried) and lies in the outer `band` of the
    range (unit coordinates), where the range could go further."""
    finished = [s for s, v in zip(settings, scores) if math.isfinite(v)]
    out = []
    for flag, spec in sorted(space.items(), key=lambda item: item[0] != "learning_rate"):
        if spec[-1] not in ("log", "int_log", "log1m"):
            continue  # linear, int and choice flags have natural ends
        values = [s[flag] for s in finished]
        if len(set(values)) < 2:
            continue
        value = settings[best][flag]
        u = _to_unit(spec, value)
        if value <= min(values) and u <= band and _widened(spec, "low") is not None:
            out.append((flag, "low"))
        elif value >= max(values) and u >= 1 - band and _widened(spec, "high") is not None:
            out.append((flag, "high"))
    return out


def _widened(spec, side: str):
    """The range extended past `side`, or None where it cannot go further: log ranges by
    max(10x, half their width in decades); log1m (momenta) only while the value stays in
    [0, 1 - 1e-6]."""
    low, high, scale = spec
    if scale in ("log", "int_log"):
        factor = max(10.0, math.sqrt(high / low))
        if side == "low":
            new = low / factor
            if scale == "int_log" and low <= 1:
                return None
            return (max(new, 1) if scale == "int_log" else _round(new), high, scale)
        return (low, _round(high * factor), scale)
    if side == "high":
        gap = (1 - high) / 10
        return None if gap < 1e-6 else (low, 1 - _round(gap), scale)
    gap = min(1.0, (1 - low) * 10)
    return None if low <= 0 else (max(0.0, 1 - _round(gap)), high, scale)


def _refine_box(space: dict, best: dict, half_width: float) -> dict:
    """A box around `best` of +-half_width of each range (unit coordinates); a choice
    flag keeps the best's value."""
    box = {}
    for flag, spec in space.items():
        if spec[-1] == "choice":
            box[flag] = (best[flag], best[flag], "choice")
            continue
        u = _to_unit(spec, best[flag])
        lo, hi = (_to_value(spec, min(max(x, 0.0), 1.0)) for x in (u - half_width,
                                                                    u + half_width))
        box[flag] = (min(lo, hi), max(lo, hi), spec[2])
    return box


def adaptive_search(space: dict, budget: int, seed: int):
    """A generator: yields lists of settings to run, is sent back their scores (lower is
    better, inf = failed), and returns the search's record.

    Half the budget (at least 2) is a coarse Halton pass over the space. While the best
    setting is the most extreme value tried of a log-scaled flag and lies in the outer
    1/coarse of its range (the optimum may lie beyond), the range is widened past that
    edge (up to WIDEN_ROUNDS times) and max(2, coarse/4) more settings are drawn in the
    extension. The rest of the budget
    refines: Halton points in a box of +-1/coarse of each range around the best. A best
    still at an edge afterwards makes the row a lower bound."""
    coarse = max(2, budget // 2)
    spec = {k: tuple(v) for k, v in space.items()}
    settings = draw_trials(spec, coarse, seed)
    scores = list((yield settings))
    phases = ["coarse"] * coarse
    widenings, refined = [], budget - coarse <= 0
    while True:
        best = best_trial(scores)
        if best is None:
            break
        edges = _edges(spec, settings, scores, best, 1 / coarse)
        if edges and len(widenings) < WIDEN_ROUNDS:
            flag, side = edges[0]
            old = spec[flag]
            spec[flag] = _widened(old, side)
            extension = dict(spec)
            extension[flag] = (spec[flag][0], old[0], old[2]) if side == "low" else \
                (old[1], spec[flag][1], old[2])
            widenings.append({"flag": flag, "side": side, "from": list(old),
                              "to": list(spec[flag])})
            new = draw_trials(extension, max(2, coarse // 4), seed + len(widenings))
            phase = f"widened {flag} ({side})"
        elif not refined:
            refined = True
            new = draw_trials(_refine_box(spec, settings[best], 1 / coarse), budget - coarse,
                              seed + 100)
            phase = "refine"
        else:
            break
        settings += new
        phases += [phase] * len(new)
        scores += list((yield new))
    best = best_trial(scores)
    edges = [] if best is None else _edges(spec, settings, scores, best, 1 / coarse)
    return {"space": {k: list(v) for k, v in spec.items()}, "settings": settings,
            "scores": scores, "phases": phases, "best": best, "widened": widenings,
            "at_edge": [f"{flag} ({side})" for flag, side in edges]}


def run_search(search, evaluate) -> dict:
    """Drive `adaptive_search` with `evaluate(settings) -> scores` (tests, one optimizer)."""
    try:
        batch = next(search)
        while True:
            batch = search.send(evaluate(batch))
    except StopIteration as stop:
        return stop.value


# --- Choice and figures ---

def validation_figure(runs: list[dict]) -> float:
    values = [r.get("figures", {}).get("max_cos", math.inf) for r in runs]
    values = [math.inf if v is None else v for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        return math.inf
    return float(np.mean(values))


MISSED = 1e9  # the score of a trial that (on half its seeds or more) never got there


def time_selection_figure(runs: list[dict], histories: list, target: float,
                          key: str = "step") -> float:
    """AlgoPerf-style choice: the median over the tuning seeds of the steps (key "step")
    or stepping seconds (key "seconds") to `target`, a seed that misses counting as
    infinite; steps are tied more often than not, so the final max_cos breaks their ties.
    A trial whose median is infinite scores MISSED + its final max_cos (after every trial
    that got there, among themselves by the final figure); a failed run makes it +inf."""
    final = validation_figure(runs)
    if not math.isfinite(final):
        return math.inf
    times = []
    for history in histories:
        hit = time_to_target(history or [], target)[key]
        times.append(math.inf if hit is None else hit)
    median = float(np.median(times))
    if not math.isfinite(median):
        return MISSED + final
    return median + ((final + 1) / 4 if key == "step" else 0.0)


def best_trial(scores: list[float]) -> int | None:
    """Index of the lowest score (the first of equals); None if all failed."""
    if not scores or not math.isfinite(min(scores)):
        return None
    return int(np.argmin(scores))


def mean_and_interval(values, level: float = 0.95):
    """Mean and the Student-t interval of the mean; no interval from one value."""
    a = np.asarray(values, np.float64)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, None
    half = float(student_t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, [mean - half, mean + half]


def finals_counting_failures(runs: list[dict], worst: float, key: str = "max_cos") -> list:
    """Each run's final figure; a failed or non-finite run counts as `worst`."""
    out = []
    for r in runs:
        value = r.get("figures", {}).get(key)
        out.append(worst if value is None or not math.isfinite(value) else value)
    return out


def paired_verdict(values: list[float], reference: list[float], level: float = 0.95) -> dict:
    """The per-seed difference values - reference (same seeds, lower is better), its mean,
    Student-t interval and verdict: "better" / "worse" when the interval excludes 0,
    "tied" when it holds 0, "undecided" with one seed."""
    if len(values) != len(reference):
        raise ValueError("paired values need the same seeds")
    diff = [float(a - b) for a, b in zip(values, reference)]
    mean, interval = mean_and_interval(diff, level)
    if interval is None:
        verdict = "undecided"
    elif interval[1] < 0:
        verdict = "better"
    elif interval[0] > 0:
        verdict = "worse"
    else:
        verdict = "tied"
    return {"differences": diff, "mean": mean, "interval": interval, "verdict": verdict}


# --- Targets fixed by the workload, time to target, profiles ---

def workload_targets(start: float, goal: float, fractions) -> list[dict]:
    """Targets `fraction` of the way from the start's worst pair to `goal` (a bound or a
    best known figure), fixed before any contender runs."""
    return [{"fraction": f, "max_cos": start - f * (start - goal)} for f in fractions]


def time_to_target(history: list[dict], target: float) -> dict:
    """First logged step (and stepping seconds) at which max_cos <= target, or None."""
    for entry in history:
        if entry["max_cos"] is not None and entry["max_cos"] <= target:
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
