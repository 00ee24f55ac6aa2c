"""Figures of a run summary: what a reader wants to look at rather than read.

Each function draws one PNG from the summary's per-optimizer aggregates (means over
seeds) so that optimizers sit side by side on shared scales.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from basinlab.atomic import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _number(value: float | None, digits: int) -> str:
    """A metric for a title or legend; None (every seed diverged) reads n/a."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _panels(count: int, width: float = 3.6, height: float = 3.4):
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, axes[0]


def accuracy_matrices(summary: dict[str, Any], path: Path) -> Path:
    aggregate = summary["aggregate"]
    size = max(3.6, 0.42 * summary["num_tasks"] + 1.2)  # room for the annotated cells
    fig, axes = _panels(len(aggregate), width=size, height=size)
    for ax, (label, agg) in zip(axes, aggregate.items()):
        matrix = np.array(agg["mean_accuracy_matrix"])
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        if len(matrix) <= 10:
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="w" if value < 0.6 else "k")
        ax.set_title(f"{label} (n={len(agg['seeds'])})")
        ax.set_xlabel("evaluated on task")
        ticks = range(len(matrix))
        ax.set_xticks(ticks, [str(t + 1) for t in ticks])
        ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    axes[0].set_ylabel("after training task")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="test accuracy")
    fig.suptitle("Accuracy matrix R (mean over seeds)")
    return _save(fig, path)


def accuracy_curves(summary: dict[str, Any], path: Path) -> Path:
    fig, (seen, first) = _panels(2, width=4.6)
    for label, agg in summary["aggregate"].items():
        for ax, key in ((seen, "average_accuracy_curve"), (first, "first_task_accuracy_curve")):
            mean, std = np.array(agg[key]["mean"]), np.array(agg[key]["std"])
            x = np.arange(1, len(mean) + 1)
            (line,) = ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    seen.set_title("Average accuracy on tasks seen so far")
    first.set_title("Accuracy on task 1 over the sequence")
    for ax in (seen, first):
        ax.set_xlabel("tasks trained")
        ax.set_ylabel("test accuracy (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def covariance_spectra(summary: dict[str, Any], path: Path) -> Path:
    fig, (ax,) = _panels(1, width=5.5)
    for label, agg in summary["aggregate"].items():
        spectrum = np.array(agg["mean_final_covariance_spectrum"])
        share = spectrum / spectrum.sum() if spectrum.sum() > 0 else spectrum
        rank = agg["final_effective_rank"]["mean"]
        ax.semilogy(np.arange(1, len(share) + 1), np.clip(share, 1e-12, None), label=f"{label} (erank {_number(rank, 1)})")
    ax.set_title("Covariance spectrum of hidden representations after the last task")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("share of variance (mean over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def cross_class_cosine(summary: dict[str, Any], path: Path) -> Path:
    aggregate = summary["aggregate"]
    fig, axes = _panels(len(aggregate))
    for ax, (label, agg) in zip(axes, aggregate.items()):
        matrix = np.array(agg["mean_final_cross_class_cosine"], dtype=float)
        image = ax.imshow(matrix, vmin=min(0.0, np.nanmin(matrix)), vmax=1, cmap="magma")
        ax.set_title(f"{label}: mean off-diag {_number(agg['final_cross_class_cosine_mean']['mean'], 3)}")
        ax.set_xlabel("class")
        ax.set_ylabel("class")
        ax.set_xticks(range(len(matrix)))
        ax.set_yticks(range(len(matrix)))
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="cosine similarity of class means")
    fig.suptitle("Cross-class cosine similarity after the last task (mean over seeds)")
    return _save(fig, path)


def pruning_curves(summary: dict[str, Any], path: Path) -> Path:
    aggregate = {label: agg for label, agg in summary["aggregate"].items() if "pruning" in agg}
    kinds = [k for k in ("accuracy", "finetuned_accuracy") if any(k in a["pruning"] for a in aggregate.values())]
    palette = plt.get_cmap("tab10" if len(aggregate) <= 10 else "tab20")
    fig, axes = _panels(len(kinds), width=5.0, height=4.2)
    for ax, kind in zip(axes, kinds):
        for index, (label, agg) in enumerate(aggregate.items()):
            if kind not in agg["pruning"]:
                continue
            kept = 100 * np.array(agg["pruning"]["keep"])
            mean, std = np.array(agg["pruning"][kind]["mean"]), np.array(agg["pruning"][kind]["std"])
            color = palette(index % palette.N)
            ax.semilogx(kept, mean, marker="o", markersize=4, color=color, label=label)
            ax.fill_between(kept, mean - std, mean + std, color=color, alpha=0.15)
        ax.invert_xaxis()
        ax.set_xlabel("weights kept (%), log scale")
        ax.set_ylabel("mean test accuracy over tasks (± std over seeds)")
        ax.set_title("after pruning" if kind == "accuracy" else "after pruning + masked fine-tune")
        ax.grid(alpha=0.3, which="both")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    scope = next(iter(aggregate.values()))["pruning"]["scope"]
    fig.suptitle(f"Magnitude pruning, {scope} ranking, no retraining vs fine-tuned", y=1.02)
    return _save(fig, path)


PLOTS = {
    "accuracy_matrix.png": accuracy_matrices,
    "average_accuracy.png": accuracy_curves,
    "covariance_spectra.png": covariance_spectra,
    "cross_class_cosine.png": cross_class_cosine,
}


def write_mnist_plots(summary: dict[str, Any], folder: Path) -> list[Path]:
    """Draw every figure of ``summary`` into ``folder``; returns the paths."""
    if not summary["aggregate"]:
        return []
    paths = [draw(summary, folder / name) for name, draw in PLOTS.items()]
    if any("pruning" in agg for agg in summary["aggregate"].values()):
        paths.append(pruning_curves(summary, folder / "pruning_curves.png"))
    return paths


# ---------------------------------------------------------------------- text-domain runs


def loss_matrices(summary: dict[str, Any], path: Path) -> Path:
    aggregate, domains = summary["aggregate"], summary["domains"]
    matrices = {label: np.array(agg["mean_loss_matrix"], dtype=float) for label, agg in aggregate.items()}
    low = min(np.nanmin(m) for m in matrices.values())
    high = max(np.nanmax(m) for m in matrices.values())
    size = max(3.8, 0.7 * len(domains) + 1.6)
    fig, axes = _panels(len(aggregate), width=size, height=size)
    for ax, (label, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis_r")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w" if value > (low + high) / 2 else "k")
        ax.set_title(f"{label} (n={len(aggregate[label]['seeds'])})")
        ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right")
        ax.set_yticks(range(len(domains)), domains)
        ax.set_xlabel("evaluated on domain")
    axes[0].set_ylabel("after training domain")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="validation MLM loss (lower is better)")
    fig.suptitle("Loss matrix L (mean over seeds)")
    return _save(fig, path)


