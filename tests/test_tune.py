"""basinlab tune: one real derived run of the grid on the first task and seed, the choices, --write."""

import contextlib
import io
import json
import shlex
from pathlib import Path

import pytest
import yaml

from basinlab.launch.cli import build_parser, main
from basinlab.launch.config import config_from_dict, load_config
from basinlab.launch.tune import derive_config, parse_grid

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mnist"
GRIDS = ["--grid", "sgd=0.001,0.05,50", "--grid", "adamw=1e-4,1e-2"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, mnist_cache_dir):
    """One real tune of a 3-task, 2-seed config: SGD's middle lr wins (50 diverges), AdamW's grid has two values."""
    folder = tmp_path_factory.mktemp("tune")
    config = folder / "small.yaml"
    config.write_text(
        "# a comment that --write does not keep\n"
        "name: small\n"
        "seeds: [3, 1]\n"
        "log_with: none\n"
        f"data: {{num_tasks: 3, max_train_examples: 1000, validation_size: 1000, probe_size: 200, cache_dir: '{mnist_cache_dir}'}}\n"
        "train: {batch_size: 64, max_epochs: 1, patience: 1}\n"
        "pruning: {enabled: true}\n"
        "arms:\n"
        "  - {name: sgd, lr: 0.01, momentum: 0.9}\n"
        "  - {name: adamw, lr: 0.001}\n"
        "  - {name: sgd, label: untouched, lr: 0.05}\n"
    )
    argv = ["tune", str(config), *GRIDS, "--set", "arms.untouched.lr=0.02", "--output", str(folder / "out"),
            "--write", str(folder / "tuned.yaml")]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return {"config": config, "out": folder / "out", "written": folder / "tuned.yaml", "argv": argv, "stdout": stdout.getvalue()}


