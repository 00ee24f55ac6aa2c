"""The text recipe under real launchers: `accelerate launch` with 2 CPU ranks (DDP over gloo),
DeepSpeed ZeRO-0 through TrainingArguments(deepspeed=...) under torchrun, and a 2-rank run killed
mid-domain that resumes to the uninterrupted result."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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


ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))
SAVES = {"save_steps": 2}  # checkpoints inside each domain too


def accelerate_run(config: Path, output: Path, *extra, **kwargs) -> subprocess.Popen:
    command = [ACCELERATE, "launch", "--config_file", ROOT / "configs/accelerate/cpu_2proc.yaml",
               "-m", "basinlab", "run", config, "--output", output, *extra]
    env = {**ONE_THREAD, "ACCELERATE_USE_CPU": "true"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """The text recipe under `accelerate launch` on 2 CPU ranks, saving inside domains."""
    tmp_path = tmp_path_factory.mktemp("two")
    config = write_config(tmp_path, train=SAVES)
    process = accelerate_run(config, tmp_path / "out")
    assert process.wait() == 0, process.stderr.read()[-3000:]
    return config, tmp_path / "out"


def test_accelerate_launch_two_cpu_ranks(two_rank_run, single_process_run):
    check_two_rank_run(two_rank_run[1], single_process_run)


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


def test_two_rank_run_killed_mid_domain_resumes_to_the_same_result(tmp_path, two_rank_run):
    """SIGKILL to both ranks right after shampoo's first save inside a domain (train.save_steps), then
    --resume: every rank's optimizer shard, the data position and the RNG come back, so the result is
    the uninterrupted 2-rank run's."""
    config, full = two_rank_run
    killed = tmp_path / "killed"
    process = accelerate_run(config, killed, start_new_session=True)  # its own process group: the kill reaches both ranks
    marker = killed / "checkpoints" / "shampoo__seed0" / "domain-001"
    deadline = time.monotonic() + 300
    while not list(marker.glob("checkpoint-*/progress.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "units" / "shampoo__seed0.json").exists(), "the kill must come before shampoo finishes"
    progress = max((json.loads(p.read_text()) for p in marker.glob("checkpoint-*/progress.json")), key=lambda p: p["position"])
    assert progress["data"] == {"sequences": progress["position"][1] * 8 * 2}  # steps x 8 per rank x 2 ranks
    one_process = tmp_path / "killed_then_one_process"
    shutil.copytree(killed, one_process)
    resumed = accelerate_run(config, killed, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()[-3000:]
    one, two = (json.loads((d / "summary.json").read_text()) for d in (full, killed))
    keys = ("unit", "loss_matrix", "train_loss", "final_representation", "optimizer_state_shards")
    assert [{k: u[k] for k in keys} for u in two["units"]] == [{k: u[k] for k in keys} for u in one["units"]]

    def comparable(run_dir):
        """Each metrics line without its timings, in order (units run one after the other)."""
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(l["unit"], l.get("event", l.get("kind")), l.get("label"), l.get("step"), json.dumps(l.get("loss")))
                for l in lines]

    assert comparable(killed) == comparable(full)

    # the same checkpoint resumed by one process: the cached data continues at the next unseen position
    # (sequences counted over both ranks), every rank's optimizer shard loads into the one process
    result = subprocess.run([sys.executable, "-m", "basinlab", "run", config, "--output", one_process, "--resume"],
                            env=ONE_THREAD, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    alone = json.loads((one_process / "summary.json").read_text())
    steps = [step for step, _ in alone["units"][1]["train_loss"]]
    assert alone["complete"] and steps == sorted(set(steps)) and len(steps) == 3 * STEPS // 2
