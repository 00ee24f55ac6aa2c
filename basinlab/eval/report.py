"""The human-readable report.md of a run (MNIST or text domains): setup, comparison table, figures, conventions."""

from __future__ import annotations

from typing import Any

from basinlab.eval.results import MnistUnitResult, TextUnitResult, UnitResult

# How each metric is shown: summary key -> (column title, digits). The comparison tables show a
# recipe's headline metrics (its result class's HEADLINE) in that order.
TITLES = {
    "acc": ("ACC ↑", 3),
    "bwt": ("BWT ↑", 3),
    "fwt": ("FWT ↑", 3),
    "forgetting": ("Forgetting ↓", 3),
    "final_effective_rank": ("eff. rank", 1),
    "final_cross_class_cosine_mean": ("cross-class cos", 3),
    "final_first_task_cka": ("task-1 CKA", 3),
    "total_epochs": ("epochs", 1),
    "final_loss": ("final loss ↓", 3),
    "bwt_loss": ("BWT (loss) ↓", 3),
    "fwt_loss": ("FWT (loss) ↓", 3),
    "forgetting_loss": ("forgetting ↓", 3),
    "final_cross_domain_cosine": ("cross-domain cos", 3),
    "final_retained_cka": ("retained CKA", 3),
    "mean_tokens_per_second": ("tokens/s", 0),
}


def headline_columns(result_type: type[UnitResult]) -> list[tuple[str, str, int]]:
    return [(name, *TITLES[name]) for name in result_type.HEADLINE]


MNIST_COLUMNS = headline_columns(MnistUnitResult)
TEXT_COLUMNS = headline_columns(TextUnitResult)


PROPERTY_CARD_COLUMNS = [
    ("convergence_steps", "steps to val acc ≥ {target} on task 1 ↓", 0),
    ("acc", "ACC ↑", 3),
    ("forgetting", "Forgetting ↓", 3),
    ("final_effective_rank", "eff. rank", 1),
    ("final_cross_class_cosine_mean", "cross-class cos", 3),
    ("sparsity", "share \\|w\\| < {threshold}", 3),
]

CI_NOTE = (
    "Cells: mean ± half-width of the 95 % Student-t confidence interval over seeds; (n=k) where only k seeds "
    "have a value (diverged, or never reached the target); n/a where none has."
)


def _cell(stat: dict[str, Any], digits: int, spread: str = "ci") -> str:
    """mean ± 95 % CI half-width (or ± std); the mean alone where one seed leaves no spread."""
    if stat["mean"] is None:
        return "n/a"
    if spread == "std":
        width = stat["std"]
    else:
        width = None if stat["ci_high"] is None else stat["ci_high"] - stat["mean"]
    return f"{stat['mean']:.{digits}f}" + ("" if width is None else f" ± {width:.{digits}f}")


def _difference_cell(stat: dict[str, Any], digits: int) -> str:
    """A paired difference, starred when its interval excludes 0."""
    excludes_zero = stat["ci_low"] is not None and (stat["ci_low"] > 0 or stat["ci_high"] < 0)
    return _cell(stat, digits) + (" *" if excludes_zero else "")


def stat_table(first: str, rows: list[tuple[str, int, dict]], columns: list[tuple[str, str, int]], cell=_cell) -> str:
    """Markdown table of (name, seeds, stats) rows, one column per (key, title, digits); n/a for a missing key."""
    header = f"| {first} | seeds | " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "---|" * (len(columns) + 2)
    lines = []
    for name, seeds, stats in rows:
        cells = []
        for key, _, digits in columns:
            stat = stats.get(key)
            text = "n/a" if stat is None else cell(stat, digits)
            if stat is not None and 0 < stat["n"] < seeds:
                text += f" (n={stat['n']})"
            cells.append(text)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *lines])


