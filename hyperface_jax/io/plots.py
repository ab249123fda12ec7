"""Plots a person would rather look at than read."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hyperface_jax.io.files import save_figure  # noqa: E402

# The gap-to-bound panel is drawn when the run closed the gap to below this share of where
# it started: then the linear worst-pair panel shows a flat line at the bound, and only a
# log axis shows how close the code got (small hard codes: 24 points in 4-D, 120 in 8-D).
GAP_PANEL_SHARE = 0.1
# Gaps at or below this (rounding can put max_cos a hair under a tight bound) are drawn
# at it, so the log axis stays finite.
GAP_FLOOR = 1e-9


def shows_gap_panel(history: list[dict], bound: float | None) -> bool:
    if bound is None:
        return False
    first, last = history[0]["max_cos"] - bound, history[-1]["max_cos"] - bound
    return first > 0 and last < GAP_PANEL_SHARE * first


def packing_curves(history: list[dict], path, title: str = "", bound: float | None = None) -> None:
    """Loss terms, worst-pair and nearest-neighbour cosines (and gallery cosine) vs steps;
    with a bound that the run nearly reached, also the gap to it on a log axis."""
    steps = [h["step"] for h in history]
    has_gallery = "mean_gallery_cos" in history[0]
    has_gap = shows_gap_panel(history, bound)
    panels = 2 + has_gallery + has_gap
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    ax = axes[0]
    ax.plot(steps, [h["loss"] for h in history], label="loss L = P + alpha R")
    ax.plot(steps, [h["loss_packing"] for h in history], "--", label="packing P")
    if has_gallery:
        ax.plot(steps, [h["loss_regulariser"] for h in history], ":", label="regulariser R")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.legend()
    ax = axes[1]
    ax.plot(steps, [h["max_cos"] for h in history], label="worst pair (max_cos)")
    ax.plot(steps, [h["mean_nn_cos"] for h in history], label="mean nearest neighbour")
    if bound is not None:
        ax.axhline(bound, color="k", ls=":", lw=1, label=f"bound on worst pair ({bound:.4f})")
    ax.fill_between(steps, [h["nn_cos_p01"] for h in history], [h["nn_cos_p99"] for h in history],
                    alpha=0.2, label="nearest neighbour 1-99 %")
    ax.set_xlabel("step")
    ax.set_ylabel("cosine")
    ax.set_title("packing (lower is better)")
    ax.legend()
    if has_gallery:
        ax = axes[2]
        ax.plot(steps, [h["mean_gallery_cos"] for h in history], color="C2")
        ax.set_xlabel("step")
        ax.set_ylabel("cosine")
        ax.set_title("mean nearest-gallery cosine (higher = closer to faces)")
    if has_gap:
        ax = axes[-1]
        ax.semilogy(steps, [max(h["max_cos"] - bound, GAP_FLOOR) for h in history], color="C3")
        ax.set_xlabel("step")
        ax.set_ylabel("max_cos - bound (log)")
        ax.set_title(f"gap to the bound {bound:.6f} (lower is better)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)
