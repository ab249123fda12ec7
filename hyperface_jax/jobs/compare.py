"""The comparison job behind `python -m hyperface_jax.compare` (a thin main over `run`).

Plain comparison: every optimizer x objective variant is a `packing.run` of one
configuration with only optimizer/objective/seed changed, in `<out>/runs/<optimizer>-
<objective>/seed<k>` (seed k is `seed + k`: for a given seed every variant starts from the
same references); each identity sampler a `sample.run` in `<out>/samplers/<method>/
seed<k>`. Tuned comparison (`tuning=Tuning(...)`, docs/optimizers.md): per optimizer an
adaptive search (`research.tuning.adaptive_search`) on the tuning seeds, the chosen setting
re-run on fresh seeds shared by every optimizer, paired verdicts against the best, and the
time to targets fixed by the workload before the sweep. Finished runs are read back, not
re-run; interrupted ones resume from their checkpoints.
"""

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from hyperface_jax.baselines import samplers
from hyperface_jax.engine import kernels
from hyperface_jax.engine.objective import OBJECTIVES
from hyperface_jax.io.files import InputError, atomic_write, load_embeddings, save_json
from hyperface_jax.jobs import packing, problem
from hyperface_jax.jobs import sampling as sample
from hyperface_jax.jobs.compare_config import ARGUMENTS, TIME_KEYS, CompareConfig, Tuning
from hyperface_jax.jobs.config import PackConfig
from hyperface_jax.jobs.workers import start_sweep_worker, use_cache
from hyperface_jax.measure import bounds
from hyperface_jax.options import check_value, flag_fields
from hyperface_jax.research import compare_tables, search_spaces, suite, tuning

FIGURES = ("max_cos", "mean_nn_cos", "min_angle_deg", "mean_gallery_cos", "loss")
_OPTIONS = {f.name: f for f in flag_fields(CompareConfig)}


def check_options(**values) -> None:
    """The job's own arguments checked by their flags' fields (the one bounds table of
    `hyperface_jax.options`), so a call from Python is refused as the CLI refuses it."""
    for name, value in values.items():
        check_value(_OPTIONS[name], value)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "packing" or "sampler"
    optimizer: str = ""
    objective: str = ""
    method: str = ""


def variants_of(c: PackConfig, optimizers: list[str], objectives: list[str],
                methods: list[str]) -> list[Variant]:
    out = []
    if optimizers or objectives or not methods:
        for opt in optimizers or [c.optimizer]:
            for obj in objectives or [c.objective]:
                out.append(Variant(f"{opt}-{obj}", "packing", optimizer=opt, objective=obj))
    out += [Variant(f"sampler:{m}", "sampler", method=m) for m in methods]
    return out


def run_dir(out: Path, v: Variant, k: int, c: PackConfig, vs: list[Variant]) -> Path:
    """The run's folder; the `hyperface` sampler is the flagfile's own packing run, so it
    shares that variant's folder when the optimizer comparison has it."""
    if v.kind == "sampler" and v.method == "hyperface":
        same = Variant(f"{c.optimizer}-{c.objective}", "packing", c.optimizer, c.objective)
        if same in vs:
            v = same
    if v.kind == "packing":
        return out / "runs" / v.name / f"seed{k}"
    return out / "samplers" / v.method / f"seed{k}"


def config_of(c: PackConfig, v: Variant, seed: int, directory: Path) -> PackConfig:
    changes = {"seed": seed, "out_dir": str(directory)}
    if v.kind == "packing":
        changes.update(optimizer=v.optimizer, objective=v.objective)
    return dataclasses.replace(c, **changes)


