"""basinlab sweep: cells and arm variants from one file, every cell checked before training, a real
tiny sweep with paired differences against the reference, resume, rank correlations; and the
recipe's representation options and rank penalty that the robustness map varies."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from basinlab.errors import UserError
from basinlab.eval.stats import paired_differences
from basinlab.eval.sweep_summary import average_ranks, build_sweep_summary, spearman, spearman_with_ci
from basinlab.launch.sweep import load_sweep, run_sweep
from basinlab.models import MLP


@pytest.fixture
def sweep_file(tmp_path, tiny_config):
    """A sweep over the tiny MNIST config: stream x width, an SGD momentum variant, a rank-penalty arm."""

    def write(**changes):
        spec = {
            "name": "tiny_sweep",
            "base": str(tiny_config(seeds=[0, 1])),
            "reference": "sgd",
            "set": {"data.num_tasks": 2, "data.max_train_examples": 512},
            "axes": {"data.stream": ["permuted", "class_incremental"], "model.hidden_sizes": [[16], [32]]},
            "arm_axes": {"sgd": {"momentum": [0.9, 0.0]}},
            "extra_arms": [{"name": "sgd", "label": "sgd-rank", "lr": 0.05, "momentum": 0.9, "rank_penalty": 0.5}],
            **changes,
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


def test_cells_and_arm_variants_expand_from_one_file(sweep_file):
    sweep = load_sweep(sweep_file())
    assert [c.name for c in sweep.cells] == [
        "stream-permuted_hidden_sizes-16", "stream-permuted_hidden_sizes-32",
        "stream-class_incremental_hidden_sizes-16", "stream-class_incremental_hidden_sizes-32",
    ]
    config = sweep.cells[3].config
    assert config.data.stream == "class_incremental" and config.model.hidden_sizes == [32]
    assert config.data.max_train_examples == 512 and config.seeds == [0, 1]
    # momentum 0.9 is the base arm's own value: only 0.0 makes a variant
    assert [a.label for a in config.arms] == ["sgd", "adamw", "sgd.momentum-0.0", "sgd-rank"]
    assert config.arms[2].options["momentum"] == 0.0 and config.arms[3].rank_penalty == 0.5


@pytest.mark.parametrize("changes, message", [
    ({"axes": {"data.stream": ["permuted", "rotated"]}}, "sweep cell stream-rotated: config key 'data.stream'"),
    ({"axes": {"model.widths": [[16]]}}, "unknown config key 'model.widths'"),
    ({"axes": {"data.num_tasks": []}}, "'axes.data.num_tasks' must be a non-empty list"),
    ({"axes": {"seeds": [[0], [1]]}}, "vary arms with arm_axes and seeds with set.seeds"),
    ({"arm_axes": {"shampoo": {"epsilon": [1e-6]}}}, "the base has no arm 'shampoo'"),
    ({"arm_axes": {"sgd": {"momentum": [-1.0]}}}, "momentum"),
    ({"reference": "lion"}, "no arm 'lion'"),
    ({"metrics": ["bwt", "sharpness"]}, "'sharpness' is not a headline metric"),
    ({"extra_arms": [{"name": "sgd", "lr": 0.1}]}, "labels must be unique"),
    ({"extra_arms": [{"name": "sgd", "label": "x", "lr": 0.1, "rank_penalty": -1}]}, "rank_penalty' must be >= 0"),
    ({"axis": {}}, "unknown sweep key 'axis'"),
])
def test_bad_sweeps_fail_before_any_training(sweep_file, tmp_path, changes, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run_sweep(sweep_file(**changes), output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_line_reports_a_bad_axis_in_one_line(sweep_file, tmp_path):
    result = subprocess.run([sys.executable, "-m", "basinlab", "sweep", sweep_file(axes={"data.stream": ["rotated"]}),
                             "--output", tmp_path / "out"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "data.stream" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_sweep_runs_compares_with_the_reference_and_resumes(sweep_file, tmp_path):
    path = sweep_file(axes={"data.stream": ["permuted", "class_incremental"]}, arm_axes={})
    out = tmp_path / "out"
    summary = run_sweep(path, output=out)
    assert [c["name"] for c in summary["cells"]] == ["stream-permuted", "stream-class_incremental"]
    cell = summary["cells"][0]
    units = {json.loads(p.read_text())["unit"]: json.loads(p.read_text()) for p in (out / "cells" / "stream-permuted" / "units").glob("*.json")}
    assert len(units) == 6 and cell["units"] == 6
    # the paired difference is the same-seed difference of the unit files
    bwt = {arm: {s: units[f"{arm}__seed{s}"]["bwt"] for s in (0, 1)} for arm in ("sgd", "adamw")}
    assert cell["arms"]["adamw"]["vs_reference"]["bwt"] == paired_differences(bwt["adamw"], bwt["sgd"])
    assert "vs_reference" not in cell["arms"]["sgd"]
    diagonal = [np.mean([units[f"adamw__seed{s}"]["accuracy_matrix"][j][j] for j in range(2)]) for s in (0, 1)]
    assert cell["arms"]["adamw"]["learning_accuracy"]["mean"] == pytest.approx(np.mean(diagonal))
    assert cell["arms"]["adamw"]["learned_the_tasks"] in (True, False)
    # the intervention really lowers the rank of what SGD learns, on both streams
    for c in summary["cells"]:
        assert c["arms"]["sgd-rank"]["vs_reference"]["final_effective_rank"]["mean"] < -1
    correlations = summary["correlations_with_bwt"]
    assert set(correlations) == {"permuted", "class_incremental"}
    assert correlations["permuted"]["final_effective_rank"]["n"] == 6
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["cells"] == json.loads(json.dumps(summary["cells"]))
    report = (out / "report.md").read_text()
    assert "| stream-permuted | adamw | 2 | " in report and "What predicts forgetting" in report
    assert (out / "plots" / "paired_differences.png").stat().st_size > 0 and (out / "plots" / "bwt_predictors.png").exists()

    with pytest.raises(UserError, match="pass --resume"):
        run_sweep(path, output=out)
    before = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/units/*.json")}
    assert run_sweep(path, output=out, resume=True)["cells"] == summary["cells"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/units/*.json")} == before  # nothing retrained
    other_metrics = path.read_text() + "metrics: [acc, bwt]\n"  # metrics only change the summary
    path.write_text(other_metrics)
    assert run_sweep(path, output=out, resume=True)["metrics"] == ["acc", "bwt"]
    with pytest.raises(UserError, match="different sweep"):
        run_sweep(path, output=out, resume=True, overrides=["train.max_epochs=2"])


class Unit:
    """What the sweep summary reads of a unit result: arm, seed, accuracy matrix, headline metrics."""

    def __init__(self, arm, seed, diagonal, bwt, rank):
        self.arm, self.seed, self.wall_time_s, self.bwt, self.rank = arm, seed, 1.0, bwt, rank
        self.accuracy_matrix = [[diagonal, 0.0], [0.0, diagonal]]

    def headline(self):
        return {"bwt": self.bwt, "final_effective_rank": self.rank}


def test_arms_that_did_not_learn_stay_out_of_what_predicts_forgetting():
    """An arm that learns nothing forgets nothing: its units (BWT 0, here the highest rank) would make
    higher rank look protective. They are left out of rho, and kept in the all-units rho and the points."""
    units = [Unit("sgd", s, 0.9, -0.5 + 0.1 * s, 10 + s) for s in range(3)]  # rank and BWT rise together
    units += [Unit("lazy", s, 0.3, 0.0, 50 + s) for s in range(3)]           # did not learn: 0.3 < 0.9 x 0.9
    units += [Unit("good", s, 0.88, -0.2 - 0.1 * s, 20 + s) for s in range(3)]  # learned: rank up, BWT down
    cell = {"name": "c", "values": {}, "arms": ["sgd", "lazy", "good"], "units": units}
    summary = build_sweep_summary("s", "sgd", ["bwt", "final_effective_rank"], {}, [cell])
    arms = summary["cells"][0]["arms"]
    assert arms["lazy"]["learned_the_tasks"] is False and arms["good"]["learned_the_tasks"] is True
    learned, everyone = (summary[k]["all"]["final_effective_rank"] for k in ("correlations_with_bwt",
                                                                               "correlations_with_bwt_all_units"))
    assert learned["n"] == 6 and everyone["n"] == 9
    expected = spearman(np.array([u.rank for u in units if u.arm != "lazy"]), np.array([u.bwt for u in units if u.arm != "lazy"]))
    assert learned["rho"] == pytest.approx(expected) and everyone["rho"] > learned["rho"]
    assert [p["learned_the_tasks"] for p in summary["points"]["all"]] == [True] * 3 + [False] * 3 + [True] * 3


def test_spearman_ranks_ties_and_bootstrap():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = np.arange(10.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, np.ones(10)))
    rng = np.random.default_rng(1)
    a = rng.normal(size=40)
    b = a + rng.normal(size=40)
    stat = spearman_with_ci(list(a), list(b) + [])
    assert stat["ci_low"] < stat["rho"] < stat["ci_high"] and 0.3 < stat["rho"] < 0.9
    assert spearman_with_ci(list(a), list(b)) == stat  # seeded: the same interval every time
    assert spearman_with_ci([1.0, None, 2.0, float("nan")], [1.0, 2.0, 3.0, 4.0])["rho"] is None  # 2 finite pairs


def test_pre_activation_features_are_the_last_layer_before_its_relu():
    net = MLP(hidden_sizes=[8, 6], seed=0)
    x = torch.randn(5, 784)
    pre = net.features(x, pre_activation=True)
    assert torch.equal(net.features(x), torch.relu(pre)) and (pre < 0).any()
    assert torch.equal(net.hidden[-1](torch.relu(net.hidden[0](x))), pre)


def test_representation_options_change_only_the_representation_metrics(tiny_config, tmp_path):
    from basinlab.launch.cli import main

    def run(name, representation):
        config = tiny_config(arms=[{"name": "sgd", "lr": 0.05, "momentum": 0.9}], data={"max_train_examples": 256},
                             representation=representation)
        assert main(["run", str(config), "--output", str(tmp_path / name)]) == 0
        return json.loads((tmp_path / name / "summary.json").read_text())

    default = run("default", {})
    assert default["representation"] == {"layer": "post_relu", "probes": "pooled", "class_means": "raw"}
    for where in ({"layer": "pre_activation"}, {"probes": "per_task"}, {"class_means": "centred"}):
        summary = run("-".join(where.values()), where)
        assert summary["representation"] == {**default["representation"], **where}
        changed, unit = summary["units"][0], default["units"][0]
        assert changed["accuracy_matrix"] == unit["accuracy_matrix"]
        moved = [k for k in ("effective_rank", "cross_class_cosine_mean") if changed[k] != unit[k]]
        assert moved, f"{where} must change what is measured"
        if where.get("probes") == "per_task":  # one seen task: per task and pooled are the same measurement
            assert changed["effective_rank"][0] == unit["effective_rank"][0]
        if where.get("class_means") == "centred":  # centring moves the class means, not the covariance
            assert changed["effective_rank"] == pytest.approx(unit["effective_rank"], rel=1e-6)


def test_the_shipped_robustness_sweeps_load(monkeypatch, mnist_cache_dir):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    sweep = load_sweep("configs/sweeps/robustness_map.yaml")
    assert len(sweep.cells) == 4 and sweep.reference == "sgd"
    labels = [a.label for a in sweep.cells[0].config.arms]
    assert {"shampoo.root_override-2", "shampoo.grafting-none", "soap", "muon", "sgd-rank_penalty-0.03"} <= set(labels)
    # its width-1000 and task-count extensions: both streams, the five base arms
    for path, width, tasks in [("robustness_width_1000", 1000, 3), ("robustness_tasks", 100, 5)]:
        cells = load_sweep(f"configs/sweeps/{path}.yaml").cells
        assert [(c.config.data.stream, c.config.model.hidden_sizes, c.config.data.num_tasks) for c in cells] == [
            ("permuted", [width], tasks), ("class_incremental", [width], tasks)]
        assert [a.label for a in cells[0].config.arms] == ["sgd", "adamw", "shampoo", "soap", "muon"]
