"""Our Shampoo under real DeepSpeed 0.19 on 2 real CPU processes (gloo): called directly
(deepspeed.initialize), through Accelerate's DeepSpeed plugin, and through the HF Trainer; and a
clear error, not silent nonsense, under ZeRO stages >= 1 (flat 1-D partitions).

Each launch runs a worker from tests/workers/ that writes one JSON per rank; the tests compare
the ranks. Launches are shared by module-scoped fixtures, so parametrized tests cost one launch.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKERS = ROOT / "tests" / "workers"
pytestmark = pytest.mark.slow

MLP_SHAPES = [[32, 16], [32], [4, 32], [4]]  # tests/workers/ds_common.py tiny_mlp
ENGINE_STEPS = 8  # tests/workers/deepspeed_engine.py STEPS
ACCELERATE_STEPS = 12  # 64 rows / (2 ranks x batch 8) x 3 epochs
TRAINER_STEPS = 6


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)  # it would switch Accelerate's DeepSpeed path off
    return env


def _torchrun(script: str, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKERS / script), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def _ranks(out: Path, stem: str) -> list[dict]:
    return [json.loads((out / f"{stem}_rank{r}.json").read_text()) for r in (0, 1)]


def _matrices(shapes) -> int:
    return sum(1 for s in shapes if len(s) >= 2 and sum(d > 1 for d in s) >= 2)


def _check_shampoo_health(ranks: list[dict], shapes) -> None:
    for r in ranks:
        assert r["diagnostics"]["skipped_steps"] == 0 and r["diagnostics"]["root_failures"] == 0, r["diagnostics"]
    # Distributed Shampoo splits the roots between ranks; together they cover every matrix.
    assert sum(r["diagnostics"]["preconditioned_params"] for r in ranks) >= _matrices(shapes)


# ------------------------------------------------------------------ deepspeed.initialize, ZeRO 0


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepspeed_zero0")
    return _torchrun("deepspeed_engine.py", "zero0", out), out


@pytest.mark.parametrize("optimizer", ["shampoo", "soap", "muon"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_deepspeed_initialize_zero0_steps_our_optimizers(engine_run, precision, optimizer):
    result, out = engine_run
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = ranks = _ranks(out, precision if optimizer == "shampoo" else f"{optimizer}_{precision}")
    for r in ranks:
        assert r["world_size"] == 2
        # DeepSpeed steps OUR optimizer object, not a replacement: directly in fp32, inside its
        # FP16_UnfusedOptimizer (fp32 master copies of the bf16 weights) in bf16.
        assert r["basic_is_ours"] and r["inner_is_ours"]
        own = {"shampoo": "Shampoo", "soap": "SOAP", "muon": "Muon"}[optimizer]
        assert r["wrapper"] == {"fp32": own, "bf16": "FP16_UnfusedOptimizer"}[precision]
        # bf16 at stage 0 calls step() once more, with all-zero gradients, inside deepspeed.initialize
        # (FP16_UnfusedOptimizer.initialize_optimizer_states).
        assert r["steps_taken"] == ENGINE_STEPS + (precision == "bf16")
        # Stage 0 keeps the parameters' shapes; the optimizer steps float32 tensors in both modes.
        assert r["shapes_at_construction"] == MLP_SHAPES and r["shapes_at_step"] == MLP_SHAPES
        assert r["dtypes_at_step"] == ["torch.float32"] * 4
        assert r["module_dtypes"] == [{"fp32": "torch.float32", "bf16": "torch.bfloat16"}[precision]] * 4
        assert all(math.isfinite(v) for v in r["losses"] + r["eval_losses"])
        assert r["eval_losses"][-1] < 0.5 * r["eval_losses"][0], r["eval_losses"]
        assert r["max_change"] > 0.05
    # The ranks trained on different data, yet hold bit-identical weights (module and fp32 master).
    assert rank0["losses"][0] != rank1["losses"][0]
    assert rank0["module_fingerprint"] == rank1["module_fingerprint"]
    assert rank0["master_fingerprint"] == rank1["master_fingerprint"]
    if optimizer == "shampoo":
        _check_shampoo_health(ranks, MLP_SHAPES)
    else:
        assert all(r["diagnostics"]["skipped_steps"] == 0 for r in ranks)


# ------------------------------------------------------------------ Accelerate's DeepSpeed plugin


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_accelerate_deepspeed_plugin_steps_our_shampoo(tmp_path, precision):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    command = [accelerate, "launch", "--config_file", "configs/accelerate/deepspeed_cpu_2proc.yaml"]
    if precision == "bf16":  # the same launch config, the other DeepSpeed JSON
        command += ["--deepspeed_config_file", "configs/deepspeed/zero0_bf16.json"]
    command += [str(WORKERS / "accelerate_deepspeed.py"), str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    rank0, rank1 = ranks = _ranks(tmp_path, "accelerate")
    for r in ranks:
        assert r["is_deepspeed"] and r["num_processes"] == 2 and r["zero_stage"] == 0
        assert r["config_file"] == f"configs/deepspeed/zero0_{precision}.json"
        assert r["bf16"] is (precision == "bf16")
        assert r["micro_batch"] == 8 and r["gradient_clipping"] == 1.0  # the JSON's "auto", filled by Accelerate
        assert r["engine_is_deepspeed"] and r["engine_basic_is_ours"] and r["innermost_is_ours"]
        assert r["optimizer_chain"] == ["DeepSpeedOptimizerWrapper"] + (
            ["FP16_UnfusedOptimizer"] if precision == "bf16" else []) + ["Shampoo"]
        assert r["steps_taken"] == ACCELERATE_STEPS + (precision == "bf16")
        assert r["shapes_at_step"] == MLP_SHAPES and r["dtypes_at_step"] == ["torch.float32"] * 4
        assert len(r["losses"]) == ACCELERATE_STEPS and all(math.isfinite(v) for v in r["losses"])
        assert r["eval_final"] < 0.5 * r["eval_initial"], (r["eval_initial"], r["eval_final"])
        assert r["max_change"] > 0.05
    assert rank0["batch_sums"] != rank1["batch_sums"]  # Accelerate sharded the data
    assert rank0["fingerprint"] == rank1["fingerprint"]
    _check_shampoo_health(ranks, MLP_SHAPES)


# ------------------------------------------------------------------ HF Trainer, deepspeed=


def test_hf_trainer_deepspeed_trains_a_tiny_bert_with_our_shampoo(tmp_path):
    result = _torchrun("hf_trainer_deepspeed.py", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    rank0, rank1 = ranks = _ranks(tmp_path, "trainer")
    for r in ranks:
        assert r["dist_world_size"] == r["engine_world_size"] == 2
        assert r["accelerator_processes"] == 2 and r["args_world_size"] == 2
        assert r["deepspeed_config"] == str(ROOT / "configs/deepspeed/zero0_fp32.json")
        assert r["engine_is_deepspeed"] and r["engine_basic_is_ours"]
        assert r["optimizer_chain"] == ["DeepSpeedOptimizerWrapper", "Shampoo"] and r["innermost_is_shampoo"]
        assert r["hooked_is_innermost"] and r["steps_taken"] == r["global_step"] == TRAINER_STEPS
        assert r["num_groups"] == 2  # the Trainer's decay / no-decay groups both reached Shampoo
        assert sorted(r["shapes_at_step"]) == sorted(r["param_shapes"])
        assert r["micro_batch"] == 8 and r["gradient_clipping"] == 1.0
        losses = r["losses"]
        assert len(losses) == TRAINER_STEPS and all(math.isfinite(v) for v in losses + [r["training_loss"]])
        assert abs(losses[0] - math.log(200)) < 0.3, losses  # untrained MLM loss over a 200-word vocab, not doubled
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2, losses
    assert rank0["batch_id_sums"] != rank1["batch_id_sums"]  # each rank trained on its own rows
    assert rank0["fingerprint"] == rank1["fingerprint"]
    _check_shampoo_health(ranks, rank0["param_shapes"])


# ------------------------------------------------------------------ ZeRO >= 1: refuse, clearly

ZERO_CASES = ["stage1", "stage2", "stage1_bf16", "stage3", "stage3_zero_init", "stage1_vectors_first"]


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepspeed_zero")
    return _torchrun("deepspeed_engine.py", "zero", out), out


@pytest.mark.parametrize("case", ZERO_CASES)
def test_zero_stage_partitions_make_shampoo_fail_clearly(zero_run, case):
    """ZeRO 1/2/3 (and BF16_Optimizer) hand the optimizer flat 1-D partitions; Shampoo must raise a
    RuntimeError naming the ZeRO stage at its first step instead of training on meaningless factors."""
    result, out = zero_run
    assert result.returncode != 0, "a ZeRO >= 1 run with Shampoo exited 0"
    for r in _ranks(out, "zero"):
        outcome = r[case]
        assert outcome["error"] == "RuntimeError", outcome
        assert "ZeRO stage" in outcome["message"], outcome["message"]
    for rank in (0, 1):  # the two ranks share stderr, so lines may interleave; each tags its own
        assert re.search(rf"\[case {case} rank {rank}\] RuntimeError: [^\n]*ZeRO stage", result.stderr), (
            result.stderr[-4000:])


# ------------------------------------------------------------------ the config files themselves


def test_config_files_load_where_they_are_used():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    for precision in ("fp32", "bf16"):
        config = json.loads((ROOT / f"configs/deepspeed/zero0_{precision}.json").read_text())
        assert config["zero_optimization"]["stage"] == 0
        assert config["bf16"]["enabled"] is (precision == "bf16") and config["fp16"]["enabled"] is False
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert config[key] == "auto"
        # HF computes an "auto" train_batch_size before it knows the world size (8 != 8 * 1 * 2 on
        # 2 CPU ranks); DeepSpeed derives it correctly when absent.
        assert "train_batch_size" not in config

    for name, processes in (("deepspeed_cpu_2proc", 2), ("deepspeed_multi_gpu", 8)):
        ds = load_config_from_file(str(ROOT / f"configs/accelerate/{name}.yaml"))
        assert ds.distributed_type == "DEEPSPEED" and ds.num_processes == processes and ds.use_cpu is False
        assert ds.mixed_precision is None  # any value here is refused next to a deepspeed_config_file
        assert (ROOT / ds.deepspeed_config["deepspeed_config_file"]).is_file()

    # The multi-node template resolves to the torchrun topology its comments promise, per node.
    for rank in (0, 1):
        args = launch_command_parser().parse_args(
            ["--config_file", str(ROOT / "configs/accelerate/multi_node.yaml"), "--machine_rank", str(rank),
             "-m", "basinlab", "run", "config.yaml"])
        args, _, _ = _validate_launch_command(args)
        args.main_process_port = 0  # only so that the port-in-use check cannot fire on this machine
        prepare_multi_gpu_env(args)
        assert args.multi_gpu and args.nnodes == "2" and args.nproc_per_node == "8" and args.node_rank == rank
