"""PNG figures: a run's loss curves and expert-load heatmap; MoE-versus-dense comparisons."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training(summary: dict, path) -> None:
    """Loss curves, the experts' share of routed tokens per layer where the run counted them, and a
    vision model's tanh gates per gated block."""
    h = summary["history"]
    load = np.asarray(summary["expert_tokens"], dtype=float)
    counted = load.sum() > 0
    gated = bool(h.get("gates"))
    ratios = [1.2] + [1] * int(counted) + [1] * int(gated)
    fig, axes = plt.subplots(
        1, len(ratios), figsize=(5 + 5 * len(ratios), 4.5), squeeze=False, gridspec_kw={"width_ratios": ratios}
    )
    if gated:
        _plot_gates(axes[0, -1], h["step"][-len(h["gates"]) :], np.asarray(h["gates"], dtype=float), h.get("cer"))
    ax = axes[0, 0]
    ax.plot(h["step"], h["train_loss"], label="train")
    ax.plot(h["step"], h["val_loss"], label="validation")
    ax.set(xlabel="step", ylabel="loss (nats per byte)", title=f"{summary['config']}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if counted:
        hm = axes[0, 1]
        load = load / load.sum(axis=1, keepdims=True).clip(min=1)
        im = hm.imshow(load, aspect="auto", cmap="viridis")
        hm.set(xlabel="expert", ylabel="layer", title="share of routed tokens per expert (whole run)")
        hm.set_xticks(range(load.shape[1]))
        hm.set_yticks(range(load.shape[0]))
        fig.colorbar(im, ax=hm)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_gates(ax, steps, gates_SB2, cer=None) -> None:
    """gates [evaluations, blocks, (attention, MLP)]: tanh of each gate, per gated block; and the
    character error rate at the same evaluations, on the right axis."""
    for b in range(gates_SB2.shape[1]):
        (line,) = ax.plot(steps, gates_SB2[:, b, 0], label=f"block {b}: attention")
        ax.plot(steps, gates_SB2[:, b, 1], linestyle="--", color=line.get_color(), label=f"block {b}: MLP")
    ax.set(xlabel="step", ylabel="tanh(gate)", title="gated cross-attention: gates, and reading")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    if cer:
        right = ax.twinx()
        right.plot(steps[-len(cer) :], cer, color="black", marker=".", label="CER (100 held-out lines)")
        right.set(ylabel="character error rate", ylim=(0, 1.05))
        right.legend(fontsize="small", loc="lower right")


def plot_comparison(summaries: list[dict], path, title: str, labels: list[str] | None = None) -> None:
    """Validation loss of several runs against training wall-clock time and against tokens seen
    (each labelled by its config name unless `labels` are given)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for s, label in zip(summaries, labels or [s["config"] for s in summaries], strict=True):
        h = s["history"]
        axes[0].plot(h["train_time_s"], h["val_loss"], marker=".", label=label)
        axes[1].plot(np.asarray(h["tokens"]) / 1e6, h["val_loss"], marker=".", label=label)
    axes[0].set(xlabel="training wall-clock (s)", ylabel="validation loss (nats per byte)")
    axes[1].set(xlabel="tokens seen (millions)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
