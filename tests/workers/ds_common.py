"""Helpers shared by the DeepSpeed worker scripts (run under a launcher, never collected by pytest)."""

import hashlib
import json
import os
from pathlib import Path

import deepspeed.ops
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
# The first DeepSpeed comm init on CPU JIT-builds a shared-memory op (60-80 s); gloo does not need it.
# There is no environment switch for it (deepspeed/comm/torch.py build_shm_op reads this dict).
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def rank() -> int:
    return int(os.environ["RANK"])


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))


def regression_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable regression problem, the same on every rank; ranks take different shards of it."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=generator)
    y = torch.tanh(x @ torch.randn(16, 4, generator=generator) * 0.5)
    return x, y


def resolved(config_path: Path, micro_batch: int, clip: float = 1.0) -> dict:
    """The JSON with the "auto" entries that HF Trainer / Accelerate fill in, filled by hand for
    a direct deepspeed.initialize (which cannot parse "auto")."""
    config = json.loads(Path(config_path).read_text())
    config.update(train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=1, gradient_clipping=clip)
    assert "auto" not in json.dumps(config), config
    return config


def fingerprint(tensors) -> str:
    """sha256 over the exact bytes of the tensors (any dtype)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(str((tuple(t.shape), t.dtype)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def step_recorder(optimizer: torch.optim.Optimizer) -> dict:
    """Count the optimizer's own step() calls and record what its param_groups hold at the first one."""
    record = {"steps": 0, "shapes_at_step": None, "dtypes_at_step": None}

    def pre(opt, args, kwargs):
        if record["shapes_at_step"] is None:
            params = [p for group in opt.param_groups for p in group["params"]]
            record["shapes_at_step"] = [list(p.shape) for p in params]
            record["dtypes_at_step"] = [str(p.dtype) for p in params]

    def post(opt, args, kwargs):
        record["steps"] += 1

    optimizer.register_step_pre_hook(pre)
    optimizer.register_step_post_hook(post)
    return record


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
