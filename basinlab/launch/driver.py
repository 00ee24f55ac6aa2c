"""The run driver both recipes plug into: check -> open the run directory -> plan the units
still to train -> train them (in worker processes if asked) -> write each result -> report.

Main-process logic, resume, the metrics writer and TensorBoard tracking live here once;
a recipe (:class:`Recipe`) only knows how to load its data and train a group of seeds of
one arm. Recipes are looked up in :mod:`basinlab.launch.recipes`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from accelerate.tracking import TensorBoardTracker
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from basinlab import ranks
from basinlab.atomic import atomic_write_json, atomic_write_text
from basinlab.errors import UserError
from basinlab.eval.results import UnitResult
from basinlab.launch.config import ArmConfig, ExperimentConfig
from basinlab.launch.logs import configure_logging
from basinlab.launch.recipes import recipe_class
from basinlab.launch.rundir import RunDirectory, unit_id

logger = logging.getLogger(__name__)


class UnitLog:
    """The one writer of a unit's metrics.jsonl lines and TensorBoard scalars.

    Only the process that owns the unit's output writes (``run`` is None elsewhere);
    ``lines`` counts the unit's lines so a checkpoint can record where its log stands.
    """

    def __init__(self, run: RunDirectory | None, arm: ArmConfig, seed: int, hparams: dict[str, Any], log_with: str):
        self.run = run
        self.unit = unit_id(arm.label, seed)
        self.fields = {"unit": self.unit, "arm": arm.label, "seed": seed}
        self.lines = run.checkpointed_lines(self.unit) if run is not None else 0  # what opening the run kept
        self.tracker = None
        if run is not None and log_with == "tensorboard":
            self.tracker = TensorBoardTracker(self.unit, run.tensorboard_dir)  # what accelerator.init_trackers builds
            self.tracker.start()
            self.tracker.store_init_configuration(hparams)

    def write(self, event: str, **values: Any) -> None:
        """One event line: {"unit", "arm", "seed", "event", **values}."""
        self.record({"event": event, **values})

    def record(self, record: dict[str, Any]) -> None:
        """One line holding ``record`` and the unit's fields."""
        self.lines += 1
        if self.run is not None:
            self.run.log_metrics({**self.fields, **record})

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(values, step=step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()


class Recipe(Protocol):
    """What a recipe gives the driver. Constructing one sets up the launch (processes, devices)."""

    result_type: ClassVar[type[UnitResult]]
    trains_seed_groups: ClassVar[bool]  # several seeds of an arm train together (else one unit at a time)
    supports_workers: ClassVar[bool]  # --workers may train its groups in spawned processes

    def __init__(self, config: ExperimentConfig): ...

    def prepare(self) -> None:
        """Load and check the data on every rank (the main process first: it builds caches),
        before the run directory is written."""

    def hparams(self, arm: ArmConfig, seed: int) -> dict[str, Any]:
        """Flat scalar hyperparameters of a unit for TensorBoard's hparams view."""

    def train(self, arm: ArmConfig, seeds: list[int], logs: list[UnitLog], run: RunDirectory, progress: tqdm) -> list[UnitResult]:
        """Train one arm for ``seeds`` (one log each); every rank returns the results."""

    @staticmethod
    def summarize(config: dict[str, Any], units: list[UnitResult]) -> dict[str, Any]: ...

    @staticmethod
    def plots(summary: dict[str, Any], folder: Path) -> list[Path]: ...

    @staticmethod
    def render(summary: dict[str, Any], plots: list[str]) -> str: ...


def select_arms(config: ExperimentConfig, only: list[str] | None) -> list[ArmConfig]:
    """The arms ``--only`` names (all without it), in the config's order."""
    if not only:
        return list(config.arms)
    labels = [arm.label for arm in config.arms]
    unknown = [label for label in only if label not in labels]
    if unknown:
        raise UserError(f"--only {unknown[0]!r} is not an arm of {config.name}; its arms are {', '.join(labels)}")
    return [arm for arm in config.arms if arm.label in only]


def refuse_fsdp_without_gpus() -> None:
    """Accelerate (1.15) turns FSDP on only for GPU-like devices: launched with an FSDP config on
    CPUs, the ranks silently train as plain DDP. Say so instead."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        raise UserError(
            "an Accelerate FSDP config on a machine without GPUs: Accelerate would silently run DDP instead; "
            "launch with configs/accelerate/cpu_2proc.yaml here, or the FSDP config on GPUs"
        )


def plan_groups(
    recipe: Recipe, config: ExperimentConfig, arms: list[ArmConfig], finished: set[str], workers: int
) -> list[tuple[ArmConfig, list[int]]]:
    """(arm, seeds) groups still to train: each arm's unfinished seeds in ``workers`` near-equal
    groups where the recipe trains seed groups on one rank, else one seed per group."""
    groups = []
    for arm in arms:
        todo = [seed for seed in config.seeds if unit_id(arm.label, seed) not in finished]
        together = recipe.trains_seed_groups and ranks.world_size() == 1
        parts = min(workers, len(todo)) if together else len(todo)
        bounds = [len(todo) * k // parts for k in range(parts + 1)] if parts else []
        groups += [(arm, todo[a:b]) for a, b in zip(bounds, bounds[1:])]
    return groups


def train_group(recipe: Recipe, config: ExperimentConfig, run: RunDirectory, arm: ArmConfig, seeds: list[int], progress: tqdm) -> list[str]:
    """Train one group and write its unit files (main process); returns the unit ids."""
    writer = run if ranks.is_main_process() else None
    logs = [UnitLog(writer, arm, seed, recipe.hparams(arm, seed), config.log_with) for seed in seeds]
    try:
        results = recipe.train(arm, seeds, logs, run, progress)
    finally:
        for log in logs:
            log.close()
    ranks.barrier()
    if writer is not None:
        for result in results:
            run.write_unit(result)
    ranks.barrier()
    return [log.unit for log in logs]


def write_report(run: RunDirectory) -> Path:
    """(Re)build summary.json, plots/ and report.md from config.yaml and units/."""
    config = run.read_config()
    recipe = recipe_class(config.get("recipe", "mnist"))
    summary = recipe.summarize(config, run.read_units(recipe.result_type))
    atomic_write_json(run.path / "summary.json", summary)
    plots = recipe.plots(summary, run.path / "plots")
    return atomic_write_text(run.path / "report.md", recipe.render(summary, [p.name for p in plots]))


_WORKER: dict[str, Any] = {}  # one worker process's recipe, config and run directory


def _start_worker(config: ExperimentConfig, run_path: Path, threads: int, log_level: int) -> None:
    torch.set_num_threads(threads)
    configure_logging(level=log_level)
    recipe = recipe_class(config.recipe)(config)
    recipe.prepare()
    _WORKER.update(recipe=recipe, config=config, run=RunDirectory(run_path))


def _worker_train_group(job: tuple[int, list[int]]) -> list[str]:
    arm, seeds = job
    w = _WORKER
    return train_group(w["recipe"], w["config"], w["run"], w["config"].arms[arm], seeds, tqdm(disable=True))


def _train_in_workers(config: ExperimentConfig, run: RunDirectory, groups: list, workers: int, bar: tqdm) -> None:
    """Train the groups in ``workers`` spawned processes sharing this process's CPU threads: small
    models cannot keep several threads busy, so on a CPU separate processes use the cores far better."""
    threads = max(1, torch.get_num_threads() // workers)
    context = torch.multiprocessing.get_context("spawn")
    jobs = [(config.arms.index(arm), seeds) for arm, seeds in groups]
    initargs = (config, run.path, threads, logging.getLogger().getEffectiveLevel())
    with context.Pool(workers, _start_worker, initargs) as pool:
        for units in pool.imap_unordered(_worker_train_group, jobs):
            bar.update(len(units))
        pool.close()  # let the workers exit on their own (leaving the block would kill them)
        pool.join()


def run_experiment(
    config: ExperimentConfig, output: str | Path, resume: bool = False, workers: int = 1, only: list[str] | None = None
) -> Path:
    """Train every unfinished (arm, seed) unit of ``config`` (of the ``only`` arms) into ``output``,
    then rebuild its report; returns the run directory."""
    arms = select_arms(config, only)
    refuse_fsdp_without_gpus()
    recipe = recipe_class(config.recipe)(config)
    if workers > 1 and ranks.world_size() > 1:
        raise UserError(
            f"--workers {workers} under a {ranks.world_size()}-process launch: use one or the other "
            "(--workers splits seeds among processes on one machine; a launcher splits each batch)"
        )
    if workers > 1 and not recipe.supports_workers:
        raise UserError(f"--workers applies to the mnist recipe; run the {config.recipe} recipe without it")
    run = RunDirectory(output)
    resolved = config.to_yaml()
    run.check(resolved, resume)
    recipe.prepare()  # data problems surface here, before anything is written
    ranks.barrier()  # every rank has checked before the main one writes
    ranks.on_main_process(lambda: run.open(resolved, recipe.result_type))
    ranks.barrier()
    finished = run.finished_units()
    total = len(config.seeds) * len(arms)
    done = sum(unit_id(arm.label, seed) in finished for arm in arms for seed in config.seeds)
    groups = plan_groups(recipe, config, arms, finished, workers)
    if done:
        logger.info("resuming %s: %d of %d units already finished", run.path, done, total)
    where = f"{workers} worker processes" if workers > 1 else f"{ranks.world_size()} process(es)"
    logger.info("%s: %d units in %d groups, %s", config.name, total - done, len(groups), where)
    main = ranks.is_main_process()
    with logging_redirect_tqdm(), tqdm(total=total, initial=done, desc="units", disable=not main) as bar:
        if workers > 1:
            _train_in_workers(config, run, groups, workers, bar)
        else:
            for arm, seeds in groups:
                bar.update(len(train_group(recipe, config, run, arm, seeds, bar)))
    ranks.barrier()
    if main:
        write_report(run)
        logger.info("report written to %s", run.path / "report.md")
    return run.path
