"""``basinlab tune``: choose one option per arm (the learning rate by default) from a small grid.

Every grid point becomes an arm of ONE derived run of the MNIST recipe that trains the
first task on the first seed only, so the grid is resumable, logged and reported like any
run. A point's score is its best validation accuracy on that task: the split held out of
the training images that early stopping already uses, so the test set never picks a value.
``tune.json`` in the run directory records grids, scores and choices; ``--write`` copies the
config with the chosen values filled in.
"""

from __future__ import annotations

import copy
import math
import os
import shlex
from pathlib import Path
from typing import Any

import yaml

from basinlab.atomic import atomic_write_json, atomic_write_text
from basinlab.errors import UserError
from basinlab.eval.results import MnistUnitResult
from basinlab.launch.config import apply_override, config_from_dict, load_config
from basinlab.launch.mnist_config import MnistRunConfig
from basinlab.launch.driver import run_experiment
from basinlab.launch.rundir import RunDirectory, unit_id

SCORE = (
    "best validation accuracy on task 1, early stopping as configured "
    "(validation split held out of the training images; the test set is not used)"
)
GRID_EXAMPLE = "e.g. --grid sgd=0.01,0.03,0.1,0.3"


def _number(text: str, label: str) -> int | float:
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if math.isfinite(value):
            return value
    raise UserError(f"--grid {label}: {text!r} is not a finite number; give numbers, {GRID_EXAMPLE}")


def parse_grid(text: str) -> tuple[str, list[int | float]]:
    """``LABEL=V1,V2,...`` -> (label, values)."""
    label, sep, values = text.partition("=")
    label = label.strip()
    if not sep or not label:
        raise UserError(f"--grid expects LABEL=V1,V2,... ({GRID_EXAMPLE}), got {text!r}")
    items = [item.strip() for item in values.split(",")]
    if not any(items):
        raise UserError(f"--grid {label}: no values; list the values to try, {GRID_EXAMPLE}")
    numbers = [_number(item, label) for item in items]
    if len(set(numbers)) != len(numbers):
        raise UserError(f"--grid {label}: a value repeats in {values!r}; list each value once")
    return label, numbers


def set_arm_option(entry: dict[str, Any], key: str, value: Any, label: str, where: str = "--key") -> Any:
    """Set the (dotted) option ``key`` of one optimizer entry; returns the value it replaces (None if unset).
    ``where`` names what asked for it in an error (``--key``, a sweep's ``arm_axes``)."""
    *sections, option = path = key.split(".")
    if not all(path) or path[0] in ("name", "label"):
        raise UserError(f"{where} {key!r} must name an option of the arm, such as lr or then.lr (not its name or label)")
    node = entry
    for section in sections:
        node = node.get(section)
        if not isinstance(node, dict):
            raise UserError(
                f"{where} {key}: arm {label!r} has no '{section}' section to set it in; name an option the arm has, e.g. lr"
            )
    previous = node.get(option)
    node[option] = value
    return previous


def derive_config(config: MnistRunConfig, grids: dict[str, list[int | float]], key: str) -> tuple[MnistRunConfig, dict[str, dict]]:
    """The one run that trains every grid point (first task, first seed), and per tuned arm
    its previous value, grid and the derived arm labels. Checked like any config, so a value
    or key the optimizer does not accept fails here, before training."""
    arms = {o.label: o.to_yaml() for o in config.arms}
    for label in grids:
        if label not in arms:
            raise UserError(f"--grid {label}: {config.name} has no arm labelled {label!r}; its arms: {', '.join(arms)}")
    raw = config.to_yaml()
    raw.update(name=f"{config.name}-tune", seeds=config.seeds[:1], arms=[])
    raw["data"]["num_tasks"] = 1
    raw["pruning"]["enabled"] = False  # pruning is evaluated after the last task; no part of the score
    plan = {}
    for label, values in grids.items():
        derived = []
        for value in values:
            entry = copy.deepcopy(arms[label])
            previous = set_arm_option(entry, key, value, label)
            entry["label"] = f"{label}.{key}-{value}"
            raw["arms"].append(entry)
            derived.append(entry["label"])
        plan[label] = {"previous": previous, "grid": values, "arms": derived}
    try:
        return config_from_dict(raw), plan
    except UserError as err:  # the base config was valid, so a grid point is not (its label names it)
        raise UserError(f"--grid with --key {key}: a tune arm is invalid: {err}") from None


