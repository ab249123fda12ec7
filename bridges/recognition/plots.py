"""Training curves and ROC plots."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hyperface_jax.io.files import save_figure  # noqa: E402


def training_curves(step_rows, epoch_rows, path, title: str = "") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in step_rows]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(steps, [r[key] for r in step_rows], lw=0.8, alpha=0.6, label="per step")
        if epoch_rows:
            ax.plot([r["step"] for r in epoch_rows], [r[key] for r in epoch_rows], "o-",
                    label="epoch mean")
        ax.set_xlabel("step")
        ax.set_title("training loss" if key == "loss" else "training accuracy (no margin)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def roc_curves(curves: dict, path, title: str = "") -> None:
    """`curves`: label -> (false accept rates, true accept rates)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, (far, tar) in curves.items():
        ax.plot(far, tar, label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "ROC")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)
