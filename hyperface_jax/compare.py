"""`python -m hyperface_jax.compare`: optimizers, objectives and identity samplers side by side.

    python -m hyperface_jax.compare --flagfile=configs/quickstart.flags \\
        --optimizers=adam,adamw,rmsprop,sgd,lion,lamb --objectives=max,logsumexp,riesz \\
        --seeds=3 --samplers=random_margin,hyperface --out_dir=runs/compare

Every optimizer x objective variant is a `packing.run` of the flagfile's configuration with
only --optimizer/--objective/--seed changed, in `<out_dir>/runs/<optimizer>-<objective>/
seed<k>`; seed k is `--seed + k`, so for a given seed every variant starts from the same
initial references and sees the same gallery. Each sampler of `--samplers` is a
`sample.run` at the same --num_identities in `<out_dir>/samplers/<method>/seed<k>`
(`hyperface` is the flagfile's own packing run: it reuses that variant's folder if any).
A variant whose folder already holds its final report with the same flags is skipped;
an interrupted one resumes from its orbax checkpoints (re-run the same command).
Compiled programs are shared between runs through JAX's persistent compilation cache in
`<out_dir>/jax_cache` (same shapes and optimizer: the seeds of a variant compile once).

Writes `compare.json` (per run: final figures, wall and stepping seconds; per variant:
mean and std over seeds), `compare.md` (the table, best worst-pair cosine first) and
`compare.png` (worst-pair and mean nearest-neighbour cosine against steps and against
stepping seconds, one line per variant, the mean over seeds; with samplers, the
distribution of each identity's nearest-neighbour cosine per method at equal N).

Tuned comparison (docs/optimizers.md):

    python -m hyperface_jax.compare --flagfile=... --optimizers=sgd,adam,lion \
        --tune_trials=8 --seeds=2 --final_seeds=3 --out_dir=runs/tuned

gives each optimizer --tune_trials settings from its search space (hyperface_jax/
search_spaces.py, or --search_space=file.json), each run on --seeds seeds in
`<out_dir>/tune/<optimizer>/trial<j>/seed<k>`; the trial with the lowest mean final
max_cos is re-run on --final_seeds fresh seeds in `<out_dir>/final/<optimizer>/seed<k>`.
compare.json holds every trial and `"tuned": {optimizer: {"best_flags", "figures",
"interval", "time_to_target", ...}}`; compare.md the table; sensitivity.png the final
figure against the learning rate; compare.png the tuned curves with the target.
`--resume --out_dir=...` continues the sweep recorded there with its own flags.
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure.
"""

import contextlib
import dataclasses
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import jax
import numpy as np
from absl import flags
from jax.experimental.compilation_cache import compilation_cache

from hyperface_jax import cli, sample
from hyperface_jax.baselines import samplers
from hyperface_jax.engine import neighbors
from hyperface_jax.engine.objective import OBJECTIVES
from hyperface_jax.io.files import InputError, atomic_write, load_embeddings, save_figure, save_json
from hyperface_jax.jobs import packing, problem
from hyperface_jax.jobs.config import HELP_GROUPS, PackConfig, config_from_flags, define_flags
from hyperface_jax.research import search_spaces, tuning

FIGURES = ("max_cos", "mean_nn_cos", "min_angle_deg", "mean_gallery_cos", "loss")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "packing" or "sampler"
    optimizer: str = ""
    objective: str = ""
    method: str = ""


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


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
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
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


def _nn_cosines(directory: Path) -> np.ndarray:
    x = load_embeddings(directory / "embeddings.npy")
    nn, _ = neighbors.nearest_neighbors(jax.numpy.asarray(x), jax.numpy.asarray(x),
                                        exclude_self=True)
    return np.asarray(nn)


