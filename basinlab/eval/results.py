"""Typed unit results: what one (arm, seed) unit of a run found, as written to ``units/<unit>.json``.

Summaries, reports and tuning read these by attribute, and every recipe names its
headline metrics once (``HEADLINE``: properties of its result class), so a summary
column and the metric it shows cannot drift apart. A unit file is validated when it is
read: a file cut short by a crash or lacking keys is an ``InvalidUnitFile``, never a
finished unit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

SCHEMA_VERSION = 2  # 2: the arm's label is "arm" (1 said "optimizer")


class InvalidUnitFile(Exception):
    """A unit file that is not a complete result of this schema (its message says why)."""


def _matches(value: Any, annotation: Any) -> bool:
    """Shallow check of a JSON value against a field annotation (None stands for NaN in JSON)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


@dataclass
class UnitResult:
    """The fields every recipe's unit has."""

    unit: str
    arm: str  # the arm's label
    optimizer_name: str  # its registry name
    seed: int
    world_size: int
    optimizer_state_shards: int  # ranks sharing the optimizer state (distributed Shampoo, SOAP, Muon)
    wall_time_s: float

    HEADLINE: ClassVar[tuple[str, ...]] = ()  # properties every summary aggregates over seeds

    def headline(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.HEADLINE}

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> "UnitResult":
        if not isinstance(data, dict):
            raise InvalidUnitFile("not a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise InvalidUnitFile(f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        hints = typing.get_type_hints(cls)
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                raise InvalidUnitFile(f"no key {field.name!r}")
            if not _matches(data[field.name], hints[field.name]):
                raise InvalidUnitFile(f"key {field.name!r} holds {type(data[field.name]).__name__}")
            values[field.name] = data[field.name]
        return cls(**values)

    @classmethod
    def read(cls, path: Path) -> "UnitResult":
        """The result in ``path``; InvalidUnitFile (naming the file) if it is not a complete one."""
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidUnitFile(f"{path}: {type(err).__name__}: {err}") from None
        except InvalidUnitFile as err:
            raise InvalidUnitFile(f"{path}: {err}") from None


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass
class MnistUnitResult(UnitResult):
    """One MNIST unit: the accuracy matrix and the metrics after every task (lists run over tasks)."""

    task_names: list[str]
    initial_accuracies: list[float]
    accuracy_matrix: list[list[float]]
    acc: float
    bwt: float
    fwt: float
    forgetting: float
    forgetting_per_task: list[float]
    epochs: list[int]
    best_val_accuracy: list[float]
    val_accuracy_curve: list[list[list[float]]]
    optimizer_steps: list[dict[str, int]]
    effective_rank: list[float]
    cross_class_cosine_mean: list[float]
    first_task_cka: list[float]
    final_covariance_spectrum: list[float]
    final_cross_class_cosine: list[list[float]]
    weights_below: list[dict[str, float]]
    pruning: dict[str, Any] | None
    steps: int
    seeds_trained_together: int

    HEADLINE: ClassVar[tuple[str, ...]] = (
        "acc", "bwt", "fwt", "forgetting",
        "final_effective_rank", "final_cross_class_cosine_mean", "final_first_task_cka", "total_epochs",
    )

    @property
    def final_effective_rank(self) -> float:
        return _nan(self.effective_rank[-1])

    @property
    def final_cross_class_cosine_mean(self) -> float:
        return _nan(self.cross_class_cosine_mean[-1])

    @property
    def final_first_task_cka(self) -> float:
        return _nan(self.first_task_cka[-1])

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs)


def _finite_mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass
class TextUnitResult(UnitResult):
    """One text unit: the loss matrix over domains, per-layer representations, training curve."""

    domains: list[str]
    domain_sizes: dict[str, dict[str, int]]
    rows: list[str]  # the domain each loss-matrix row was measured after
    loss_matrix: list[list[float]]
    initial_losses: list[float]
    continual: dict[str, float]
    final_representation: list[dict[str, Any]]
    representation_rows: list[list[dict[str, Any]]]
    train_loss: list[list[float]]  # [step, loss] of every logging step
    tokens_per_second: list[float]

    HEADLINE: ClassVar[tuple[str, ...]] = (
        "final_loss", "bwt_loss", "fwt_loss", "forgetting_loss",
        "final_effective_rank", "final_cross_domain_cosine", "final_retained_cka", "mean_tokens_per_second",
    )

    def layer_metrics(self) -> list[dict[str, float]]:
        """Per layer after the last domain: effective rank (mean over domains), mean cross-domain
        cosine, and CKA to right after training each domain (mean over the domains before the last)."""
        retained = self.rows[:-1]
        return [
            {
                "effective_rank": _finite_mean(list(layer["effective_rank"].values())),
                "cross_domain_cosine": _nan(layer["mean_cross_domain_cosine"]),
                "retained_cka": _finite_mean([layer["cka_to_after_domain"][name] for name in retained]),
            }
            for layer in self.final_representation
        ]

    @property
    def final_loss(self) -> float:
        return _nan(self.continual["final_loss"])

    @property
    def bwt_loss(self) -> float:
        return _nan(self.continual["bwt_loss"])

    @property
    def fwt_loss(self) -> float:
        return _nan(self.continual["fwt_loss"])

    @property
    def forgetting_loss(self) -> float:
        return _nan(self.continual["forgetting_loss"])

    @property
    def final_effective_rank(self) -> float:
        return self.layer_metrics()[-1]["effective_rank"]

    @property
    def final_cross_domain_cosine(self) -> float:
        return self.layer_metrics()[-1]["cross_domain_cosine"]

    @property
    def final_retained_cka(self) -> float:
        return self.layer_metrics()[-1]["retained_cka"]

    @property
    def mean_tokens_per_second(self) -> float:
        return _finite_mean(self.tokens_per_second)
