"""Continual masked-LM pre-training over text domains with the Hugging Face Trainer, as a
:class:`basinlab.launch.driver.Recipe`: ``TextRecipe`` sets up the launch, prepares the
domains (tokenizer, packed sequences) and trains one (arm, seed) unit at a time with
:class:`basinlab.launch.text_unit.TextUnit`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm
from transformers import TrainingArguments

from basinlab import ranks
from basinlab.eval.plots import write_text_plots
from basinlab.eval.report import render_text_report
from basinlab.eval.results import TextUnitResult
from basinlab.eval.text_summary import build_text_summary
from basinlab.launch.config import ArmConfig
from basinlab.launch.text_config import TextRunConfig
from basinlab.launch.text_domains import load_domains
from basinlab.launch.driver import UnitLog
from basinlab.launch.rundir import RunDirectory
from basinlab.launch.text_unit import TextUnit

logger = logging.getLogger(__name__)


def process_setup(config: TextRunConfig) -> dict[str, Any]:
    """Extra TrainingArguments for this launch; on a CPU-only machine under DeepSpeed, first
    the process state HF would otherwise build wrongly.

    HF's TrainingArguments sets up DeepSpeed's process state without a backend; without
    CUDA that state reports one process, rank 0, on every rank (every rank "main", no data
    sharding). So build it ourselves with gloo and let HF reuse it. DeepSpeed's first
    initialize would also JIT-build a shared-memory comm op on CPU (60-80 s), not needed here.
    """
    if config.train.deepspeed is None or torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return {}
    import deepspeed.ops
    from accelerate import PartialState

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return {"accelerator_config": {"use_configured_state": True}}


class TextRecipe:
    """Masked-LM pre-training over text domains, one (arm, seed) unit at a time."""

    result_type: ClassVar[type[TextUnitResult]] = TextUnitResult
    trains_seed_groups: ClassVar[bool] = False
    supports_workers: ClassVar[bool] = False
    summarize = staticmethod(build_text_summary)
    plots = staticmethod(write_text_plots)
    render = staticmethod(render_text_report)

    def __init__(self, config: TextRunConfig):
        self.config = config
        self.process_kwargs = process_setup(config)
        # TrainingArguments sets up torch.distributed under a launcher (what ranks then reports).
        TrainingArguments(output_dir="unused", use_cpu=not torch.cuda.is_available(), report_to=[],
                          deepspeed=config.train.deepspeed, **self.process_kwargs)
        self.tokenizer, self.domains = None, []

    def prepare(self) -> None:
        with ranks.main_process_first():
            self.tokenizer, self.domains = load_domains(self.config)
        for domain in self.domains:
            train = "streamed" if domain.train_sequences is None else f"{domain.train_sequences}"
            logger.info("domain %s: %s train / %d eval / %d probe sequences of %d tokens", domain.name,
                        train, len(domain.eval), len(domain.probe), self.config.data.max_length)

    def hparams(self, arm: ArmConfig, seed: int) -> dict[str, Any]:
        flat = {"seed": seed, "optimizer": arm.name}
        flat.update({f"optim.{k}": v for k, v in arm.options.items() if isinstance(v, (int, float, str, bool))})
        flat.update({f"train.{k}": v for k, v in vars(self.config.train).items() if isinstance(v, (int, float, str, bool))})
        return flat

    def train(
        self, arm: ArmConfig, seeds: list[int], logs: list[UnitLog], run: RunDirectory, progress: tqdm
    ) -> list[TextUnitResult]:
        (log,) = logs  # one unit at a time (trains_seed_groups is False)
        progress.set_postfix_str(log.unit)
        unit = TextUnit(self.config, arm, log, self.domains, self.tokenizer, run, self.process_kwargs)
        return [unit.train()]
