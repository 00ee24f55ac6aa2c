"""The run directory: one folder per run that can be resumed after any interruption.

Layout::

    config.yaml          resolved config (what --resume checks against)
    metrics.jsonl        one line per event, appended live (units interleave: group by "unit")
    units/<unit>.json    the finished result of one (arm, seed) unit, written atomically
    units/invalid/       unit files found unreadable on resume (the unit is trained again)
    checkpoints/<unit>/  a recipe's checkpoints of an unfinished unit (complete ones hold progress.json)
    tensorboard/<unit>/  TensorBoard event files
    summary.json, report.md, plots/*.png   rebuilt from units/ at the end

Each file has one writer: config.yaml and the report the main process, a unit's files
and its metrics lines the process that trains it. A unit counts as finished exactly when
its unit file reads as a complete result. On resume, the metrics lines an unfinished unit
wrote after its newest checkpoint (all of them, without one) and its TensorBoard files
are dropped, so the finished run is the same as one never interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from basinlab.atomic import append_json_line, atomic_write_json, atomic_write_text
from basinlab.errors import UserError
from basinlab.eval.results import InvalidUnitFile, UnitResult

logger = logging.getLogger(__name__)

PROGRESS = "progress.json"  # written last into a checkpoint: the checkpoint is complete


def unit_id(label: str, seed: int) -> str:
    return f"{label}__seed{seed}"


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.units_dir = self.path / "units"
        self.metrics_path = self.path / "metrics.jsonl"
        self.config_path = self.path / "config.yaml"
        self.tensorboard_dir = self.path / "tensorboard"
        self.checkpoints_dir = self.path / "checkpoints"

    # ------------------------------------------------------------------ opening

    def check(self, resolved_config: dict[str, Any], resume: bool) -> None:
        """Refuse an output that cannot hold this run, or differs from ``--resume``'s config.

        Read-only, so every rank can call it and fail the same way (no rank left waiting).
        """
        where = f"--output {str(self.path)!r}"
        blocker = next((p for p in (self.path, *self.path.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserError(f"{where}: {str(blocker)!r} is a file; name a directory")
        if blocker is not None and not os.access(blocker, os.W_OK | os.X_OK):
            raise UserError(f"{where}: {str(blocker)!r} is not writable; pick another --output")
        if not self.config_path.exists():
            traces = [p.name for p in (self.units_dir, self.metrics_path, self.checkpoints_dir) if p.exists()]
            if traces:
                raise UserError(
                    f"{where} holds {', '.join(traces)} but no config.yaml (not a complete run); "
                    "remove it or pick another --output"
                )
            if resume and not self.path.exists():
                logger.warning("--resume: %s does not exist yet; starting a new run there", self.path)
            return
        if not resume:
            raise UserError(
                f"{str(self.path)!r} already holds a run; add --resume to continue it or pick another --output"
            )
        saved = self.read_config()
        if saved != resolved_config:
            changed = sorted(k for k in set(saved) | set(resolved_config) if saved.get(k) != resolved_config.get(k))
            raise UserError(
                f"cannot resume {str(self.path)!r}: config differs in {', '.join(changed)}; "
                "run with the original config or pick another --output"
            )

    def open(self, resolved_config: dict[str, Any], result_type: type[UnitResult]) -> None:
        """Create a new run, or tidy a checked one for resuming. Main process only."""
        try:
            if self.config_path.exists():
                self._set_aside_invalid(result_type)
                self._drop_unfinished()
                return
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.config_path, yaml.safe_dump(resolved_config, sort_keys=False))
        except OSError as err:
            raise UserError(f"--output {str(self.path)!r}: {err.strerror or err}; pick another --output") from None

    def _set_aside_invalid(self, result_type: type[UnitResult]) -> None:
        for path in sorted(self.units_dir.glob("*.json")):
            try:
                result_type.read(path)
            except InvalidUnitFile as err:
                logger.warning("unit file %s is unreadable (%s); that unit is trained again", path.name, err)
                (self.units_dir / "invalid").mkdir(exist_ok=True)
                os.replace(path, self.units_dir / "invalid" / path.name)

    def _drop_unfinished(self) -> None:
        """Keep the metrics lines of finished units and those an unfinished one wrote up to its
        newest checkpoint (where it resumes); drop the rest and unfinished units' TensorBoard files."""
        finished = self.finished_units()
        if self.metrics_path.exists():
            keep = {unit: self.checkpointed_lines(unit) for unit in self._units_with_checkpoints()}
            seen: Counter = Counter()
            kept = []
            for line in self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    unit = json.loads(line).get("unit")
                except (json.JSONDecodeError, AttributeError):  # a line cut short by a crash
                    continue
                seen[unit] += 1
                if unit in finished or seen[unit] <= keep.get(unit, 0):
                    kept.append(line)
            atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))
        if self.tensorboard_dir.exists():
            for folder in self.tensorboard_dir.iterdir():
                if folder.name not in finished:
                    shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------ units

    def finished_units(self) -> set[str]:
        return {p.stem for p in self.units_dir.glob("*.json")} if self.units_dir.exists() else set()

    def write_unit(self, result: UnitResult) -> None:
        atomic_write_json(self.units_dir / f"{result.unit}.json", result.to_json())
        self.remove_checkpoints(result.unit)

    def read_units(self, result_type: type[UnitResult]) -> list[UnitResult]:
        """Every finished unit; a unit file that does not read as a complete result is a UserError."""
        units = []
        for path in sorted(self.units_dir.glob("*.json")):
            try:
                units.append(result_type.read(path))
            except InvalidUnitFile as err:
                raise UserError(f"{err}; rerun with --resume to train that unit again") from None
        return units

    def log_metrics(self, record: dict[str, Any]) -> None:
        append_json_line(self.metrics_path, record)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_dir(self, unit: str) -> Path:
        return self.checkpoints_dir / unit

    def latest_checkpoint(self, unit: str) -> Path | None:
        """The newest complete checkpoint of ``unit``: of the folders (at any depth) whose progress.json
        is written, the one with the largest "position" (a list the recipe orders its checkpoints by)."""
        complete = []
        for path in self.checkpoint_dir(unit).rglob(PROGRESS):
            try:
                complete.append((json.loads(path.read_text())["position"], str(path.parent)))
            except (OSError, ValueError, KeyError):  # a progress file cut short: that checkpoint is not complete
                continue
        return Path(max(complete)[1]) if complete else None

    def checkpointed_lines(self, unit: str) -> int:
        """How many metrics lines ``unit`` had written when its newest checkpoint was taken."""
        folder = self.latest_checkpoint(unit)
        return json.loads((folder / PROGRESS).read_text())["metrics_lines"] if folder else 0

    def _units_with_checkpoints(self) -> list[str]:
        return [p.name for p in self.checkpoints_dir.iterdir()] if self.checkpoints_dir.exists() else []

    def remove_checkpoints(self, unit: str) -> None:
        shutil.rmtree(self.checkpoint_dir(unit), ignore_errors=True)
        if self.checkpoints_dir.exists() and not any(self.checkpoints_dir.iterdir()):
            self.checkpoints_dir.rmdir()

    # ------------------------------------------------------------------ config

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise UserError(f"{str(self.path)!r} is not a basinlab run directory (no config.yaml)")
        try:
            config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            config = None
        if not isinstance(config, dict):
            raise UserError(f"{str(self.config_path)!r} is not a run config; it was not written by basinlab")
        return config
