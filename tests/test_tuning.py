"""The statistics of tuned comparisons on planted cases: paired verdicts, failures,
widening at an edge, lower bounds, workload targets, recipe flags."""

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from hyperface_jax.io.files import InputError
from hyperface_jax.jobs import compare
from hyperface_jax.research import compare_tables, tuning


def test_paired_verdict_on_synthetic_results_with_a_known_difference():
    rng = np.random.default_rng(0)
    reference = 0.14 + 0.002 * rng.standard_normal(10)  # seeds differ a lot ...
    noise = 0.0002 * rng.standard_normal(10)  # ... the paired difference little
    worse = tuning.paired_verdict(list(reference + 0.001 + noise), list(reference))
    diff = 0.001 + noise
    half = student_t.ppf(0.975, 9) * diff.std(ddof=1) / math.sqrt(10)
    assert worse["differences"] == pytest.approx(diff)
    assert worse["interval"] == pytest.approx([diff.mean() - half, diff.mean() + half])
    assert worse["interval"][0] < 0.001 < worse["interval"][1] and worse["verdict"] == "worse"
    better = tuning.paired_verdict(list(reference - 0.001 + noise), list(reference))
    assert better["verdict"] == "better"
    tied = tuning.paired_verdict(list(reference + noise - noise.mean()), list(reference))
    assert tied["verdict"] == "tied" and tied["interval"][0] < 0 < tied["interval"][1]
    # Unpaired, the same 0.001 shift is lost in the seed-to-seed spread of 0.002.
    unpaired = tuning.paired_verdict(list(reference[::-1] + 0.001 + noise), list(reference))
    assert unpaired["verdict"] == "tied"
    assert tuning.paired_verdict([0.2], [0.1])["verdict"] == "undecided"


def _entry(values, *, failed=(), lower_bound=False):
    runs = [{"seed": k, "error": "FloatingPointError"} if k in failed
            else {"seed": k, "figures": {"max_cos": v}} for k, v in enumerate(values)]
    counted = tuning.finals_counting_failures(runs, 0.5)
    return {"best_trial": 0, "best_flags": {"learning_rate": 0.01}, "lower_bound": lower_bound,
            "at_edge": ["learning_rate (high)"] if lower_bound else [], "widened": [],
            "figures": {"max_cos": float(np.mean([v for k, v in enumerate(values)
                                                  if k not in failed]))},
            "interval": {}, "failures": len(failed), "runs": runs,
            "max_cos_counting_failures": counted,
            "max_cos_counting_failures_mean": float(np.mean(counted)), "studies": [],
            "time_to_target": []}


def test_failed_runs_count_as_the_worst_value_and_lower_bounds_are_not_ranked():
    base = [0.140, 0.142, 0.139, 0.141, 0.143, 0.140, 0.141, 0.142, 0.139, 0.140]
    tuned = {
        "adam": _entry(base),
        # Better on the 8 seeds that finished, but 2 runs failed: counted at 0.5, not dropped.
        "fragile": _entry([v - 0.002 for v in base], failed=(3, 7)),
        # Best of all, but its best setting sat at the edge of its range: a lower bound.
        "edgy": _entry([v - 0.01 for v in base], lower_bound=True),
    }
    assert tuned["fragile"]["max_cos_counting_failures"][3] == 0.5
    best = compare._attach_verdicts(tuned)
    assert best == "adam"
    assert tuned["adam"]["verdict"]["verdict"] == "best"
    assert tuned["edgy"]["verdict"]["verdict"] == "lower bound"
    fragile = tuned["fragile"]["verdict"]
    assert fragile["differences"][3] == pytest.approx(0.5 - base[3])
    assert fragile["verdict"] == "tied"  # two huge losses and eight small wins
    result = {"tuned": tuned, "best": best, "n": 10, "objective": "max",
              "failure_value": 0.5,
              "targets": {"list": [], "rule": "r"},
              "tuning": {"trials_per_optimizer": 16, "search": "s", "studies": 1,
                         "tuning_seeds": [0], "validation": "v", "fresh_seeds": list(range(10)),
                         "selection": "final", "trials": {}}}
    table = compare_tables.tuned_markdown(result)
    assert "| fragile | learning_rate=0.01 |" in table and "| 2/10 |" in table
    assert "| edgy (lower bound) |" in table
    rows = [line.split(" |")[0] for line in table.splitlines() if line.startswith("| ")]
    assert rows.index("| adam") < rows.index("| fragile") < rows.index("| edgy (lower bound)")
    said = compare_tables.verdict_lines(result)
    assert "fragile: tied with adam" in said and "edgy: lower bound" in said


SPACE = {"learning_rate": (1e-4, 1.0, "log"), "b2": (0.9, 0.9999, "log1m")}


