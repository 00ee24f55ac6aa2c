"""The run directory: one folder per run that can be resumed after any interruption.

Layout::

    config.yaml          resolved config (what --resume checks against)
    metrics.jsonl        one line per evaluation, appended live (units interleave: group by "unit")
    units/<unit>.json    the finished result of one (optimizer, seed) unit, written atomically
    tensorboard/<unit>/  TensorBoard event files
    summary.json, report.md, plots/*.png   rebuilt from units/ at the end

A unit counts as finished exactly when its units/ file exists. On resume, metrics lines
and TensorBoard files of unfinished units are dropped, so the finished run is the same
as one that was never interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from basinlab.atomic import atomic_write_json, atomic_write_text, json_safe
from basinlab.errors import UserError
from basinlab.eval.plots import write_plots, write_text_plots
from basinlab.eval.report import render_report, render_text_report
from basinlab.eval.summary import build_summary
from basinlab.eval.text_summary import build_text_summary

# recipe -> (summary builder, plot writer, report renderer)
REPORTERS = {
    "mnist": (build_summary, write_plots, render_report),
    "text": (build_text_summary, write_text_plots, render_text_report),
}


def unit_id(label: str, seed: int) -> str:
    return f"{label}__seed{seed}"


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.units_dir = self.path / "units"
        self.metrics_path = self.path / "metrics.jsonl"
        self.config_path = self.path / "config.yaml"
        self.tensorboard_dir = self.path / "tensorboard"

    def check(self, resolved_config: dict[str, Any], resume: bool) -> None:
        """Refuse an output that is a file, holds another run, or differs from ``--resume``'s config.

        Read-only, so every rank can call it and fail the same way (no rank left waiting).
        """
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output {str(self.path)!r} is a file; name a directory")
        if not self.config_path.exists():
            return
        if not resume:
            raise UserError(
                f"{str(self.path)!r} already holds a run; add --resume to continue it or pick another --output"
            )
        saved = yaml.safe_load(self.config_path.read_text())
        if saved != resolved_config:
            changed = sorted(k for k in set(saved) | set(resolved_config) if saved.get(k) != resolved_config.get(k))
            raise UserError(
                f"cannot resume {str(self.path)!r}: config differs in {', '.join(changed)}; "
                "run with the original config or pick another --output"
            )

    def open(self, resolved_config: dict[str, Any]) -> None:
        """Create a new run, or drop the traces of unfinished units of a checked one. Main process only."""
        if self.config_path.exists():
            self._drop_unfinished()
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, yaml.safe_dump(resolved_config, sort_keys=False))

    def _drop_unfinished(self) -> None:
        finished = self.finished_units()
        if self.metrics_path.exists():
            lines = self.metrics_path.read_text().splitlines()
            kept = []
            for line in lines:
                try:
                    if json.loads(line).get("unit") in finished:
                        kept.append(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
            atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))
        if self.tensorboard_dir.exists():
            for folder in self.tensorboard_dir.iterdir():
                if folder.name not in finished:
                    shutil.rmtree(folder, ignore_errors=True)

    def finished_units(self) -> set[str]:
        return {p.stem for p in self.units_dir.glob("*.json")} if self.units_dir.exists() else set()

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one evaluation record: one JSON line in one append-mode write, so the lines of
        worker processes sharing the file never interleave."""
        line = (json.dumps(json_safe(record), sort_keys=True) + "\n").encode()
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def write_unit(self, unit: str, result: dict[str, Any]) -> None:
        atomic_write_json(self.units_dir / f"{unit}.json", result)

    def read_units(self) -> dict[str, dict[str, Any]]:
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.units_dir.glob("*.json"))}

    def write_report(self) -> Path:
        """(Re)build summary.json, plots/ and report.md from config.yaml and units/."""
        if not self.config_path.exists():
            raise UserError(f"{str(self.path)!r} is not a basinlab run directory (no config.yaml)")
        config = yaml.safe_load(self.config_path.read_text())
        summarize, draw, render = REPORTERS[config.get("recipe", "mnist")]
        summary = summarize(config, list(self.read_units().values()))
        atomic_write_json(self.path / "summary.json", summary)
        plots = draw(summary, self.path / "plots")
        return atomic_write_text(self.path / "report.md", render(summary, [p.name for p in plots]))