def validate(c: PackConfig, vs: list[Variant], options: dict, seeds: int) -> None:
    """Every check that needs no computation, before anything is written."""
    check_options(seeds=seeds)
    built = problem.build_problem(c)  # names, ranges, gallery and init files
    for v in vs:
        if v.kind == "packing":
            if v.objective not in OBJECTIVES:
                raise InputError(f"unknown objective {v.objective!r} in --objectives; "
                                 f"choose from {', '.join(OBJECTIVES)}")
            cv = dataclasses.replace(c, optimizer=v.optimizer)
            optimizer = packing.build_optimizer(cv)
            packing.check_sparse(cv, optimizer, built.n, built.d)
        else:
            if v.method in samplers.RENAMED:
                raise InputError(f"--samplers={v.method} was renamed "
                                 f"{samplers.RENAMED[v.method]} (ours, not Vec2Face's method)")
            if v.method not in samplers.METHODS:
                raise InputError(f"unknown sampler {v.method!r} in --samplers; "
                                 f"choose from {', '.join(samplers.METHODS)}")
            if v.method in samplers.NEEDS_GALLERY and not c.gallery:
                raise InputError(f"--samplers={v.method} needs a --gallery")
            if v.method == "diffr" and not options["gallery_labels"]:
                raise InputError("--samplers=diffr needs --gallery_labels")


def _finished(directory: Path, c: PackConfig, v: Variant, options: dict) -> dict | None:
    """The report of an earlier run of exactly this configuration, or None."""
    path = directory / "report.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except ValueError:
        return None
    want = c.flag_values()
    if v.kind == "sampler" and v.method != "hyperface":
        want = {**want, "method": v.method, **options}
    have = report.get("flags", {})
    same = all(have.get(k) == val for k, val in want.items() if k not in packing.RUN_LENGTH_FLAGS)
    if not same:
        return None
    if v.kind == "packing" or v.method == "hyperface":
        if report.get("steps") != c.steps + c.polish_steps:
            return None
    return report


def _run_one(c: PackConfig, v: Variant, options: dict, log) -> dict:
    if v.kind == "packing":
        return packing.run(c, log=log)
    return sample.run(v.method, c, options, log=log)


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def _summarise(v: Variant, runs: list[dict]) -> dict:
    ok = [r for r in runs if "figures" in r]
    entry = {"name": v.name, "kind": v.kind, "optimizer": v.optimizer, "objective": v.objective,
             "method": v.method, "runs": runs}
    if ok:
        entry["mean"] = {k: _stats([r["figures"][k] for r in ok])["mean"]
                         for k in FIGURES if k in ok[0]["figures"]}
        entry["std"] = {k: _stats([r["figures"][k] for r in ok])["std"]
                        for k in FIGURES if k in ok[0]["figures"]}
        entry["wall_seconds"] = _stats([r["wall_seconds"] for r in ok])
        stepping = [r["stepping_seconds"] for r in ok if r.get("stepping_seconds") is not None]
        if stepping:
            entry["stepping_seconds"] = _stats(stepping)
    return entry


def nearest_cosines(x: np.ndarray) -> np.ndarray:
    """Each row's cosine to its nearest other row."""
    x = jax.numpy.asarray(x)
    nn, _ = kernels.nearest_neighbors(x, x, exclude_self=True)
    return np.asarray(nn)


def _nn_cosines(directory: Path) -> np.ndarray:
    return nearest_cosines(load_embeddings(directory / "embeddings.npy"))


@contextlib.contextmanager
def _compilation_cache(out: Path):
    """JAX's persistent compilation cache in `<out>/jax_cache` for the sweep's duration."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    use_cache(str((out / "jax_cache").absolute()))
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()




def run(c: PackConfig, *, optimizers: list[str], objectives: list[str], methods: list[str],
        seeds: int, options: dict, log=None, tuning_options: Tuning | None = None,
        arguments: dict | None = None) -> dict:
    """The comparison (or, with `tuning_options`, the tuned sweep) into c.out_dir.
    `arguments`: the command's flags, recorded for `--resume`."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not c.out_dir:
        raise InputError("--out_dir is required")
    vs = variants_of(c, optimizers, objectives, methods)
    validate(c, vs, options, seeds)
    table = None
    if tuning_options is not None:
        table = validate_tuning(c, vs, tuning_options, objectives, methods)
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if arguments is not None:
        save_json(out / ARGUMENTS, arguments)
    started = time.time()
    if tuning_options is not None:
        with _compilation_cache(out):
            result, histories = tune(c, vs, tuning_options, table, seeds=seeds, out=out,
                                     log=log)
        result["wall_seconds"] = round(time.time() - started, 3)
        save_json(out / "compare.json", result)
        markdown = compare_tables.tuned_markdown(result)
        atomic_write(out / "compare.md", lambda f: f.write(markdown.encode()))
        compare_tables.plot_tuned(out, result, histories)
        log(markdown.split("\n\n")[0] + "\n" + compare_tables.verdict_lines(result))
        log(f"compare: {len(vs)} optimizers -> {out / 'compare.md'}")
        return result
    with _compilation_cache(out):
        entries, histories, nn = _compare_variants(c, vs, seeds, options, out, log)

    result = {
        "variants": entries,
        "seeds": [c.seed + k for k in range(seeds)],
        "n": c.num_identities, "flags": c.flag_values(),
        "samplers_flags": options if methods else None,
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "wall_seconds": round(time.time() - started, 3),
    }
    save_json(out / "compare.json", result)
    markdown = compare_tables.plain_markdown(result)
    atomic_write(out / "compare.md", lambda f: f.write(markdown.encode()))
    compare_tables.plot_plain(out / "compare.png", entries, histories, nn, c)
    log(f"compare: {len(vs)} variants x {seeds} seeds -> {out / 'compare.md'}")
    return result