def test_the_derived_run_trains_one_task_per_grid_point_on_the_first_seed(tuned):
    run = tuned["out"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["name"] == "small-tune" and saved["seeds"] == [3] and saved["data"]["num_tasks"] == 1
    assert not saved["pruning"]["enabled"]
    units = {p.stem: json.loads(p.read_text()) for p in (run / "units").glob("*.json")}
    assert sorted(units) == sorted(
        f"{arm}__seed3" for arm in ["sgd.lr-0.001", "sgd.lr-0.05", "sgd.lr-50", "adamw.lr-0.0001", "adamw.lr-0.01"]
    )  # the arm without a --grid is not trained
    for unit in units.values():
        assert len(unit["accuracy_matrix"]) == 1 and len(unit["best_val_accuracy"]) == 1
    assert (run / "report.md").is_file()


def test_tune_json_chooses_the_best_validation_accuracy_and_flags_grid_edges(tuned):
    result = json.loads((tuned["out"] / "tune.json").read_text())
    assert result["key"] == "lr" and result["seed"] == 3 and result["task"] == "unpermuted"
    assert "validation" in result["score"] and "--set arms.untouched.lr=0.02" in result["command"]
    assert set(result["arms"]) == {"sgd", "adamw"}
    for arm in result["arms"].values():
        unit_scores = [
            json.loads((tuned["out"] / "units" / f"{label}__seed3.json").read_text())["best_val_accuracy"][0]
            for label in arm["arms"]
        ]
        assert arm["scores"] == unit_scores
        assert arm["chosen"] == arm["grid"][unit_scores.index(max(unit_scores))]
        assert arm["at_edge"] == (arm["chosen"] in (min(arm["grid"]), max(arm["grid"])))
    sgd, adamw = result["arms"]["sgd"], result["arms"]["adamw"]
    assert (sgd["previous"], sgd["grid"], sgd["chosen"], sgd["at_edge"]) == (0.01, [0.001, 0.05, 50], 0.05, False)
    assert adamw["previous"] == 0.001 and adamw["at_edge"]  # two values: the best is always an edge
    out = tuned["stdout"]
    assert out.count("<- chosen") == 2
    assert [line.split(":")[1].strip() for line in out.splitlines() if line.startswith("warning:")] == ["adamw"]


def test_write_gives_the_original_config_with_only_the_chosen_values_changed(tuned):
    result = json.loads((tuned["out"] / "tune.json").read_text())
    text = tuned["written"].read_text()
    header = text.splitlines()[:4]
    assert all(line.startswith("#") for line in header) and result["command"] in text
    assert "a comment that --write does not keep" not in text
    expected = yaml.safe_load(tuned["config"].read_text())
    expected["arms"][0]["lr"] = result["arms"]["sgd"]["chosen"]
    expected["arms"][1]["lr"] = result["arms"]["adamw"]["chosen"]
    expected["arms"][2]["lr"] = 0.02  # the --set override
    assert yaml.safe_load(text) == expected
    config = load_config(tuned["written"])
    assert config.name == "small" and config.data.num_tasks == 3 and config.seeds == [3, 1]
    assert [o.options["lr"] for o in config.arms] == [0.05, result["arms"]["adamw"]["chosen"], 0.02]


def test_resume_reuses_the_finished_grid(tuned, capsys):
    units = sorted((tuned["out"] / "units").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in units} | {"tune": (tuned["out"] / "tune.json").read_text()}
    assert main(tuned["argv"]) == 2
    assert "already holds a run; add --resume" in capsys.readouterr().err
    assert main([*tuned["argv"], "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in units} | {"tune": (tuned["out"] / "tune.json").read_text()} == before


def test_a_nested_key_tunes_the_second_optimizer_of_a_switching_arm():
    config = config_from_dict(
        {"arms": [{"name": "adamw", "label": "aw-then-sgd", "lr": 0.001,
                         "then": {"name": "sgd", "lr": 0.05}, "switch_after_steps": 10}]}
    )
    derived, plan = derive_config(config, {"aw-then-sgd": [0.01, 0.1]}, "then.lr")
    assert [o.label for o in derived.arms] == ["aw-then-sgd.then.lr-0.01", "aw-then-sgd.then.lr-0.1"]
    assert [(o.options["lr"], o.then.options["lr"]) for o in derived.arms] == [(0.001, 0.01), (0.001, 0.1)]
    assert plan["aw-then-sgd"]["previous"] == 0.05


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "lion=0.1"], "--grid lion: tiny has no arm labelled 'lion'; its arms: sgd, adamw"),
        (["--grid", "sgd="], "--grid sgd: no values"),
        (["--grid", "sgd"], "--grid expects LABEL=V1,V2,..."),
        (["--grid", "sgd=0.1,fast"], "--grid sgd: 'fast' is not a finite number"),
        (["--grid", "sgd=0.1,1e-1"], "a value repeats"),
        (["--grid", "sgd=0.1", "--grid", "sgd=0.3"], "names an arm twice"),
        (["--grid", "adamw=0.1", "--key", "momentum"], "optimizer 'adamw' has no option 'momentum'; valid options: lr"),
        (["--grid", "sgd=-1,0.1"], r"(sgd.lr--1): Invalid learning rate"),
        (["--grid", "sgd=0.1", "--key", "then.lr"], "arm 'sgd' has no 'then' section"),
        (["--grid", "sgd=0.1", "--key", "label"], "must name an option of the arm"),
        (["--grid", "sgd=0.1", "--set", "train.max_epoch=2"], "unknown config key 'train.max_epoch'"),
    ],
)
def test_mistakes_stop_before_training_with_one_line(args, message, tiny_config, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["tune", str(tiny_config()), *args, "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("basinlab: error: ") and message in err and "\n" not in err
    assert not output.exists()


def test_text_configs_are_refused(tmp_path, capsys):
    config = tmp_path / "text.yaml"
    config.write_text("recipe: text\narms: [{name: adamw, lr: 0.001}]\n")
    assert main(["tune", str(config), "--grid", "adamw=1e-4,1e-3"]) == 2
    assert "supports mnist configs only" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["paper_permuted", "paper_class_incremental"])
def test_paper_configs_name_the_tune_command_that_chooses_their_learning_rates(name):
    """The command in the header parses and derives one arm per grid value, without training."""
    path = CONFIGS / f"{name}.yaml"
    comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(comments) if line.startswith("basinlab tune"))
    command = " ".join(line.rstrip("\\") for line in comments[start:start + 3])
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.config == path.relative_to(CONFIGS.parents[1]) and args.write == args.config
    config = load_config(CONFIGS.parents[1] / args.config)
    derived, plan = derive_config(config, dict(parse_grid(g) for g in args.grid), args.key)
    # the first command tunes the original three arms; SOAP's and Muon's tune is a second command
    assert set(plan) == {"sgd", "adamw", "shampoo"} and set(plan) <= {o.label for o in config.arms}
    assert len(derived.arms) == 12 and derived.seeds == [0] and derived.data.num_tasks == 1
