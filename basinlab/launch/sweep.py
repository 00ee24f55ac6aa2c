"""``basinlab sweep``: one config names a base experiment and the axes to vary; the sweep expands
it into cells (one run per combination of run-level values) whose arms are the base arms plus
one-option-at-a-time variants, runs every cell resumably, and compares each arm with a
reference arm on the same seeds (``basinlab.eval.sweep_summary``).

A sweep file (``configs/sweeps/robustness_map.yaml`` is the worked example)::

    name: robustness_map
    base: configs/mnist/permuted.yaml     # a run config; relative paths from the current directory
    reference: sgd                        # the arm every other arm of a cell is compared with
    set: {seeds: [0, 1, 2, 3, 4]}         # --set overrides of the base, for every cell
    axes:                                 # run-level keys: one cell per combination
      data.stream: [permuted, class_incremental]
      model.hidden_sizes: [[100], [400]]
    arm_axes:                             # per base arm: one extra arm per value, one option at a time
      shampoo: {root_override: [2], grafting: [none]}
    extra_arms: []                        # arms added to every cell as written (e.g. an intervention)
    metrics: [bwt, final_effective_rank]  # headline metrics to compare (default: forgetting and representation)

Every cell's config is built and checked before the first one trains, so a bad axis stops the
sweep with one line before any work is done.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from basinlab.atomic import atomic_write_json, atomic_write_text
from basinlab.errors import UserError
from basinlab.eval.sweep_summary import build_sweep_summary, render_sweep_report
from basinlab.eval.sweep_plots import write_sweep_plots
from basinlab.launch.config import ExperimentConfig, apply_override, config_from_dict, read_yaml_config
from basinlab.launch.config_checks import LABEL
from basinlab.launch.driver import run_experiment
from basinlab.launch.recipes import recipe_class
from basinlab.launch.rundir import RunDirectory
from basinlab.launch.tune import set_arm_option

SWEEP_KEYS = ("name", "base", "reference", "set", "axes", "arm_axes", "extra_arms", "metrics")
DEFAULT_METRICS = ("bwt", "final_effective_rank", "final_cross_class_cosine_mean", "final_first_task_cka")


@dataclass
class Cell:
    """One combination of run-level axis values and the checked run config it gives."""

    name: str
    values: dict[str, Any]
    config: ExperimentConfig


@dataclass
class Sweep:
    name: str
    reference: str
    metrics: list[str]
    axes: dict[str, list[Any]]
    cells: list[Cell] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)


def _value_name(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(_value_name, value))
    return str(value).replace("/", "-")


def cell_name(values: dict[str, Any]) -> str:
    """``data.stream=permuted, model.hidden_sizes=[400]`` -> ``stream-permuted_hidden_sizes-400``."""
    return "_".join(f"{key.split('.')[-1]}-{_value_name(value)}" for key, value in values.items()) or "base"


def _mapping(raw: Any, key: str, example: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"sweep key '{key}' must be a mapping, e.g. {example}")
    return raw


def _arm_variants(arms: list[dict], arm_axes: dict) -> list[dict]:
    """The base arms, then per ``arm_axes`` entry one copy of that arm per option value that differs from
    its own, labelled ``<label>.<option>-<value>``."""
    labels = {a.get("label", a.get("name")): a for a in arms}
    variants = []
    for label, options in arm_axes.items():
        if label not in labels:
            raise UserError(f"sweep key 'arm_axes.{label}': the base has no arm {label!r}; arms: {', '.join(labels)}")
        for option, values in _mapping(options, f"arm_axes.{label}", "{root_override: [2]}").items():
            if not isinstance(values, list) or not values:
                raise UserError(f"sweep key 'arm_axes.{label}.{option}' must be a non-empty list of values, e.g. [2, 4]")
            for value in values:
                arm = copy.deepcopy(labels[label])
                if set_arm_option(arm, option, value, label, where=f"sweep key 'arm_axes.{label}'") == value:
                    continue  # the base arm already has this value
                arm["label"] = f"{label}.{option}-{_value_name(value)}"
                if not LABEL.match(arm["label"]):
                    raise UserError(f"sweep key 'arm_axes.{label}.{option}': value {value!r} cannot name an arm")
                variants.append(arm)
    return [*arms, *variants]


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read a sweep file and build and check every cell's run config (nothing is trained or written)."""
    spec = read_yaml_config(path, "a sweep needs at least base: and reference:")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise UserError(f"unknown sweep key '{unknown[0]}'; valid keys: {', '.join(SWEEP_KEYS)}")
    for key in ("base", "reference"):
        if not isinstance(spec.get(key), str):
            raise UserError(f"sweep key '{key}' is required: {'a run config path' if key == 'base' else 'an arm label'}")
    base = read_yaml_config(spec["base"], "a run config needs at least arms: [{name: sgd, lr: 0.1}]")
    sets = _mapping(spec.get("set"), "set", "{seeds: [0, 1, 2]}")
    axes = _mapping(spec.get("axes"), "axes", "{data.stream: [permuted, class_incremental]}")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep key 'axes.{key}' must be a non-empty list of values, e.g. [100, 400]")
        if key.split(".")[0] in ("arms", "seeds", "name"):
            raise UserError(f"sweep key 'axes.{key}': vary arms with arm_axes and seeds with set.seeds")
    extra = spec.get("extra_arms") or []
    if not isinstance(extra, list):
        raise UserError("sweep key 'extra_arms' must be a list of arms, e.g. [{name: sgd, label: sgd-rank, lr: 0.05}]")
    name = spec.get("name", Path(path).stem)
    raw = copy.deepcopy(base)
    for key, value in sets.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    for text in overrides:
        apply_override(raw, text)
    raw["arms"] = _arm_variants(raw.get("arms") or [], _mapping(spec.get("arm_axes"), "arm_axes", "{shampoo: {grafting: [none]}}"))
    raw["arms"] += copy.deepcopy(extra)
    sweep = Sweep(name=name, reference=spec["reference"], metrics=list(spec.get("metrics") or DEFAULT_METRICS),
                  axes=axes, spec=spec)
    for combination in itertools.product(*axes.values()):
        values = dict(zip(axes, combination))
        cell = copy.deepcopy(raw)
        for key, value in values.items():
            apply_override(cell, f"{key}={json.dumps(value)}")
        cell["name"] = f"{name}.{cell_name(values)}"
        try:
            config = config_from_dict(cell)
        except UserError as err:
            raise UserError(f"sweep cell {cell_name(values)}: {err}") from None
        sweep.cells.append(Cell(cell_name(values), values, config))
    _check_comparison(sweep)
    return sweep