def _compare_variants(c: PackConfig, vs: list[Variant], seeds: int, options: dict, out: Path,
                      log):
    """Every variant x seed (finished ones read back); per variant its summary."""
    total = len(vs) * seeds
    entries, histories, nn = [], {}, {}
    for i, v in enumerate(vs):
        runs = []
        for k in range(seeds):
            directory = run_dir(out, v, k, c, vs)
            ck = config_of(c, v, c.seed + k, directory)
            report = _finished(directory, ck, v, options)
            skipped = report is not None
            if report is None:
                try:
                    report = _run_one(ck, v, options, lambda m: None)
                except InputError as e:
                    if v.kind == "packing":
                        raise
                    # A sampler that cannot reach N is a finding, not bad input.
                    runs.append({"seed": ck.seed, "dir": str(directory), "error": str(e)})
                    log(f"[{i * seeds + k + 1}/{total}] {v.name} seed {ck.seed}: {e}")
                    continue
            run_entry = {
                "seed": ck.seed, "dir": str(directory), "skipped": skipped,
                "figures": report["figures"], "wall_seconds": report["wall_seconds"],
                "stepping_seconds": report.get("stepping_seconds_total"),
                "compile_seconds": report.get("compile_seconds"),
                "seconds_per_step": report.get("seconds_per_step"),
            }
            runs.append(run_entry)
            if "history" in report:
                histories.setdefault(v.name, []).append(report["history"])
            if v.kind == "sampler" and k == 0:
                nn[v.method] = _nn_cosines(directory)
            f = report["figures"]
            log(f"[{i * seeds + k + 1}/{total}] {v.name} seed {ck.seed}"
                f"{' (done before)' if skipped else ''}: max_cos={f['max_cos']:.5f} "
                f"mean_nn_cos={f['mean_nn_cos']:.5f} wall={report['wall_seconds']:.1f}s")
        entries.append(_summarise(v, runs))
    return entries, histories, nn


# --- The tuned comparison (docs/optimizers.md) ---


def _load_table(path: str) -> dict:
    if not path:
        return search_spaces.SEARCH_SPACES
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"--search_space {path}: {e}") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise InputError(f"--search_space {path}: not a JSON object of per-optimizer objects")
    return table


def validate_tuning(c: PackConfig, vs: list[Variant], t: Tuning, objectives: list[str],
                    methods: list[str]) -> dict:
    """The tuning options and the search-space table, checked before anything runs."""
    if t.trials < 2:  # (0, the flag's "no tuning", is no number of trials here)
        raise InputError(f"--tune_trials must be >= 2, got {t.trials}")
    check_options(final_seeds=t.final_seeds, workers=t.workers, studies=t.studies,
                  selection=t.selection, target=t.target, best_known=t.best_known)
    if not t.targets or not all(0 < f <= 1 for f in t.targets):
        raise InputError(f"--targets must be fractions in (0, 1], got {list(t.targets)}")
    if t.selection in TIME_KEYS and t.selection_target not in t.targets:
        raise InputError(f"--selection_target={t.selection_target} must be one of --targets "
                         f"({', '.join(map(str, t.targets))})")
    if methods:
        raise InputError("--tune_trials compares optimizers; run --samplers in another compare")
    if len(objectives) > 1:
        raise InputError("--tune_trials tunes at one objective; run one sweep per objective")
    table = _load_table(t.search_space)
    names = [v.optimizer for v in vs]
    if len(set(names)) < len(names):
        raise InputError(f"--optimizers names one optimizer twice: {','.join(names)}")
    for v in vs:
        space = search_spaces.space_of(v.optimizer, table)
        tuning.check_space(v.optimizer, space)
        for trial in tuning.draw_trials(space, 2, c.seed):  # every tuned flag is accepted
            cv = dataclasses.replace(c, optimizer=v.optimizer, **trial)
            problem.check_settings(cv)
            packing.build_optimizer(cv)
    return table