@contextlib.contextmanager
def _compilation_cache(out: Path):
    """JAX's persistent compilation cache in `<out>/jax_cache` for the sweep's duration."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    _use_cache(str((out / "jax_cache").absolute()))
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def _use_cache(directory: str) -> None:
    compilation_cache.reset_cache()  # (re)initialised at the first compile, in this folder
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@dataclasses.dataclass(frozen=True)
class Tuning:
    """`--tune_trials` and its companions (see `tune`)."""
    trials: int
    final_seeds: int = 3
    search_space: str = ""  # a JSON file; empty: search_spaces.SEARCH_SPACES
    target: str = ""  # an optimizer's name or a max_cos value; empty: adam if tuned
    workers: int = 1


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
        atomic_write(out / "compare.md", lambda f: f.write(_tuned_markdown(result).encode()))
        _plot_tuned(out, result, histories)
        log(f"compare: {len(vs)} optimizers x {tuning_options.trials} trials x {seeds} seeds, "
            f"then {tuning_options.final_seeds} fresh seeds -> {out / 'compare.md'}")
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
    atomic_write(out / "compare.md", lambda f: f.write(_markdown(result).encode()))
    _plot(out / "compare.png", entries, histories, nn, c)
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


# --- Tuning: --tune_trials (docs/optimizers.md) ---

ARGUMENTS = "compare_args.json"  # the sweep's flags, read back by --resume


def validate_tuning(c: PackConfig, vs: list[Variant], t: Tuning, objectives: list[str],
                    methods: list[str]) -> dict:
    """The tuning flags and the search-space table, checked before anything runs."""
    if t.trials < 1:
        raise InputError(f"--tune_trials must be >= 1, got {t.trials}")
    if t.final_seeds < 1:
        raise InputError(f"--final_seeds must be >= 1, got {t.final_seeds}")
    if t.workers < 1:
        raise InputError(f"--workers must be >= 1, got {t.workers}")
    if methods:
        raise InputError("--tune_trials compares optimizers; run --samplers in another compare")
    if len(objectives) > 1:
        raise InputError("--tune_trials tunes at one objective; run one sweep per objective")
    table = search_spaces.SEARCH_SPACES
    if t.search_space:
        try:
            table = json.loads(Path(t.search_space).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"--search_space {t.search_space}: {e}") from None
        if not isinstance(table, dict):
            raise InputError(f"--search_space {t.search_space}: not a JSON object")
    names = [v.optimizer for v in vs]
    if len(set(names)) < len(names):
        raise InputError(f"--optimizers names one optimizer twice: {','.join(names)}")
    for v in vs:
        space = search_spaces.space_of(v.optimizer, table)
        tuning.check_space(v.optimizer, space)
        for trial in tuning.draw_trials(space, 1, c.seed):  # every tuned flag is accepted
            packing.build_optimizer(dataclasses.replace(c, optimizer=v.optimizer, **trial))
    if t.target and t.target not in names:
        try:
            value = float(t.target)
        except ValueError:
            raise InputError(f"--target must be one of the optimizers ({', '.join(names)}) "
                             f"or a max_cos value, got {t.target!r}") from None
        if not -1 <= value <= 1:
            raise InputError(f"--target max_cos must be in [-1, 1], got {value}")
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
        where = "/".join(directory.parts[-3:] if label == "tuning" else directory.parts[-2:])
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
                                 initializer=_use_cache, initargs=(cache,)) as pool:
            futures = {pool.submit(_pack_job, jobs[i][0]): i for i in todo}
            for future in as_completed(futures):
                record(futures[future], future.result(), False)
    return entries, histories


def tune(c: PackConfig, vs: list[Variant], t: Tuning, table: dict, *, seeds: int, out: Path,
         log) -> tuple[dict, dict]:
    """Per optimizer: `t.trials` settings drawn from its search space, each run on the
    tuning seeds; the best by `tuning.VALIDATION` re-run on `t.final_seeds` fresh seeds."""
    tuning_seeds = [c.seed + k for k in range(seeds)]
    fresh_seeds = [c.seed + seeds + k for k in range(t.final_seeds)]  # never used in tuning
    cache = str((out / "jax_cache").absolute())
    plan = {v.optimizer: tuning.draw_trials(search_spaces.space_of(v.optimizer, table),
                                            t.trials, c.seed) for v in vs}
    jobs = []
    for v in vs:
        for j, setting in enumerate(plan[v.optimizer]):
            for k, seed in enumerate(tuning_seeds):
                directory = out / "tune" / v.optimizer / f"trial{j}" / f"seed{k}"
                ck = dataclasses.replace(config_of(c, v, seed, directory), **setting)
                jobs.append((ck, directory))
    runs, _ = _run_jobs(jobs, t.workers, cache, log, "tuning")
    trials, best, position = {}, {}, 0
    for v in vs:
        rows, scores = [], []
        for j, setting in enumerate(plan[v.optimizer]):
            group = runs[position:position + seeds]
            position += seeds
            scores.append(tuning.validation_figure(group))
            rows.append({"trial": j, "flags": setting, "runs": group,
                         "validation": scores[-1] if math.isfinite(scores[-1]) else None})
        trials[v.optimizer] = rows
        best[v.optimizer] = tuning.best_trial(scores)
    jobs, owners = [], []
    for v in vs:
        if best[v.optimizer] is None:
            continue
        setting = trials[v.optimizer][best[v.optimizer]]["flags"]
        for k, seed in enumerate(fresh_seeds):
            directory = out / "final" / v.optimizer / f"seed{k}"
            jobs.append((dataclasses.replace(config_of(c, v, seed, directory), **setting),
                         directory))
            owners.append(v.optimizer)
    # One at a time: the seconds to target are compared across optimizers.
    final_runs, final_histories = _run_jobs(jobs, 1, cache, log, "fresh seeds")

    tuned, histories = {}, {}
    for v in vs:
        name = v.optimizer
        mine = [i for i, o in enumerate(owners) if o == name]
        if not mine:
            tuned[name] = {"best_trial": None, "error": "every tuning trial failed"}
            continue
        ok = [final_runs[i] for i in mine if "figures" in final_runs[i]]
        histories[name] = [final_histories[i] for i in mine]  # None: the run failed
        figures, interval = {}, {}
        for key in FIGURES:
            values = [r["figures"].get(key) for r in ok]
            if values and all(x is not None for x in values):
                figures[key], interval[key] = tuning.mean_and_interval(values)
        tuned[name] = {"best_trial": best[name], "best_flags": trials[name][best[name]]["flags"],
                       "figures": figures, "interval": interval,
                       "seeds": [final_runs[i]["seed"] for i in mine],
                       "runs": [final_runs[i] for i in mine]}

    target, source = _target(t.target, tuned)
    if target is not None:
        for name, entry in tuned.items():
            if name in histories:
                hits = [tuning.time_to_target(h or [], target) for h in histories[name]]
                entry["time_to_target"] = tuning.summarise_time_to_target(hits)
    return {
        "tuning": {
            "trials_per_optimizer": t.trials, "tuning_seeds": tuning_seeds,
            "fresh_seeds": fresh_seeds, "validation": tuning.VALIDATION,
            "sampling": "scrambled Halton sequence seeded with --seed, mapped onto each "
                        "optimizer's search space",
            "search_spaces": {v.optimizer: search_spaces.space_of(v.optimizer, table)
                              for v in vs},
            "trials": trials,
        },
        "tuned": tuned,
        "target": {"max_cos": target, "from": source,
                   "rule": "first logged step whose exact max_cos <= target; median over "
                           "the fresh seeds, a seed that never reaches it counting as "
                           "infinite"},
        "n": c.num_identities, "objective": vs[0].objective, "flags": c.flag_values(),
        "jax_version": jax.__version__, "backend": jax.default_backend(),
    }, histories


def _target(spec: str, tuned: dict) -> tuple[float | None, str]:
    """The target worst pair: a number, or the largest final max_cos of a reference
    optimizer over its fresh seeds (it reaches the target on every seed). The reference
    is --target, else adam when tuned, else the tuned optimizer with the worst mean."""
    if spec and spec not in tuned:
        return float(spec), "--target"
    finals = {n: [r["figures"]["max_cos"] for r in e["runs"] if "figures" in r]
              for n, e in tuned.items() if e.get("figures", {}).get("max_cos") is not None}
    name = spec or ("adam" if "adam" in finals else None)
    if name is None:
        if not finals:
            return None, "no tuned optimizer finished"
        name = max(finals, key=lambda n: np.mean(finals[n]))
    if name not in finals:
        return None, f"{name} did not finish"
    return max(finals[name]), f"the worst fresh-seed final max_cos of tuned {name}"


def _setting(flags: dict) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in sorted(flags.items()))


def _tuned_markdown(result: dict) -> str:
    t, tuned = result["tuning"], result["tuned"]
    target = result["target"]
    head = ["optimizer", "best setting", "max_cos", "mean_nn_cos", "min angle (deg)",
            "steps to target", "seconds to target", "reached"]
    lines = [f"# Tuned comparison: n = {result['n']}, objective {result['objective']}", "",
             f"{t['trials_per_optimizer']} trials per optimizer on seeds {t['tuning_seeds']}; "
             f"chosen by the {t['validation']}. Figures: mean [95 % interval] over the "
             f"fresh seeds {t['fresh_seeds']} (lower cosines are better).", ""]
    if target["max_cos"] is not None:
        lines += [f"Target max_cos {target['max_cos']:.5f} ({target['from']}): "
                  f"{target['rule']}.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def key(item):
        return item[1].get("figures", {}).get("max_cos", math.inf)

    for name, e in sorted(tuned.items(), key=key):
        if "figures" not in e or not e["figures"]:
            lines.append(f"| {name} | {e.get('error', 'no fresh-seed run finished')} |"
                         + " |" * (len(head) - 2))
            continue

        def cell(k, fmt=".5f", e=e):
            if k not in e["figures"]:
                return "-"
            iv = e["interval"].get(k)
            spread = f" [{iv[0]:{fmt}}, {iv[1]:{fmt}}]" if iv else ""
            return f"{e['figures'][k]:{fmt}}{spread}"

        ttt = e.get("time_to_target", {})
        steps = ttt.get("median_steps")
        seconds = ttt.get("median_seconds")
        row = [name, _setting(e["best_flags"]), cell("max_cos"), cell("mean_nn_cos"),
               cell("min_angle_deg", ".3f"), "-" if steps is None else f"{steps:.0f}",
               "-" if seconds is None else f"{seconds:.2f}",
               f"{ttt['reached']}/{ttt['of']}" if ttt else "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Every trial (validation figure = mean final max_cos over the tuning seeds):",
              "", "| optimizer | trial | setting | validation |", "|---|---|---|---|"]
    for name, rows in t["trials"].items():
        for r in rows:
            v = "failed" if r["validation"] is None else f"{r['validation']:.5f}"
            lines.append(f"| {name} | {r['trial']} | {_setting(r['flags'])} | {v} |")
    return "\n".join(lines) + "\n"


def _plot_tuned(out: Path, result: dict, histories: dict) -> None:
    """sensitivity.png: each trial's validation figure against its learning rate;
    compare.png: the tuned optimizers' mean curves on the fresh seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in result["tuning"]["trials"].items():
        pts = sorted((r["flags"]["learning_rate"], r["validation"]) for r in rows
                     if r["validation"] is not None)
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)[0]
        failed = [r["flags"]["learning_rate"] for r in rows if r["validation"] is None]
        if failed:
            top = max([p[1] for p in pts], default=1.0)
            ax.plot(failed, [top] * len(failed), "x", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel("final max_cos, mean over tuning seeds")
    ax.set_title("sensitivity (x: trial failed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(out / "sensitivity.png", fig)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, runs in histories.items():
        runs = [h for h in runs if h]
        if runs:
            steps, seconds, values = _mean_curve(runs, "max_cos")
            axes[0].plot(steps, values, label=name)
            axes[1].plot(seconds, values, label=name)
    target = result["target"]["max_cos"]
    for ax, xlabel in zip(axes, ("step", "stepping seconds")):
        if target is not None:
            ax.axhline(target, color="k", lw=0.8, ls="--", label="target")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("max_cos (mean over fresh seeds)")
    axes[0].set_title("tuned optimizers: worst pair vs steps")
    axes[1].set_title("... vs stepping seconds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(out / "compare.png", fig)
    plt.close(fig)


def _markdown(result: dict) -> str:
    entries = result["variants"]
    has_gallery = any("mean_gallery_cos" in e.get("mean", {}) for e in entries)
    head = ["variant", "max_cos", "mean_nn_cos", "min angle (deg)"]
    head += ["mean_gallery_cos"] if has_gallery else []
    head += ["wall s", "stepping s"]
    lines = [f"# Comparison: n = {result['n']}, seeds {result['seeds']}", "",
             "Mean +- std over seeds of the final figures (lower cosines are better).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ranked = sorted(entries, key=lambda e: e.get("mean", {}).get("max_cos", np.inf))
    for e in ranked:
        if "mean" not in e:
            errors = "; ".join(sorted({r["error"] for r in e["runs"] if "error" in r}))
            lines.append(f"| {e['name']} | failed: {errors} |" + " |" * (len(head) - 2))
            continue

        def cell(k, fmt=".5f", e=e):
            return f"{e['mean'][k]:{fmt}} +- {e['std'][k]:{fmt}}"
        row = [e["name"], cell("max_cos"), cell("mean_nn_cos"), cell("min_angle_deg", ".3f")]
        row += [cell("mean_gallery_cos")] if has_gallery else []
        row += [f"{e['wall_seconds']['mean']:.2f}"]
        row += [f"{e['stepping_seconds']['mean']:.2f}" if "stepping_seconds" in e else "-"]
        failed = sum("error" in r for r in e["runs"])
        if failed:
            row[0] += f" ({failed} seeds failed)"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _mean_curve(histories: list[list[dict]], key: str):
    length = min(len(h) for h in histories)
    steps = np.array([e["step"] for e in histories[0][:length]])
    seconds = np.mean([[e["seconds"] for e in h[:length]] for h in histories], axis=0)
    values = np.mean([[e[key] for e in h[:length]] for h in histories], axis=0)
    return steps, seconds, values


def _plot(path: Path, entries, histories, nn, c: PackConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [e["name"] for e in entries if e["name"] in histories]
    rows = (2 if curves else 0) + (1 if nn else 0)
    if rows == 0:  # every run failed: the figure says so (the table names the errors)
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no variant finished a run (see compare.md)", ha="center")
        save_figure(path, fig)
        plt.close(fig)
        return
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4 * rows), squeeze=False)
    if curves:
        for col, key in enumerate(("max_cos", "mean_nn_cos")):
            for name in curves:
                steps, seconds, values = _mean_curve(histories[name], key)
                axes[0, col].plot(steps, values, label=name)
                axes[1, col].plot(seconds, values, label=name)
            title = "worst pair (max_cos)" if key == "max_cos" else "mean nearest-neighbour cos"
            axes[0, col].set_title(f"{title} vs steps")
            axes[1, col].set_title(f"{title} vs stepping seconds")
            axes[0, col].set_xlabel("step")
            axes[1, col].set_xlabel("seconds")
            for r in (0, 1):
                axes[r, col].set_ylabel("cosine (mean over seeds)")
        axes[0, 0].legend(fontsize=7, ncol=2)
    if nn:
        ax = axes[rows - 1, 0]
        everything = np.concatenate(list(nn.values()))
        bins = np.linspace(everything.min(), everything.max(), 80)
        for method, values in nn.items():
            ax.hist(values, bins=bins, histtype="step", density=True, label=method)
        ax.set_xlabel("cosine to the nearest other identity")
        ax.set_ylabel("density")
        ax.set_title(f"nearest-neighbour cosine per sampler (n = {c.num_identities})")
        ax.legend(fontsize=8)
        ax = axes[rows - 1, 1]
        for method, values in nn.items():
            ax.plot(np.sort(values), np.linspace(0, 1, len(values)), label=method)
        ax.set_xlabel("cosine to the nearest other identity")
        ax.set_ylabel("share of identities")
        ax.set_title("cumulative")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def _resumed_flags(fv: flags.FlagValues, make) -> flags.FlagValues:
    """The recorded sweep's flags (plus this command's --workers/--progress)."""
    out = fv["out_dir"].value
    if not out:
        raise InputError("--resume needs --out_dir, the folder of the sweep to continue")
    path = Path(out) / ARGUMENTS
    if not path.exists():
        raise InputError(f"--resume: {path} does not exist (no sweep was started there)")
    extra = [n for n in fv if fv[n].present
             and n not in ("resume", "out_dir", "workers", "progress")]
    if extra:
        raise InputError(f"--resume takes the sweep's flags from {path}; only --workers and "
                         f"--progress may be given, not --{extra[0]}")
    try:
        recorded = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"--resume: {path} is not valid JSON ({e})") from None
    recorded.update(out_dir=out)
    for name in ("workers", "progress"):
        if fv[name].present:
            recorded[name] = fv[name].value
    resumed = make()
    argv = ["compare"] + [f"--{k}={v}" for k, v in recorded.items()]
    try:
        resumed(argv)
    except flags.Error as e:
        raise InputError(f"--resume: {path}: {e}") from None
    return resumed


def make_flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    define_flags(fv)
    sample.define_sampler_flags(fv, names=[n for n in sample.SAMPLER_FLAGS if n != "method"])
    flags.DEFINE_string("optimizers", "", "Comma-separated optax optimizers to compare "
                        "(empty: --optimizer).", flag_values=fv)
    flags.DEFINE_string("objectives", "", "Comma-separated objectives to compare: max, "
                        "logsumexp, riesz (empty: --objective).", flag_values=fv)
    flags.DEFINE_integer("seeds", 1, "Seeds per variant (per tuning trial with --tune_trials): "
                         "--seed, --seed + 1, ...", flag_values=fv)
    flags.DEFINE_string("samplers", "", "Comma-separated identity samplers to compare at "
                        f"equal --num_identities: {', '.join(samplers.METHODS)}.",
                        flag_values=fv)

    flags.DEFINE_integer("tune_trials", 0, "Tune each optimizer: this many settings drawn "
                         "from its search space (--search_space), each run on --seeds seeds; "
                         "the best (lowest mean final max_cos) is re-run on --final_seeds "
                         "fresh seeds. 0: no tuning, every optimizer at the given flags.",
                         flag_values=fv)
    flags.DEFINE_integer("final_seeds", 3, "With --tune_trials: fresh seeds for the re-run of "
                         "each optimizer's best setting (never used in tuning).", flag_values=fv)
    flags.DEFINE_string("search_space", "", "With --tune_trials: a JSON search-space table "
                        "(empty: the built-in one, hyperface_jax/research/search_spaces.py).",
                        flag_values=fv)
    flags.DEFINE_string("target", "", "With --tune_trials: the worst-pair target of the time "
                        "to target: a max_cos value, or an optimizer's name (the largest final "
                        "max_cos of its tuned fresh-seed runs); empty: adam if tuned, else "
                        "the tuned optimizer with the worst mean.", flag_values=fv)
    flags.DEFINE_integer("workers", 1, "With --tune_trials: tuning runs in this many "
                         "processes at once (the fresh-seed re-runs run one at a time).",
                         flag_values=fv)
    flags.DEFINE_bool("resume", False, "Continue the sweep recorded in --out_dir "
                      f"({ARGUMENTS}) with its own flags; only --workers and --progress "
                      "may be given.", flag_values=fv)
    return fv


def main(argv: list[str] | None = None) -> int:
    fv = make_flag_values()

    def job(fv):
        arguments = {name: fv[name].value for name in fv if fv[name].present
                     and name not in ("resume", "flagfile")}
        if fv["resume"].value:
            fv = _resumed_flags(fv, make_flag_values)
            arguments = None  # the record stays as it was
        tuning_options = None
        if fv["tune_trials"].value:
            tuning_options = Tuning(
                trials=fv["tune_trials"].value, final_seeds=fv["final_seeds"].value,
                search_space=fv["search_space"].value, target=fv["target"].value,
                workers=fv["workers"].value)
        run(config_from_flags(fv), optimizers=_split(fv["optimizers"].value),
            objectives=_split(fv["objectives"].value), methods=_split(fv["samplers"].value),
            seeds=fv["seeds"].value, options=sample.sampler_options(fv),
            tuning_options=tuning_options, arguments=arguments)

    groups = {"compare": ("optimizers", "objectives", "seeds", "samplers"), **HELP_GROUPS,
              "samplers (--samplers)": tuple(sample.SAMPLER_FLAGS)}
    return cli.run_main(argv, fv, job, help_groups=groups)


if __name__ == "__main__":
    sys.exit(main())