def _check_comparison(sweep: Sweep) -> None:
    config = sweep.cells[0].config
    labels = [arm.label for arm in config.arms]
    if sweep.reference not in labels:
        raise UserError(f"sweep key 'reference': no arm {sweep.reference!r}; arms: {', '.join(labels)}")
    headline = recipe_class(config.recipe).result_type.HEADLINE
    for metric in sweep.metrics:
        if metric not in headline:
            raise UserError(f"sweep key 'metrics': {metric!r} is not a headline metric; choose from {', '.join(headline)}")


def run_sweep(path: str | Path, output: str | Path | None = None, resume: bool = False, workers: int = 1,
              overrides: list[str] = ()) -> dict[str, Any]:
    """Run every cell of the sweep (skipping finished units on ``resume``) and write its summary."""
    sweep = load_sweep(path, overrides)
    output = Path(output) if output is not None else Path("runs") / sweep.name
    # what decides the training; metrics only change the summary, so a resumed sweep may compare others
    trained = {key: value for key, value in sweep.spec.items() if key != "metrics"}
    record = {"sweep": trained, "overrides": list(overrides), "cells": [c.name for c in sweep.cells]}
    written = output / "sweep.yaml"
    if written.exists() and not resume:
        raise UserError(f"{output} already holds a sweep; pass --resume to continue it or --output another folder")
    if written.exists() and yaml.safe_load(written.read_text()) != record:
        raise UserError(f"{output} holds a different sweep; --resume needs the same sweep file and --set overrides")
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(written, yaml.safe_dump(record, sort_keys=False))
    for i, cell in enumerate(sweep.cells, 1):
        print(f"sweep {sweep.name}: cell {i} of {len(sweep.cells)}: {cell.name}", flush=True)
        folder = output / "cells" / cell.name
        run_experiment(cell.config, folder, resume=resume, workers=workers)
    return write_sweep_results(sweep, output)


def write_sweep_results(sweep: Sweep, output: Path) -> dict[str, Any]:
    """sweep.json, report.md and plots from the cells' unit files."""
    result_type = recipe_class(sweep.cells[0].config.recipe).result_type
    cells = [
        {"name": c.name, "values": c.values, "arms": [arm.label for arm in c.config.arms],
         "units": RunDirectory(output / "cells" / c.name).read_units(result_type)}
        for c in sweep.cells
    ]
    summary = build_sweep_summary(sweep.name, sweep.reference, sweep.metrics, sweep.axes, cells)
    atomic_write_json(output / "sweep.json", summary)
    plots = write_sweep_plots(summary, output / "plots")
    atomic_write_text(output / "report.md", render_sweep_report(summary, plots, output))
    print(f"sweep written: {output / 'sweep.json'}, {output / 'report.md'}", flush=True)
    return summary