def _pack_job(c: PackConfig) -> dict:
    """One pack run; a failure comes back as data (a diverging trial is a finding)."""
    try:
        return packing.run(c, log=lambda m: None)
    except (InputError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - recorded with the trial, the sweep goes on
        return {"error": f"{type(e).__name__}: {e}"}


def _clean(figures: dict) -> dict:
    """Figures as strict JSON: a non-finite value becomes None."""
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None)
            for k, v in figures.items()}


def _run_jobs(jobs: list[tuple[PackConfig, Path]], workers: int, cache: str, log,
              label: str) -> tuple[list[dict], list[list[dict] | None]]:
    """Each job's run entry (finished runs are read back, not re-run) and its history;
    with workers > 1 the missing runs go to a pool of that many processes."""
    entries: list = [None] * len(jobs)
    histories: list = [None] * len(jobs)
    done = 0

    def record(i: int, report: dict, skipped: bool) -> None:
        nonlocal done
        ck, directory = jobs[i]
        entry = {"seed": ck.seed, "dir": str(directory), "skipped": skipped}
        if "figures" in report:
            entry.update(figures=_clean(report["figures"]),
                         wall_seconds=report["wall_seconds"],
                         stepping_seconds=report.get("stepping_seconds_total"))
            histories[i] = report.get("history")
            said = f"max_cos={report['figures']['max_cos']:.5f}"
        else:
            entry["error"] = report["error"]
            said = report["error"]
        entries[i] = entry
        done += 1
        where = "/".join(directory.parts[-4:])
        log(f"[{label} {done}/{len(jobs)}] {where}"
            f"{' (done before)' if skipped else ''}: {said}")

    todo = []
    for i, (ck, directory) in enumerate(jobs):
        report = _finished(directory, ck, Variant("", "packing"), {})
        if report is None:
            todo.append(i)
        else:
            record(i, report, True)
    if workers == 1 or len(todo) < 2:
        for i in todo:
            record(i, _pack_job(jobs[i][0]), False)
    else:
        context = multiprocessing.get_context("spawn")  # JAX does not survive fork
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                                 initializer=start_sweep_worker,
                                 initargs=(os.getpid(), cache)) as pool:
            futures = {pool.submit(_pack_job, jobs[i][0]): i for i in todo}
            for future in as_completed(futures):
                record(futures[future], future.result(), False)
    return entries, histories


def fixed_targets(c: PackConfig, t: Tuning) -> dict:
    """The workload's targets, fixed before any contender runs: `t.targets` fractions of
    the way from the start's worst pair (at --seed) to the goal (the Levenshtein bound on
    the worst pair of n points in d dimensions, or --best_known), plus --target if given."""
    built = problem.build_problem(c)
    start, n, d = float(nearest_cosines(built.init).max()), built.n, built.d
    if t.best_known is not None:
        goal, source = t.best_known, "--best_known"
    elif d >= 3:
        goal, source = bounds.bound_max_cos(n, d), f"the Levenshtein bound for n={n}, d={d}"
    else:
        goal, source = -1.0, "-1 (no bound for d < 3)"
    listed = [{**target, "label": f"{100 * target['fraction']:g} %",
               "definition": f"{100 * target['fraction']:g} % of the way from the start's "
                             f"worst pair {start:.5f} to {source} {goal:.5f}"}
              for target in tuning.workload_targets(start, goal, t.targets)]
    if t.target is not None:
        listed.append({"fraction": None, "max_cos": t.target, "label": "--target",
                       "definition": f"--target {t.target:.5f}, given on the command line"})
    return {"start": start, "goal": goal, "goal_from": source, "list": listed,
            "rule": "first logged step (and its stepping seconds) whose exact max_cos is at "
                    "or below the target; median over the fresh seeds, a seed that never "
                    "reaches it (or whose run failed) counting as infinite"}