def _distance_to(lr):
    return lambda settings: [abs(math.log10(s["learning_rate"] / lr)) for s in settings]


def test_an_edge_of_range_best_triggers_widening():
    inside = tuning.run_search(tuning.adaptive_search(SPACE, 16, 0), _distance_to(0.01))
    assert inside["widened"] == [] and inside["at_edge"] == []
    assert len(inside["settings"]) == 16 and inside["phases"].count("coarse") == 8
    best = inside["settings"][inside["best"]]["learning_rate"]
    assert abs(math.log10(best / 0.01)) < 0.25  # the refinement found the optimum
    beyond = tuning.run_search(tuning.adaptive_search(SPACE, 16, 0), _distance_to(30.0))
    assert beyond["widened"][0]["flag"] == "learning_rate"
    assert beyond["widened"][0]["side"] == "high"
    assert beyond["space"]["learning_rate"][1] > 30 and beyond["at_edge"] == []
    assert abs(math.log10(beyond["settings"][beyond["best"]]["learning_rate"] / 30)) < 0.25
    # Out of reach even after the widenings: still at the edge, i.e. a lower bound.
    far = tuning.run_search(tuning.adaptive_search(SPACE, 16, 0), _distance_to(1e12))
    assert len(far["widened"]) == tuning.WIDEN_ROUNDS and far["at_edge"] == [
        "learning_rate (high)"]
    low = tuning.run_search(tuning.adaptive_search(SPACE, 16, 0), _distance_to(1e-6))
    assert low["widened"][0]["side"] == "low" and low["space"]["learning_rate"][0] < 1e-6
    for search in (beyond, low):  # the extension's settings lie in the new slice, spread
        first = search["widened"][0]
        rates = [s["learning_rate"] for s, p in zip(search["settings"], search["phases"])
                 if p == "widened learning_rate (" + first["side"] + ")"][:2]  # 1st round
        lo, hi = sorted([first["from"][0 if first["side"] == "low" else 1],
                         first["to"][0 if first["side"] == "low" else 1]])
        assert len(set(rates)) == 2
        assert all(lo <= r <= hi for r in rates)
    assert abs(math.log10(low["settings"][low["best"]]["learning_rate"] / 1e-6)) < 0.25


def test_recipe_flags_can_be_searched():
    space = {"learning_rate": (0.01, 0.1, "log"),
             "schedule": ("cosine", "constant", "staircase", "choice"),
             "neighbor_refresh_every": (5, 100, "int_log"),
             "temperature_start": (1.0, 100.0, "log")}
    tuning.check_space("adam", space)
    trials = tuning.draw_trials(space, 12, seed=1)
    assert {t["schedule"] for t in trials} == {"cosine", "constant", "staircase"}
    assert all(isinstance(t["neighbor_refresh_every"], int)
               and 5 <= t["neighbor_refresh_every"] <= 100 for t in trials)
    with pytest.raises(InputError, match="needs >= 2 choices"):
        tuning.check_space("adam", {"learning_rate": (0.01, 0.1, "log"),
                                    "schedule": ("cosine", "choice")})
    with pytest.raises(InputError, match="not tunable"):
        tuning.check_space("adam", {"learning_rate": (0.01, 0.1, "log"), "dim": (2, 8, "int")})


def test_workload_targets_lie_between_the_start_and_the_goal():
    targets = tuning.workload_targets(0.42, 0.06, (0.5, 0.8, 0.95))
    assert [t["max_cos"] for t in targets] == pytest.approx([0.24, 0.132, 0.078])


def test_time_selection_prefers_the_earlier_arrival_then_the_lower_final():
    def runs(final):
        return [{"figures": {"max_cos": final}}]

    def history(*values):
        return [[{"step": 10 * (i + 1), "seconds": 0.1 * (i + 1), "max_cos": v}
                 for i, v in enumerate(values)]]

    early = tuning.time_selection_figure(runs(0.3), history(0.6, 0.4, 0.3), 0.45)
    late = tuning.time_selection_figure(runs(0.2), history(0.6, 0.5, 0.2), 0.45)
    never = tuning.time_selection_figure(runs(0.46), history(0.6, 0.5, 0.46), 0.45)
    never_worse = tuning.time_selection_figure(runs(0.5), history(0.6, 0.5, 0.5), 0.45)
    assert early < late < never < never_worse  # steps first, the final figure breaks ties
    assert early == pytest.approx(20 + 1.3 / 4)
    assert never == tuning.MISSED + 0.46
    seconds = tuning.time_selection_figure(runs(0.3), history(0.6, 0.4, 0.3), 0.45, "seconds")
    assert seconds == pytest.approx(0.2)  # the wall-clock variant: stepping seconds
    failed = tuning.time_selection_figure([{"error": "x"}], [None], 0.45)
    assert failed == math.inf