def domain_loss_curves(summary: dict[str, Any], path: Path) -> Path:
    domains = summary["domains"]
    fig, (seen, first) = _panels(2, width=4.8)
    for label, agg in summary["aggregate"].items():
        for ax, key in ((seen, "seen_domains_loss_curve"), (first, "first_domain_loss_curve")):
            mean, std = np.array(agg[key]["mean"]), np.array(agg[key]["std"])
            x = np.arange(len(mean))
            (line,) = ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    seen.set_title("Mean loss on the domains trained so far")
    first.set_title(f"Loss on the first domain ({domains[0]}) over the sequence")
    for ax in (seen, first):
        ax.set_xticks(range(len(domains)), domains, rotation=30, ha="right")
        ax.set_xlabel("after training domain")
        ax.set_ylabel("validation MLM loss (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def per_layer_representation(summary: dict[str, Any], path: Path) -> Path:
    panels = (
        ("effective_rank", "effective rank (mean over domains)"),
        ("cross_domain_cosine", "mean cross-domain cosine"),
        ("retained_cka", "CKA to right after training (mean over earlier domains)"),
    )
    fig, axes = _panels(len(panels), width=4.4)
    for ax, (key, title) in zip(axes, panels):
        for label, agg in summary["aggregate"].items():
            values = np.array(agg["per_layer"][key], dtype=float)
            ax.plot(np.arange(len(values)), values, marker="o", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Representations after the last domain, per layer (mean over seeds)", y=1.02)
    return _save(fig, path)


def domain_cosine(summary: dict[str, Any], path: Path) -> Path:
    aggregate, domains = summary["aggregate"], summary["domains"]
    fig, axes = _panels(len(aggregate), width=max(3.6, 0.6 * len(domains) + 1.6))
    for ax, (label, agg) in zip(axes, aggregate.items()):
        matrix = np.array(agg["mean_final_domain_cosine"], dtype=float)
        image = ax.imshow(matrix, vmin=min(0.0, np.nanmin(matrix)), vmax=1, cmap="magma")
        ax.set_title(f"{label}: mean off-diag {_number(agg['final_cross_domain_cosine']['mean'], 3)}")
        ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right")
        ax.set_yticks(range(len(domains)), domains)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="cosine similarity of domain means")
    fig.suptitle("Cross-domain cosine similarity, last layer, after the last domain (mean over seeds)")
    return _save(fig, path)


def train_loss(summary: dict[str, Any], path: Path) -> Path:
    fig, (ax,) = _panels(1, width=7.0)
    for label, agg in summary["aggregate"].items():
        curve = agg["train_loss_curve"]
        ax.plot(curve["step"], curve["mean"], label=label, linewidth=1)
    steps = summary["steps_per_domain"]
    for index, name in enumerate(summary["domains"]):
        ax.axvline(index * steps, color="grey", linewidth=0.5)
        ax.text(index * steps, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
    ax.set_xlabel("optimizer step (domains in order)")
    ax.set_ylabel("training MLM loss (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


TEXT_PLOTS = {
    "loss_matrix.png": loss_matrices,
    "domain_losses.png": domain_loss_curves,
    "per_layer_representation.png": per_layer_representation,
    "domain_cosine.png": domain_cosine,
    "train_loss.png": train_loss,
}


def write_text_plots(summary: dict[str, Any], folder: Path) -> list[Path]:
    """Draw every figure of a text run's ``summary`` into ``folder``; returns the paths."""
    if not summary["aggregate"]:
        return []
    return [draw(summary, folder / name) for name, draw in TEXT_PLOTS.items()]
