"""Plots a person would rather look at than read."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hyperface_jax.files import save_figure  # noqa: E402


def packing_curves(history: list[dict], path, title: str = "", bound: float | None = None) -> None:
    """Loss terms, worst-pair and nearest-neighbour cosines (and gallery cosine) vs steps."""
    steps = [h["step"] for h in history]
    has_gallery = "mean_gallery_cos" in history[0]
    fig, axes = plt.subplots(1, 3 if has_gallery else 2, figsize=(5 * (3 if has_gallery else 2), 4))
    ax = axes[0]
    ax.plot(steps, [h["loss"] for h in history], label="loss L = P + alpha R")
    ax.plot(steps, [h["loss_packing"] for h in history], "--", label="packing P")
    if has_gallery:
        ax.plot(steps, [h["loss_regulariser"] for h in history], ":", label="regulariser R")
    ax.set_xlabel("step")
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)