def _trial_dir(out: Path, name: str, study: int, j: int, k: int) -> Path:
    base = out / "tune" / name if study == 0 else out / "tune" / name / f"study{study}"
    return base / f"trial{j}" / f"seed{k}"


def _final_dir(out: Path, name: str, study: int, k: int) -> Path:
    base = out / "final" / name if study == 0 else out / "final" / name / f"study{study}"
    return base / f"seed{k}"


def _search_all(c: PackConfig, vs: list[Variant], t: Tuning, table: dict, seeds: int,
                out: Path, selection_target: float, log) -> dict:
    """Every optimizer's adaptive search in every study, round by round (the rounds of
    all optimizers run together, so --workers has work to share)."""
    cache = str((out / "jax_cache").absolute())
    searches, pending, rows = {}, {}, {}
    for s in range(t.studies):
        for v in vs:
            key = (v.optimizer, s)
            space = search_spaces.space_of(v.optimizer, table)
            searches[key] = tuning.adaptive_search(space, t.trials, c.seed + 1000 * s)
            pending[key] = next(searches[key])
            rows[key] = []
    results = {}
    while pending:
        jobs, spans = [], {}
        for (name, s), settings in pending.items():
            v = next(v for v in vs if v.optimizer == name)
            first = len(jobs)
            for i, setting in enumerate(settings):
                j = len(rows[(name, s)]) + i
                for k in range(seeds):
                    directory = _trial_dir(out, name, s, j, k)
                    ck = config_of(c, v, c.seed + s * seeds + k, directory)
                    jobs.append((dataclasses.replace(ck, **setting), directory))
            spans[(name, s)] = first
        runs, histories = _run_jobs(jobs, t.workers, cache, log, "tuning")
        advanced = {}
        for key, settings in pending.items():
            scores = []
            for i, setting in enumerate(settings):
                at = spans[key] + i * seeds
                group, group_histories = runs[at:at + seeds], histories[at:at + seeds]
                if t.selection in TIME_KEYS:
                    score = tuning.time_selection_figure(group, group_histories,
                                                         selection_target,
                                                         TIME_KEYS[t.selection])
                else:
                    score = tuning.validation_figure(group)
                scores.append(score)
                rows[key].append({"trial": len(rows[key]), "flags": setting, "runs": group,
                                  "validation": score if math.isfinite(score) else None})
            try:
                advanced[key] = searches[key].send(scores)
            except StopIteration as stop:
                results[key] = stop.value
        pending = advanced
    for key, record in results.items():
        for row, phase in zip(rows[key], record["phases"]):
            row["phase"] = phase
        record["rows"] = rows[key]
    return results


def _final_runs(c: PackConfig, vs: list[Variant], t: Tuning, searches: dict,
                fresh_seeds: list[int], out: Path, log) -> dict:
    """Each study's chosen setting on the fresh seeds, one run at a time (their seconds
    are compared across optimizers)."""
    jobs, owners = [], []
    for (name, s), record in searches.items():
        if record["best"] is None:
            continue
        v = next(v for v in vs if v.optimizer == name)
        setting = record["settings"][record["best"]]
        for k, seed in enumerate(fresh_seeds):
            directory = _final_dir(out, name, s, k)
            jobs.append((dataclasses.replace(config_of(c, v, seed, directory), **setting),
                         directory))
            owners.append((name, s))
    cache = str((out / "jax_cache").absolute())
    runs, histories = _run_jobs(jobs, 1, cache, log, "fresh seeds")
    out_runs = {}
    for owner, run_entry, history in zip(owners, runs, histories):
        out_runs.setdefault(owner, ([], []))
        out_runs[owner][0].append(run_entry)
        out_runs[owner][1].append(history)
    return out_runs


