"""The text recipe under real launchers: `accelerate launch` with 2 CPU ranks (DDP over gloo) and
DeepSpeed ZeRO-0 through TrainingArguments(deepspeed=...) under torchrun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from text_fixtures import STEPS, tiny_text_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_config(tmp_path, **sections) -> Path:
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(tiny_text_config(tmp_path, **sections)))
    return path


def first_logged_losses(run_dir: Path) -> dict[str, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = {}
    for line in lines:
        if line.get("event") == "train":
            first.setdefault(line["unit"], line["loss"])
    return first


def check_two_rank_run(run_dir: Path, single: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["world_size"] == 2
    assert [u["optimizer_state_shards"] for u in summary["units"]] == [1, 2]  # distributed Shampoo split its blocks
    # the logged loss is each step's mean over both ranks, not their sum (HF's doubled-loss pitfall)
    two, one = first_logged_losses(run_dir), first_logged_losses(single)
    for unit in one:
        assert two[unit] == pytest.approx(one[unit], rel=0.1)
    for unit in summary["units"]:
        assert unit["initial_losses"] == summary["units"][0]["initial_losses"]
        assert all(unit["loss_matrix"][i][i] < unit["initial_losses"][i] - 0.1 for i in range(3))
    return summary


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("one")
    result = subprocess.run([sys.executable, "-m", "basinlab", "run", write_config(tmp_path), "--output", tmp_path / "out"],
                            env=ONE_THREAD, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "out"


def test_accelerate_launch_two_cpu_ranks(tmp_path, single_process_run):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [accelerate, "launch", "--config_file", ROOT / "configs/accelerate/cpu_2proc.yaml",
         "-m", "basinlab", "run", write_config(tmp_path), "--output", tmp_path / "out"],
        env={**ONE_THREAD, "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_two_rank_run(tmp_path / "out", single_process_run)


def test_deepspeed_zero0_under_torchrun(tmp_path, single_process_run):
    config = write_config(tmp_path, train={"deepspeed": str(ROOT / "configs/deepspeed/zero0_fp32.json")})
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "basinlab", "run", config, "--output", tmp_path / "out"],
        env=ONE_THREAD,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = check_two_rank_run(tmp_path / "out", single_process_run)
    ends = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines() if '"domain_end"' in l]
    assert [l["optimizer_steps"] for l in ends if l["unit"] == "shampoo__seed0"] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert summary["units"][1]["arm"] == "shampoo"
