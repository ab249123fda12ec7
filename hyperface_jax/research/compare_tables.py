"""The tables and figures of `compare`: compare.md, compare.png, sensitivity.png and the
suite's performance profile. Reads the plain dicts the job (jobs/compare.py) records."""

from pathlib import Path

import numpy as np

from hyperface_jax.io.files import save_figure

LOWER_BOUND = "lower bound"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _setting(flags: dict) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(flags.items()))


def _interval(value, interval, fmt=".5f") -> str:
    spread = f" [{interval[0]:{fmt}}, {interval[1]:{fmt}}]" if interval else ""
    return f"{value:{fmt}}{spread}"


def _ranked(result: dict) -> list[str]:
    """Rows in table order: ranked rows by mean final max_cos (failures counted), then
    lower bounds, then rows with no finished trial."""
    def key(name):
        e = result["tuned"][name]
        if e.get("best_trial") is None:
            return (2, 0.0)
        return (1 if e["lower_bound"] else 0, e["max_cos_counting_failures_mean"])
    return sorted(result["tuned"], key=key)


def verdict_lines(result: dict) -> str:
    """One line per optimizer: its verdict against the best (printed by the tool), then
    every search range that was widened."""
    best = result["best"]
    lines = []
    for name in _ranked(result):
        e = result["tuned"][name]
        v = e.get("verdict", {})
        word = v.get("verdict", "undecided")
        if word in ("better", "worse", "tied") and v.get("interval"):
            lo, hi = v["interval"]
            relation = "tied with" if word == "tied" else f"{word} than"
            lines.append(f"  {name}: {relation} {best} (paired difference in final max_cos "
                         f"{v['mean']:+.5f}, 95 % interval [{lo:+.5f}, {hi:+.5f}], "
                         f"{len(v['differences'])} seeds)")
        elif word == LOWER_BOUND:
            lines.append(f"  {name}: lower bound (best setting at the edge of its range: "
                         f"{', '.join(e['at_edge'])}); not ranked")
        elif word == "best":
            lines.append(f"  {name}: best (lowest mean final max_cos, failures counted)")
        else:
            lines.append(f"  {name}: {word}")
    for name in _ranked(result):
        for w in result["tuned"][name].get("widened", []):
            lines.append(f"  {name}: {w['flag']} range widened {w['from'][:2]} -> "
                         f"{w['to'][:2]} (its best sat at the {w['side']} edge)")
    return "\n".join(lines)