def _time_to_targets(histories: list, targets: list[dict]) -> list[dict]:
    return [{"label": target["label"], "max_cos": target["max_cos"],
             **tuning.summarise_time_to_target([tuning.time_to_target(h or [],
                                                                      target["max_cos"])
                                               for h in histories])}
            for target in targets]


def _study_score(entry_runs: list[dict], histories: list, worst: float, t: Tuning,
                 selection_target: float) -> float:
    if t.selection in TIME_KEYS:
        key = TIME_KEYS[t.selection]
        hits = [tuning.time_to_target(h or [], selection_target)[key] for h in histories]
        steps = [math.inf if h is None else h for h in hits]
        return float(np.median(steps))
    return float(np.mean(tuning.finals_counting_failures(entry_runs, worst)))


def tune(c: PackConfig, vs: list[Variant], t: Tuning, table: dict, *, seeds: int, out: Path,
         log) -> tuple[dict, dict]:
    """The tuned comparison: targets, searches, fresh seeds, paired verdicts."""
    targets = fixed_targets(c, t)
    log("compare: targets fixed before the sweep:\n" + "\n".join(
        f"  {target['max_cos']:.5f}: {target['definition']}" for target in targets["list"]))
    selection_target = next((x["max_cos"] for x in targets["list"]
                             if x["fraction"] == t.selection_target), None)
    tuning_seeds = [[c.seed + s * seeds + k for k in range(seeds)] for s in range(t.studies)]
    fresh_seeds = [c.seed + t.studies * seeds + k for k in range(t.final_seeds)]
    searches = _search_all(c, vs, t, table, seeds, out, selection_target, log)
    finals = _final_runs(c, vs, t, searches, fresh_seeds, out, log)
    # A failed fresh-seed run counts as the worst value seen: the start's worst pair or
    # any finished run's final, whichever is larger (it never beats a run that finished).
    finished = [r["figures"]["max_cos"] for runs, _ in finals.values() for r in runs
                if r.get("figures", {}).get("max_cos") is not None]
    worst = max([targets["start"], *finished])

    tuned, histories = {}, {}
    for v in vs:
        name = v.optimizer
        studies = []
        for s in range(t.studies):
            record = searches[(name, s)]
            runs, hist = finals.get((name, s), ([], []))
            score = _study_score(runs, hist, worst, t, selection_target) if runs else math.inf
            studies.append({"study": s, "best_trial": record["best"],
                            "best_flags": None if record["best"] is None
                            else record["settings"][record["best"]],
                            "score": score if math.isfinite(score) else None,
                            "widened": record["widened"], "at_edge": record["at_edge"],
                            "space": record["space"]})
        ranked = sorted(range(t.studies), key=lambda s: (studies[s]["score"] is None,
                                                         studies[s]["score"] or 0.0))
        headline = ranked[(t.studies - 1) // 2]  # the median study (the lower for even S)
        chosen = studies[headline]
        if chosen["best_trial"] is None:
            tuned[name] = {"best_trial": None, "error": "every tuning trial failed",
                           "studies": studies, "lower_bound": False, "failures": None}
            continue
        runs, hist = finals[(name, headline)]
        histories[name] = hist
        ok = [r for r in runs if "figures" in r]
        figures, interval = {}, {}
        for key in FIGURES:
            values = [r["figures"].get(key) for r in ok]
            if values and all(x is not None for x in values):
                figures[key], interval[key] = tuning.mean_and_interval(values)
        counted = tuning.finals_counting_failures(runs, worst)
        tuned[name] = {
            "study": headline, "best_trial": chosen["best_trial"],
            "best_flags": chosen["best_flags"], "studies": studies,
            "lower_bound": bool(chosen["at_edge"]), "at_edge": chosen["at_edge"],
            "widened": chosen["widened"], "figures": figures, "interval": interval,
            "failures": len(runs) - len(ok), "max_cos_counting_failures": counted,
            "max_cos_counting_failures_mean": float(np.mean(counted)),
            "seeds": [r["seed"] for r in runs], "runs": runs,
            "time_to_target": _time_to_targets(hist, targets["list"]),
        }
    best = _attach_verdicts(tuned)
    first = searches[(vs[0].optimizer, 0)]
    return {
        "tuning": {
            "trials_per_optimizer": t.trials, "studies": t.studies,
            "tuning_seeds": tuning_seeds[0], "study_seeds": tuning_seeds,
            "fresh_seeds": fresh_seeds, "selection": t.selection,
            "validation": tuning.VALIDATION if t.selection == "final" else
            f"AlgoPerf-style: median {'steps' if t.selection == 'time' else 'stepping seconds'} "
            f"to the {100 * t.selection_target:g} % target over the tuning seeds within "
            "--steps, ties broken by the final max_cos",
            "search": "adaptive: a coarse scrambled-Halton pass over half the budget, the "
                      "range widened past an edge holding the best (said in the table), the "
                      "rest refining around the best",
            "coarse_trials": first["phases"].count("coarse"),
            "search_spaces": {v.optimizer: search_spaces.space_of(v.optimizer, table)
                              for v in vs},
            "trials": {v.optimizer: searches[(v.optimizer, 0)]["rows"] for v in vs},
            "study_trials": {v.optimizer: [searches[(v.optimizer, s)]["rows"]
                                           for s in range(1, t.studies)] for v in vs},
        },
        "tuned": tuned, "best": best, "targets": targets,
        "failure_value": worst,
        "n": c.num_identities, "objective": vs[0].objective, "flags": c.flag_values(),
        "jax_version": jax.__version__, "backend": jax.default_backend(),
    }, histories


def _attach_verdicts(tuned: dict) -> str | None:
    """The best row (lowest mean final max_cos, failures counted, lower bounds excluded)
    and, for every other row, its paired difference per fresh seed against it."""
    ranked = [n for n, e in tuned.items() if e.get("best_trial") is not None
              and not e["lower_bound"]]
    if not ranked:
        for e in tuned.values():
            e["verdict"] = {"verdict": "lower bound" if e.get("lower_bound") else "undecided"}
        return None
    best = min(ranked, key=lambda n: tuned[n]["max_cos_counting_failures_mean"])
    reference = tuned[best]["max_cos_counting_failures"]
    for name, e in tuned.items():
        if e.get("best_trial") is None:
            e["verdict"] = {"verdict": "worse"}  # every trial failed
            continue
        paired = tuning.paired_verdict(e["max_cos_counting_failures"], reference)
        if name == best:
            paired["verdict"] = "best"
        elif e["lower_bound"]:
            paired["verdict"] = "lower bound"
        e["verdict"] = paired
    return best


def run_suite(base: PackConfig, names: list[str], *, scale: float, optimizers: list[str],
              t: Tuning, seeds: int, fraction: float, cost: str, log=None,
              arguments: dict | None = None) -> dict:
    """Every workload of `names` as a tuned comparison in `<out>/<workload>`, then the
    performance profile over them (`suite.md`, `suite.json`, `profile.png` in `<out>`)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not base.out_dir:
        raise InputError("--out_dir is required")
    check_options(suite_scale=scale, profile_cost=cost)
    if fraction not in t.targets:
        raise InputError(f"--profile_target={fraction} must be one of --targets "
                         f"({', '.join(map(str, t.targets))})")
    out = Path(base.out_dir)
    workloads = suite.workloads_of(names)
    configs = [suite.config_of(base, w, scale, out) for w in workloads]
    out.mkdir(parents=True, exist_ok=True)
    for w, c in zip(workloads, configs):  # every workload checked before any runs
        suite.write_gallery(c, w, scale)
        vs = variants_of(c, optimizers, [], [])
        validate(c, vs, {}, seeds)
        validate_tuning(c, vs, t, [], [])
    if arguments is not None:
        save_json(out / ARGUMENTS, arguments)
    results = {}
    started = time.time()
    for w, c in zip(workloads, configs):
        log(f"suite: workload {w.name} ({w.about}): n = {c.num_identities}, d = {c.dim}")
        results[w.name] = run(c, optimizers=optimizers, objectives=[], methods=[],
                              seeds=seeds, options={}, log=log, tuning_options=t)
    summary = suite.profile(out, results, fraction, cost)
    summary["wall_seconds"] = round(time.time() - started, 3)
    save_json(out / "suite.json", summary)
    log(f"suite: {len(workloads)} workloads in {summary['wall_seconds']:.0f} s -> "
        f"{out / 'suite.md'}, {out / 'profile.png'}")
    return summary
