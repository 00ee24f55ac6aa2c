"""Real processes: a run killed mid-way resumes to the same result, and a 2-rank
`accelerate launch` (gloo on CPU) really has world size 2, shards Shampoo, and matches one
process, the pruning fine-tune included."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "basinlab", "run", *map(str, args)], env=env, capture_output=True, text=True)


def _summary_without_timing(run_dir: Path) -> dict:
    """The summary less what says how a unit ran rather than what it found: wall time, and how many seeds
    trained together (a kill between two units of one seed group leaves the second to train alone, bitwise
    the same as in the group)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    for unit in summary["units"]:
        unit.pop("wall_time_s")
        unit.pop("seeds_trained_together")
    return summary


def _metrics_by_unit(run_dir: Path) -> dict[str, list[str]]:
    """metrics.jsonl lines per unit, in order (a group's units interleave; a resumed one appends after)."""
    lines = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        lines.setdefault(json.loads(line)["unit"], []).append(line)
    return lines


def test_killed_run_resumes_to_the_same_summary(tiny_config, tmp_path):
    config = tiny_config(seeds=[0, 1], train={"max_epochs": 2})
    full, partial = tmp_path / "full", tmp_path / "partial"
    assert _run(config, "--output", full).returncode == 0

    process = subprocess.Popen(
        [sys.executable, "-m", "basinlab", "run", str(config), "--output", str(partial)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list((partial / "units").glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list((partial / "units").glob("*.json")))
    assert 1 <= finished < 4, "the run must be cut between its first and last unit"
    assert not (partial / "summary.json").exists()

    resumed = _run(config, "--output", partial, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{finished} of 4 units already finished" in resumed.stderr
    assert _summary_without_timing(partial) == _summary_without_timing(full)
    assert _metrics_by_unit(partial) == _metrics_by_unit(full)


def test_two_process_accelerate_launch_matches_one_process(tiny_config, tmp_path):
    optimizers = [{"name": "sgd", "lr": 0.05, "momentum": 0.9}, {"name": "shampoo", "lr": 0.002, "precondition_frequency": 5}]
    pruning = {"enabled": True, "finetune_steps": 3, "keep_fractions": [1.0, 0.1]}  # the fine-tune trains on 2 ranks too
    config = tiny_config(seeds=[0], data={"num_tasks": 2}, train={"max_epochs": 2}, arms=optimizers, pruning=pruning)
    single, double = tmp_path / "one", tmp_path / "two"
    assert _run(config, "--output", single).returncode == 0
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [accelerate, "launch", "--config_file", ROOT / "configs/accelerate/cpu_2proc.yaml",
         "-m", "basinlab", "run", config, "--output", double],
        env={**os.environ, "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _summary_without_timing(single), _summary_without_timing(double)
    assert one["world_size"] == 1 and two["world_size"] == 2
    # distributed Shampoo really split its state over the two ranks
    assert [u["optimizer_state_shards"] for u in two["units"]] == [1, 2]
    assert [u["optimizer_state_shards"] for u in one["units"]] == [1, 1]
    for a, b in zip(one["units"], two["units"]):
        assert a["initial_accuracies"] == b["initial_accuracies"]
        assert a["epochs"] == b["epochs"]
        for row_a, row_b in zip(a["accuracy_matrix"], b["accuracy_matrix"]):
            assert row_a == pytest.approx(row_b, abs=0.01)
        # SGD matches one process to rounding (the fine-tune's gradients are averaged over the ranks, as in
        # training); Shampoo's small training differences (above) grow through pruning 90 % and fine-tuning
        tolerance = 2e-3 if a["arm"] == "sgd" else 0.02
        assert a["pruning"]["accuracy"] == pytest.approx(b["pruning"]["accuracy"], abs=tolerance)
        assert a["pruning"]["finetuned_accuracy"] == pytest.approx(b["pruning"]["finetuned_accuracy"], abs=tolerance)
        assert b["pruning"]["finetuned_accuracy"][1] != b["pruning"]["accuracy"][1]  # the fine-tune really trained


def test_worker_processes_train_every_unit_once(tiny_config, tmp_path):
    """--workers 2: two spawned processes share each arm's seeds and the metrics file. One thread each
    instead of two rounds the matrix products differently, so results agree to that rounding, not bitwise."""
    config = tiny_config(seeds=[0, 1, 2], train={"max_epochs": 2}, log_with="tensorboard")
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert _run(config, "--output", serial).returncode == 0
    result = _run(config, "--output", parallel, "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 worker processes" in result.stderr
    one, two = _summary_without_timing(serial), _summary_without_timing(parallel)
    assert [u["unit"] for u in one["units"]] == [u["unit"] for u in two["units"]]
    grouping = [u["seeds_trained_together"] for u in json.loads((parallel / "summary.json").read_text())["units"]]
    assert grouping == [1, 2, 2] * 2  # seeds [0] and [1, 2] per arm
    for a, b in zip(one["units"], two["units"]):
        assert a["initial_accuracies"] == b["initial_accuracies"] and a["steps"] == b["steps"]
        assert sum(a["accuracy_matrix"], []) == pytest.approx(sum(b["accuracy_matrix"], []), abs=0.02)
    lines = _metrics_by_unit(parallel)
    assert {unit: len(rows) for unit, rows in lines.items()} == {unit: len(rows) for unit, rows in _metrics_by_unit(serial).items()}
    assert sorted(p.name for p in (parallel / "tensorboard").iterdir()) == sorted(lines)