def check_write_path(write: str | Path | None) -> None:
    """``--write`` must name a file that can be written, checked before the grid trains for minutes."""
    if write is None:
        return
    path = Path(write)
    folder = path.parent
    if path.is_dir():
        raise UserError(f"--write {str(write)!r} is a directory; name a YAML file")
    if not folder.is_dir():
        raise UserError(f"--write {str(write)!r}: folder {str(folder)!r} does not exist; create it or name a file elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):  # the file is written to a temporary sibling, then renamed
        raise UserError(f"--write {str(write)!r}: folder {str(folder)!r} is not writable; name a file in a folder you can write to")


def tune(
    config_path: str | Path,
    grids: list[str],
    key: str = "lr",
    overrides: list[str] = (),
    output: str | Path | None = None,
    resume: bool = False,
    write: str | Path | None = None,
    main: bool = True,
    workers: int = 1,
) -> dict[str, Any] | None:
    """Run the grid and choose per arm; returns what tune.json holds (None on non-main processes)."""
    check_write_path(write)
    config = load_config(config_path, overrides)
    if config.recipe != "mnist":
        raise UserError(
            f"basinlab tune supports mnist configs only for now and {str(config_path)!r} is a {config.recipe} config; "
            "for text, run an lr-grid config such as configs/text/smoke_lr_grid.yaml"
        )
    parsed = dict(parse_grid(text) for text in grids)
    if len(parsed) != len(grids):
        raise UserError("--grid names an arm twice; give each arm one --grid with all its values")
    derived, plan = derive_config(config, parsed, key)
    output = Path(output) if output is not None else Path("runs") / derived.name
    run = RunDirectory(run_experiment(derived, output, resume=resume, workers=workers))
    if not main:
        return None
    units = {u.unit: u for u in run.read_units(MnistUnitResult)}
    seed = derived.seeds[0]
    for arm in plan.values():
        scores = [units[unit_id(label, seed)].best_val_accuracy[0] for label in arm["arms"]]
        best = scores.index(max(scores))  # ties: the first value listed
        grid = arm["grid"]
        arm.update(scores=scores, chosen=grid[best], best_score=scores[best], at_edge=grid[best] in (min(grid), max(grid)))
    command = ["basinlab", "tune", str(config_path), *[a for g in grids for a in ("--grid", g)]]
    command += ["--key", key] if key != "lr" else []
    command += [a for s in overrides for a in ("--set", s)] + ["--output", str(output)]
    command += ["--write", str(write)] if write is not None else []
    result = {
        "schema_version": 1,
        "command": shlex.join(command),
        "config": str(config_path),
        "run": str(run.path),
        "key": key,
        "seed": seed,
        "task": next(iter(units.values())).task_names[0],
        "score": SCORE,
        "arms": plan,
    }
    atomic_write_json(run.path / "tune.json", result)
    if write is not None:
        write_tuned_config(write, config, overrides, result)
    return result


class _ConfigDumper(yaml.SafeDumper):
    """Block mappings, flow lists of scalars (``seeds: [0, 1, 2]``): how the shipped configs read."""


_ConfigDumper.add_representer(
    list,
    lambda dumper, data: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=not any(isinstance(v, (dict, list)) for v in data)
    ),
)


def write_tuned_config(path: str | Path, config: MnistRunConfig, overrides: list[str], result: dict[str, Any]) -> Path:
    """The config as given (plus --set overrides) with only the tuned options changed, re-dumped
    from its YAML data (comments are lost) under a header naming the tune that chose them."""
    source = result["config"]
    raw = yaml.safe_load(Path(source).read_text())
    for text in overrides:
        apply_override(raw, text)
    index = {o.label: i for i, o in enumerate(config.arms)}  # raw entries may leave the label out
    key = result["key"]
    lines = [
        f"# {key} of the arms below chosen by `basinlab tune` (grids and scores: {result['run']}/tune.json):",
        f"#   {result['command']}",
        f"# Score: {SCORE};",
        f"# task 1 = {result['task']}, seed {result['seed']}.",
    ]
    for label, arm in result["arms"].items():
        set_arm_option(raw["arms"][index[label]], key, arm["chosen"], label)
        grid = ", ".join(map(str, arm["grid"]))
        edge = "; at the edge of the grid: widen it" if arm["at_edge"] else ""
        lines.append(f"#   {label}: {key} {arm['chosen']} (score {arm['best_score']:.4f}; grid {grid}{edge})")
    sets = " with the --set overrides" if overrides else ""
    lines.append(f"# Everything else is {source} as given to the tune{sets}; its comments are not kept.")
    body = yaml.dump(raw, Dumper=_ConfigDumper, sort_keys=False)
    return atomic_write_text(path, "\n".join(lines) + "\n" + body)


def render_table(result: dict[str, Any]) -> str:
    """Scores per arm and value, the choices, and a warning for each choice at a grid edge."""
    key = result["key"]
    width = max(len("arm"), *(len(label) for label in result["arms"]))
    lines = [
        f"tune of {result['config']} on task 1 ({result['task']}), seed {result['seed']}",
        f"score: {SCORE}",
        f"{'arm':<{width}}  {key:>10}  {'score':>7}",
    ]
    warnings = []
    for label, arm in result["arms"].items():
        for i, (value, score) in enumerate(zip(arm["grid"], arm["scores"])):
            mark = "  <- chosen" if value == arm["chosen"] else ""
            lines.append(f"{label if i == 0 else '':<{width}}  {value!s:>10}  {score:7.4f}{mark}")
        if arm["at_edge"]:
            warnings.append(
                f"warning: {label}: the chosen {key} {arm['chosen']} is at the edge of the grid "
                f"({min(arm['grid'])}..{max(arm['grid'])}); widen the grid past it"
            )
    return "\n".join([*lines, *warnings, f"tune written: {Path(result['run']) / 'tune.json'}"])
