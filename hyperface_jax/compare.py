"""`python -m hyperface_jax.compare`: optimizers, objectives and identity samplers side by side.

    python -m hyperface_jax.compare --flagfile=configs/quickstart.flags \\
        --optimizers=adam,adamw,rmsprop,sgd,lion,lamb --objectives=max,logsumexp,riesz \\
        --seeds=3 --samplers=random_margin,hyperface --out_dir=runs/compare

Every optimizer x objective variant is a `pack.run` of the flagfile's configuration with
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
Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 failure.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags
from jax.experimental.compilation_cache import compilation_cache

from hyperface_jax import cli, neighbors, pack, problem, sample, samplers
from hyperface_jax.config import HELP_GROUPS, PackConfig, config_from_flags, define_flags
from hyperface_jax.files import InputError, atomic_write, load_embeddings, save_figure, save_json
from hyperface_jax.objective import OBJECTIVES

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
    problem.build_problem(c)  # names, ranges, gallery and init files
    for v in vs:
        if v.kind == "packing":
            if v.objective not in OBJECTIVES:
                raise InputError(f"unknown objective {v.objective!r} in --objectives; "
                                 f"choose from {', '.join(OBJECTIVES)}")
            pack.build_optimizer(dataclasses.replace(c, optimizer=v.optimizer))
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
    same = all(have.get(k) == val for k, val in want.items() if k not in pack.RUN_LENGTH_FLAGS)
    if not same:
        return None
    if v.kind == "packing" or v.method == "hyperface":
        if report.get("steps") != c.steps + c.polish_steps:
            return None
    return report


def _run_one(c: PackConfig, v: Variant, options: dict, log) -> dict:
    if v.kind == "packing":
        return pack.run(c, log=log)
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


def run(c: PackConfig, *, optimizers: list[str], objectives: list[str], methods: list[str],
        seeds: int, options: dict, log=None) -> dict:
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not c.out_dir:
        raise InputError("--out_dir is required")
    vs = variants_of(c, optimizers, objectives, methods)
    validate(c, vs, options, seeds)
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cache = {name: getattr(jax.config, name) for name in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes")}
    compilation_cache.reset_cache()  # (re)initialised at the first compile, in this folder
    jax.config.update("jax_compilation_cache_dir", str((out / "jax_cache").absolute()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    total = len(vs) * seeds
    entries, histories, nn = [], {}, {}
    try:
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
    finally:
        for name, value in cache.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()

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


def main(argv: list[str] | None = None) -> int:
    fv = flags.FlagValues()
    define_flags(fv)
    sample.define_sampler_flags(fv, names=[n for n in sample.SAMPLER_FLAGS if n != "method"])
    flags.DEFINE_string("optimizers", "", "Comma-separated optax optimizers to compare "
                        "(empty: --optimizer).", flag_values=fv)
    flags.DEFINE_string("objectives", "", "Comma-separated objectives to compare: max, "
                        "logsumexp, riesz (empty: --objective).", flag_values=fv)
    flags.DEFINE_integer("seeds", 1, "Seeds per variant: --seed, --seed + 1, ...", flag_values=fv)
    flags.DEFINE_string("samplers", "", "Comma-separated identity samplers to compare at "
                        f"equal --num_identities: {', '.join(samplers.METHODS)}.",
                        flag_values=fv)

    def job(fv):
        run(config_from_flags(fv), optimizers=_split(fv["optimizers"].value),
            objectives=_split(fv["objectives"].value), methods=_split(fv["samplers"].value),
            seeds=fv["seeds"].value, options=sample.sampler_options(fv))

    groups = {"compare": ("optimizers", "objectives", "seeds", "samplers"), **HELP_GROUPS,
              "samplers (--samplers)": tuple(sample.SAMPLER_FLAGS)}
    return cli.run_main(argv, fv, job, help_groups=groups)


if __name__ == "__main__":
    sys.exit(main())
