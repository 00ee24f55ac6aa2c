"""The run driver with a third, toy recipe plugged in through the recipe table: planning, --only,
resume (finished, unreadable and checkpointed units), one writer per file, the report."""

import json
import logging
from dataclasses import dataclass
from typing import ClassVar

import pytest

from basinlab.errors import UserError
from basinlab.eval.results import UnitResult
from basinlab.eval.summary import headline_stats, units_by_arm
from basinlab.launch import recipes
from basinlab.launch.config import ArmConfig, ExperimentConfig
from basinlab.launch.driver import run_experiment, write_report
from basinlab.launch.rundir import PROGRESS, RunDirectory


@dataclass
class ToyResult(UnitResult):
    final_loss: float

    HEADLINE: ClassVar[tuple[str, ...]] = ("final_loss",)


@dataclass
class ToyConfig(ExperimentConfig):
    recipe: str = "toy"
    steps: int = 3


class ToyRecipe:
    """Trains nothing: logs ``steps`` lines per seed and reports lr * (seed + 1) as its loss."""

    result_type = ToyResult
    trains_seed_groups = True
    supports_workers = False
    trained: ClassVar[list] = []  # (arm, seeds) of every train call

    def __init__(self, config):
        self.config = config

    def prepare(self):
        pass

    def hparams(self, arm, seed):
        return {"seed": seed}

    def train(self, arm, seeds, logs, run, progress):
        ToyRecipe.trained.append((arm.label, list(seeds)))
        for log in logs:
            for step in range(self.config.steps):
                log.write("step", step=step)
        return [
            ToyResult(unit=log.unit, arm=arm.label, optimizer_name=arm.name, seed=seed, world_size=1,
                      optimizer_state_shards=1, wall_time_s=0.0, final_loss=arm.options["lr"] * (seed + 1))
            for seed, log in zip(seeds, logs)
        ]

    @staticmethod
    def summarize(config, units):
        arms = units_by_arm(config, units)
        return {"aggregate": {label: headline_stats(group) for label, group in arms.items()},
                "complete": len(units) == len(config["arms"]) * len(config["seeds"])}

    @staticmethod
    def plots(summary, folder):
        return []

    @staticmethod
    def render(summary, plots):
        return "# toy\n"


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(recipes.RECIPES, "toy", (f"{__name__}:ToyConfig", f"{__name__}:ToyRecipe"))
    ToyRecipe.trained.clear()
    arms = [ArmConfig(name="sgd", label=label, options={"lr": lr}) for label, lr in (("a", 0.1), ("b", 0.2))]
    return ToyConfig(name="toy", seeds=[0, 1], arms=arms, log_with="none")


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_third_recipe_runs_through_the_driver(toy, tmp_path):
    run = run_experiment(toy, tmp_path / "run")
    assert ToyRecipe.trained == [("a", [0, 1]), ("b", [0, 1])]
    assert sorted(p.name for p in (run / "units").iterdir()) == [f"{a}__seed{s}.json" for a in "ab" for s in (0, 1)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["aggregate"]["b"]["final_loss"]["mean"] == pytest.approx(0.3)
    assert (run / "report.md").read_text() == "# toy\n"
    assert [(line["unit"], line["arm"], line["step"]) for line in _lines(run)[:3]] == [("a__seed0", "a", i) for i in range(3)]


def test_only_trains_a_subset_and_resume_adds_the_rest(toy, tmp_path):
    run = run_experiment(toy, tmp_path / "run", only=["b"])
    assert ToyRecipe.trained == [("b", [0, 1])]
    assert not json.loads((run / "summary.json").read_text())["complete"]
    run_experiment(toy, run, resume=True, only=["a"])
    assert ToyRecipe.trained == [("b", [0, 1]), ("a", [0, 1])]
    assert json.loads((run / "summary.json").read_text())["complete"]
    with pytest.raises(UserError, match="--only 'c' is not an arm of toy; its arms are a, b"):
        run_experiment(toy, tmp_path / "other", only=["c"])


def test_resume_retrains_unreadable_units_and_keeps_checkpointed_lines(toy, tmp_path, caplog):
    run = run_experiment(toy, tmp_path / "run")
    (run / "units" / "a__seed1.json").write_text('{"schema_version": 2, "unit": "a__se')  # cut short by a crash
    (run / "units" / "b__seed0.json").unlink()
    checkpoint = RunDirectory(run).checkpoint_dir("b__seed0") / "step-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / PROGRESS).write_text(json.dumps({"position": [1], "metrics_lines": 2}))  # b__seed0 resumes after 2 lines
    ToyRecipe.trained.clear()
    with caplog.at_level(logging.WARNING):
        run_experiment(toy, run, resume=True)
    assert "a__seed1.json is unreadable" in caplog.text and (run / "units" / "invalid" / "a__seed1.json").exists()
    assert ToyRecipe.trained == [("a", [1]), ("b", [0])]
    steps = [line["step"] for line in _lines(run) if line["unit"] == "b__seed0"]
    assert steps == [0, 1, 0, 1, 2]  # 2 kept from before the checkpoint, then the (toy's) fresh run
    assert [line["step"] for line in _lines(run) if line["unit"] == "a__seed1"] == [0, 1, 2]
    assert not (run / "checkpoints").exists()  # a finished unit's checkpoints are removed


def test_output_mistakes_are_one_line_errors_and_write_nothing(toy, tmp_path, caplog):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    for output, message in [
        (afile, "is a file; name a directory"),
        (afile / "sub", "is a file; name a directory"),
    ]:
        with pytest.raises(UserError, match=message):
            run_experiment(toy, output)
    stray = tmp_path / "stray"
    (stray / "units").mkdir(parents=True)
    with pytest.raises(UserError, match="holds units but no config.yaml"):
        run_experiment(toy, stray)
    run = run_experiment(toy, tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run; add --resume"):
        run_experiment(toy, run)
    with caplog.at_level(logging.WARNING):
        run_experiment(toy, tmp_path / "new", resume=True)
    assert "does not exist yet; starting a new run" in caplog.text


def test_report_names_a_broken_unit_file(toy, tmp_path):
    run = run_experiment(toy, tmp_path / "run")
    for text in ("", "{", json.dumps({"schema_version": 2, "unit": "a__seed0"})):
        (run / "units" / "a__seed0.json").write_text(text)
        with pytest.raises(UserError, match=r"a__seed0.json: .*; rerun with --resume"):
            write_report(RunDirectory(run))


def test_an_fsdp_launch_without_gpus_is_refused_not_run_as_ddp(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(UserError, match="Accelerate would silently run DDP instead"):
        run_experiment(toy, tmp_path / "run")
    assert not (tmp_path / "run").exists()