def comparison_table(summary: dict[str, Any], columns: list[tuple[str, str, int]] = MNIST_COLUMNS) -> str:
    """One row per arm, mean ± 95 % CI half-width over seeds of each (key, title, digits) column."""
    rows = [(label, len(agg["seeds"]), agg) for label, agg in summary["aggregate"].items()]
    return stat_table("arm", rows, columns)


def paired_table(summary: dict[str, Any], columns: list[tuple[str, str, int]] = MNIST_COLUMNS) -> str:
    """One row per pair of arms: same-seed differences a − b of the comparison table's metrics."""
    rows = [(f"{d['a']} − {d['b']}", len(d["seeds"]), d) for d in summary["paired_differences"]]
    return stat_table("a − b", rows, columns, cell=_difference_cell)


PAIRED_NOTE = ("Each cell: mean over seeds of (a − b) on the same seed (same initial weights) ± 95 % CI "
               "half-width; * the interval excludes 0. Arrows as in the comparison.")


def property_card_table(summary: dict[str, Any]) -> str:
    """One row per arm: the properties the paper compares side by side; columns no unit measured are left out."""
    card = summary["property_card"]
    rows = [(label, len(summary["aggregate"][label]["seeds"]), row) for label, row in card["arms"].items()]
    columns = [
        (key, title.format(target=card["convergence_target"], threshold=card["sparsity_threshold"]), digits)
        for key, title, digits in PROPERTY_CARD_COLUMNS
        if any(key in row for _, _, row in rows)
    ]
    return stat_table("arm", rows, columns)


def _options(spec: dict[str, Any]) -> str:
    """``k=v, ...``; a nested optimizer (an arm's ``then``) as ``name(k=v, ...)``."""
    return ", ".join(
        f"{k}={v['name']}({_options(v)})" if isinstance(v, dict) and "name" in v else f"{k}={v}"
        for k, v in spec.items()
        if k != "name"
    )


def _optimizer_lines(summary: dict[str, Any]) -> list[str]:
    return [f"- **{label}**: `{spec['name']}` {_options(spec)}" for label, spec in summary["arms"].items()]


def _figures_and_definitions(summary: dict[str, Any], plots: list[str]) -> list[str]:
    return [
        "## Figures",
        "",
        *[f"![{name}](plots/{name})\n" for name in plots],
        "## Definitions",
        "",
        *[f"- **{key}**: {text}" for key, text in summary["conventions"].items()],
        "",
    ]


def _wall_time(summary: dict[str, Any]) -> str:
    wall = sum(u.get("wall_time_s", 0.0) for u in summary["units"])
    # Summed over units: with --workers N up to N groups train at once, so the run's wall time is shorter.
    return f"Training time summed over units: {wall:.0f} s." + (
        "" if summary["complete"] else " **Incomplete run: some units have not finished.**"
    )


def pruning_table(summary: dict[str, Any]) -> str:
    """Markdown table: accuracy after pruning per kept fraction, and small-weight fractions; '' if not measured."""
    aggregate = {label: agg for label, agg in summary["aggregate"].items() if "pruning" in agg}
    if not aggregate:
        return ""
    keep = next(iter(aggregate.values()))["pruning"]["keep"]
    thresholds = list(next(iter(aggregate.values())).get("final_weights_below", {}))
    header = (
        "| arm | " + " | ".join(f"{100 * k:g}% kept" for k in keep) + " | "
        + " | ".join(f"share \\|w\\| < {t}" for t in thresholds) + " |"
    )
    rule = "|" + "---|" * (len(keep) + len(thresholds) + 1)
    rows = []
    for label, agg in aggregate.items():
        for kind, suffix in (("accuracy", ""), ("finetuned_accuracy", " (+fine-tune)")):
            if kind not in agg["pruning"]:
                continue
            curve = agg["pruning"][kind]
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(curve["mean"], curve["std"])]
            below = [""] * len(thresholds)
            if not suffix:
                below = [_cell(agg["final_weights_below"][t], 3, "std") for t in thresholds]
            rows.append(f"| {label}{suffix} | " + " | ".join(cells + below) + " |")
    return "\n".join([header, rule, *rows])