def tuned_markdown(result: dict) -> str:
    t, tuned, targets = result["tuning"], result["tuned"], result["targets"]
    best = result["best"]
    fresh = t["fresh_seeds"]
    lines = [f"# Tuned comparison: n = {result['n']}, objective {result['objective']}", "",
             f"{t['trials_per_optimizer']} trials per optimizer and study ({t['search']}), "
             f"{t['studies']} stud{'y' if t['studies'] == 1 else 'ies'}, tuning seeds "
             f"{t['tuning_seeds']}; chosen by the {t['validation']}. Figures: mean [95 % "
             f"interval] over the fresh seeds {fresh[0]}..{fresh[-1]} ({len(fresh)} seeds, the "
             "same for every optimizer; lower cosines are better). A failed run counts as "
             f"max_cos {result['failure_value']:.5f} (the worst value seen) and as never "
             "reaching a target.", "",
             "Targets, fixed from the workload before the sweep:", ""]
    lines += [f"- {x['label']}: max_cos {x['max_cos']:.5f} = {x['definition']}"
              for x in targets["list"]]
    lines += ["", f"Time to a target: {targets['rule']}.", ""]
    head = ["optimizer", "best setting", "max_cos", "failures",
            f"vs {best or '-'}: paired difference [95 %]", "verdict", "mean_nn_cos",
            "min angle (deg)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in _ranked(result):
        e = tuned[name]
        if e.get("best_trial") is None:
            lines.append(f"| {name} | {e.get('error', 'no trial finished')} |"
                         + " |" * (len(head) - 2))
            continue
        f, iv = e["figures"], e["interval"]
        v = e["verdict"]
        label = name + (f" ({LOWER_BOUND})" if e["lower_bound"] else "")
        diff = "-" if name == best or not v.get("interval") else \
            _interval(v["mean"], v["interval"], "+.5f")
        row = [label, _setting(e["best_flags"]),
               _interval(f["max_cos"], iv.get("max_cos")) if "max_cos" in f else "-",
               f"{e['failures']}/{len(e['runs'])}", diff, v["verdict"],
               _interval(f["mean_nn_cos"], iv.get("mean_nn_cos")) if "mean_nn_cos" in f
               else "-",
               _interval(f["min_angle_deg"], iv.get("min_angle_deg"), ".3f")
               if "min_angle_deg" in f else "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Time to each target (median over the fresh seeds; reached = seeds that got "
              "there):", ""]
    head = ["optimizer"] + [f"{x['label']} ({x['max_cos']:.4f}): steps / s / reached"
                            for x in targets["list"]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in _ranked(result):
        e = tuned[name]
        if e.get("best_trial") is None:
            continue
        cells = []
        for hit in e["time_to_target"]:
            steps = "-" if hit["median_steps"] is None else f"{hit['median_steps']:.0f}"
            secs = "-" if hit["median_seconds"] is None else f"{hit['median_seconds']:.2f}"
            cells.append(f"{steps} / {secs} / {hit['reached']}/{hit['of']}")
        label = name + (f" ({LOWER_BOUND})" if e["lower_bound"] else "")
        lines.append("| " + " | ".join([label] + cells) + " |")
    paired = [n for n in _ranked(result) if tuned[n].get("verdict", {}).get("differences")
              and n != best]
    if paired:
        lines += ["", f"Paired differences in final max_cos to {best}, per fresh seed (a "
                  "failed run enters at the failure value):", "",
                  "| optimizer | " + " | ".join(f"seed {k}" for k in fresh) + " |",
                  "|---|" + "---|" * len(fresh)]
        for name in paired:
            cells = [f"{d:+.5f}" for d in tuned[name]["verdict"]["differences"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    widened = [(n, w) for n in tuned for w in tuned[n].get("widened", [])]
    if widened:
        lines += ["", "Search ranges widened because the best setting sat at their edge:", ""]
        lines += [f"- {n}: {w['flag']} {w['from'][:2]} -> {w['to'][:2]} ({w['side']} edge)"
                  for n, w in widened]
    if t["studies"] > 1:
        lines += ["", "Studies (the headline row is the median study by its score):", "",
                  "| optimizer | study | best setting | score |", "|---|---|---|---|"]
        for name in _ranked(result):
            for s in tuned[name]["studies"]:
                score = "-" if s["score"] is None else f"{s['score']:.5g}"
                flags = "-" if s["best_flags"] is None else _setting(s["best_flags"])
                lines.append(f"| {name} | {s['study']} | {flags} | {score} |")
    lines += ["", "Every trial of study 0 (validation figure: the "
              f"{'mean final max_cos' if t['selection'] == 'final' else 'time score'} "
              "over the tuning seeds):", "",
              "| optimizer | trial | phase | setting | validation |", "|---|---|---|---|---|"]
    for name, rows in t["trials"].items():
        for r in rows:
            v = "failed" if r["validation"] is None else f"{r['validation']:.5f}"
            lines.append(f"| {name} | {r['trial']} | {r.get('phase', '')} | "
                         f"{_setting(r['flags'])} | {v} |")
    return "\n".join(lines) + "\n"


def plot_tuned(out: Path, result: dict, histories: dict) -> None:
    """sensitivity.png: each trial's validation figure against its learning rate;
    compare.png: the tuned optimizers' mean curves on the fresh seeds, with the targets."""
    plt = _plt()
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
    ax.set_ylabel("validation figure (mean over tuning seeds)")
    ax.set_title("sensitivity, study 0 (x: trial failed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(out / "sensitivity.png", fig)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, runs in histories.items():
        runs = [h for h in runs if h]
        if runs:
            steps, seconds, values = mean_curve(runs, "max_cos")
            axes[0].plot(steps, values, label=name)
            axes[1].plot(seconds, values, label=name)
    for ax, xlabel in zip(axes, ("step", "stepping seconds")):
        for target in result["targets"]["list"]:
            ax.axhline(target["max_cos"], color="k", lw=0.6, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("max_cos (mean over fresh seeds)")
    axes[0].set_title("tuned optimizers: worst pair vs steps (dashed: targets)")
    axes[1].set_title("... vs stepping seconds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(out / "compare.png", fig)
    plt.close(fig)


def plot_profile(path: Path, profile: dict, taus, cost: str) -> None:
    """The Dolan-More performance profile: per optimizer, the share of workloads it
    solves within a factor tau of the fastest."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for solver_name, shares in profile.items():
        ax.step(taus, shares, where="post", label=solver_name)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"tau: within this factor of the fastest ({cost} to target)")
    ax.set_ylabel("share of workloads")
    ax.set_title("performance profile (Dolan and More 2002)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def plain_markdown(result: dict) -> str:
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


def mean_curve(histories: list[list[dict]], key: str):
    length = min(len(h) for h in histories)
    steps = np.array([e["step"] for e in histories[0][:length]])
    seconds = np.mean([[e["seconds"] for e in h[:length]] for h in histories], axis=0)
    values = np.mean([[e[key] for e in h[:length]] for h in histories], axis=0)
    return steps, seconds, values


def plot_plain(path: Path, entries, histories, nn, c) -> None:
    plt = _plt()

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
                steps, seconds, values = mean_curve(histories[name], key)
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