def render_mnist_report(summary: dict[str, Any], plots: list[str]) -> str:
    lines = [
        f"# {summary['name']}: {summary['stream'].replace('_', '-')} MNIST, {summary['num_tasks']} tasks",
        "",
        f"Seeds: {summary['seeds']} (same seed = same initial weights and task sequence for every optimizer). "
        f"Processes: {summary['world_size']}. {_wall_time(summary)}",
        "",
        "Optimizers:",
        *_optimizer_lines(summary),
        "",
        "## Comparison (mean ± 95 % CI half-width over seeds)",
        "",
        comparison_table(summary),
        "",
        "↑ higher is better, ↓ lower is better. Effective rank, cross-class cosine and task-1 CKA describe "
        "the last hidden layer after the final task; lower rank and cosine mean more compact, less "
        f"overlapping class representations. {CI_NOTE}",
        "",
        "## Paired differences (same seed)",
        "",
        paired_table(summary),
        "",
        PAIRED_NOTE,
        "",
        "## Optimizer property card",
        "",
        property_card_table(summary),
        "",
        "Convergence: optimizer steps until task 1's validation accuracy, measured after each epoch, first "
        "reaches the target (so to one epoch's steps); n counts the seeds that reached it. The other cells "
        "are after the last task; cells as in the comparison.",
        "",
        *(
            ["## Sparsity: accuracy after magnitude pruning (mean ± std over seeds)", "", pruning_table(summary), ""]
            if pruning_table(summary)
            else []
        ),
        *_figures_and_definitions(summary, plots),
    ]
    return "\n".join(lines)


def loss_matrix_tables(summary: dict[str, Any]) -> list[str]:
    """One markdown loss matrix per arm (mean over seeds), the initial losses as the first row."""
    domains = summary["domains"]
    lines = []
    for label, agg in summary["aggregate"].items():
        lines += [f"**{label}**", "", "| after \\ on | " + " | ".join(domains) + " |", "|" + "---|" * (len(domains) + 1)]
        rows = [("initial", agg["mean_initial_losses"])] + list(zip(domains, agg["mean_loss_matrix"]))
        lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for name, row in rows]
        lines.append("")
    return lines


def render_text_report(summary: dict[str, Any], plots: list[str]) -> str:
    model = summary["model"]
    sizes = summary.get("domain_sizes") or {}
    domains = ", ".join(
        f"{name} ({sizes[name]['train']} train / {sizes[name]['eval']} eval seq.)" if name in sizes else name
        for name in summary["domains"]
    )
    lines = [
        f"# {summary['name']}: BERT-{model['preset']} masked LM over {len(summary['domains'])} text domains",
        "",
        f"Domains in training order: {domains}; sequences of {summary['max_length']} tokens, "
        f"{summary['steps_per_domain']} optimizer steps per domain. Seeds: {summary['seeds']} (same seed = same initial "
        f"weights, data order and masks for every optimizer). Processes: {summary['world_size']}. {_wall_time(summary)}",
        "",
        "Optimizers:",
        *_optimizer_lines(summary),
        "",
        "## Comparison (mean ± 95 % CI half-width over seeds)",
        "",
        comparison_table(summary, TEXT_COLUMNS),
        "",
        "Losses are validation masked-LM cross-entropy; ↓ lower is better. BWT and forgetting are positive when "
        "the model forgets. Effective rank, cross-domain cosine and retained CKA describe the last layer after "
        "the final domain (per layer in the figures).",
        "",
        "## Paired differences (same seed)",
        "",
        paired_table(summary, TEXT_COLUMNS),
        "",
        PAIRED_NOTE,
        "",
        "## Loss matrices (mean over seeds)",
        "",
        *loss_matrix_tables(summary),
        *_figures_and_definitions(summary, plots),
    ]
    return "\n".join(lines)
