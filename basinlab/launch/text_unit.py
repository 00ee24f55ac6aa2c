"""Training one text unit: one BERT with one arm's optimizer through the domains of one seed,
on the Hugging Face Trainer (one Trainer per domain), with its checkpoints and resume.

- Same start for every arm of a seed: the model's weights depend on the seed alone, and an
  "initial" evaluation gives the losses before training (for FWT).
- One ``Trainer`` per domain (HF keeps its lr scheduler across ``train()`` calls, and the
  schedule should restart with each domain). The first Trainer builds the optimizer from
  ``optimizer_cls_and_kwargs``; later ones train with the same optimizer object, so its
  state (moments, Shampoo's factors) carries over unless ``reset_optimizer_per_domain``.
- Each domain's Trainer seeds its data order, masking and dropout from (seed, domain); the data
  is read by position (``basinlab.launch.text_loader``), so a run resumed from a checkpoint,
  between domains or inside one, continues exactly as if never interrupted.
- After each domain, a checkpoint (model, optimizer, evaluation records, training curve and
  how many metrics lines the unit had written) in ``checkpoints/<unit>/domain-NNN/``; with
  ``train.save_steps`` also the domain's Trainer's own checkpoints inside it
  (``checkpoint-<step>/``), which resume the domain at that step. Shampoo's, SOAP's and Muon's
  state is saved shard by shard (distributed, they keep different blocks on every rank). The
  run directory keeps the unit's log up to its checkpoint, so nothing is replayed.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate.state import AcceleratorState
from transformers import Trainer, TrainerCallback, TrainingArguments

from basinlab import ranks
from basinlab.atomic import atomic_write, atomic_write_json
from basinlab.data.mlm import DomainSequences
from basinlab.errors import UserError
from basinlab.eval.callbacks import INITIAL, DomainEvaluationCallback
from basinlab.eval.results import TextUnitResult
from basinlab.launch.config import ArmConfig
from basinlab.launch.text_config import TextRunConfig
from basinlab.launch.driver import UnitLog
from basinlab.launch.hf_checkpoints import ShardedOptimizerCheckpoints
from basinlab.launch.text_loader import DomainData
from basinlab.launch.rundir import PROGRESS, RunDirectory
from basinlab.models import build_bert_mlm
from basinlab.optim.checkpoint import load_optimizer_state, save_optimizer_state, state_shards, unwrap_optimizer
from basinlab.optim.registry import group_options, model_param_groups, optimizer_factory

logger = logging.getLogger(__name__)


class DomainTrainer(ShardedOptimizerCheckpoints, Trainer):
    """A Trainer that trains with the optimizer carried over from the previous domain, if any, on
    the domain's own loader (``DomainData``: this rank's sequences from a resumable position).

    ``restore_optimizer`` (resume) loads a checkpoint into the optimizer it builds; its own
    mid-domain checkpoints keep every rank's optimizer shard (ShardedOptimizerCheckpoints).
    """

    def __init__(self, *args: Any, data: DomainData, carried_optimizer=None, restore_optimizer: Callable | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.data = data
        self.carried_optimizer = carried_optimizer
        self.restore_optimizer = restore_optimizer

    def get_train_dataloader(self):
        return self.data.loader()

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.carried_optimizer is not None:
            self.optimizer = self.carried_optimizer
        built = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if built and self.restore_optimizer is not None:
            self.restore_optimizer(optimizer)
        return optimizer


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """The largest step count in the optimizer's state: shows whether state was carried or reset."""
    steps = [state["step"] for state in optimizer.state.values() if "step" in state]
    return int(max(float(s) for s in steps)) if steps else 0


class TrainingLog(TrainerCallback):
    """Training loss, learning rate and tokens/s of every logging step, under a step count that
    runs on across domains; checks that a carried optimizer still owns the model's parameters."""

    def __init__(self, unit: "TextUnit", index: int, step_offset: int, check_carried: bool, data: DomainData):
        self.unit = unit
        self.index = index
        self.data = data
        self.domain = unit.domains[index].name
        self.step_offset = step_offset
        self.check_carried = check_carried
        self.started: float | None = None
        self.last_step_end: float | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.check_carried and optimizer is not None and model is not None:
            owned = {id(p) for group in unwrap_optimizer(optimizer).param_groups for p in group["params"]}
            if not owned <= {id(p) for p in model.parameters()}:
                raise UserError(
                    "the optimizer carried over from the previous domain no longer holds the model's parameters "
                    "(a DeepSpeed fp16/bf16 or ZeRO wrapper copied them), so its state would be lost; use ZeRO stage 0 "
                    "without fp16/bf16 or set train.reset_optimizer_per_domain: true"
                )
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.last_step_end = time.perf_counter()

    def tokens_per_second(self, steps: int, tokens_per_step: int) -> float | None:
        if self.started is None or self.last_step_end is None or self.last_step_end <= self.started:
            return None
        return steps * tokens_per_step / (self.last_step_end - self.started)

    def on_save(self, args, state, control, **kwargs):
        """The Trainer has saved a mid-domain checkpoint: add what resuming from it needs (not at the
        domain's last step, where the domain's own checkpoint follows)."""
        if state.global_step >= self.unit.config.train.steps_per_domain:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.unit.save_progress(folder, self.index, state.global_step, self.data.save(folder, state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            step = self.step_offset + state.global_step
            self.unit.train_loss.append([step, logs["loss"]])
            self.unit.log(
                "train",
                domain=self.domain,
                step=step,
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
            )


class TextUnit:
    """Trains one model with one arm's optimizer through the domain sequence of one seed."""

    def __init__(
        self,
        config: TextRunConfig,
        arm: ArmConfig,
        log: UnitLog,
        domains: list[DomainSequences],
        tokenizer: Any,
        run: RunDirectory,
        process_kwargs: dict[str, Any],
    ):
        self.config = config
        self.arm = arm
        self.log_writer = log
        self.seed = log.fields["seed"]
        self.unit = log.unit
        self.domains = domains
        self.tokenizer = tokenizer
        self.run = run
        self.process_kwargs = process_kwargs
        self.checkpoints = run.checkpoint_dir(self.unit)
        self.train_loss: list[list[float]] = []  # [step, loss] of every logging step
        self.domain_stats: list[dict[str, Any]] = []
        self.model = build_bert_mlm(
            config.model.preset,
            len(tokenizer),
            config.data.max_length,
            seed=self.seed,
            pad_token_id=tokenizer.pad_token_id,
            **config.model.config_overrides,
        )
        self.callback = DomainEvaluationCallback(
            {d.name: d.eval for d in domains},
            {d.name: d.probe for d in domains},
            tokenizer,
            mlm_probability=config.train.mlm_probability,
            batch_size=config.train.eval_batch_size,
            every_n_steps=config.train.eval_every_n_steps,
            seed=self.seed,
            sink=log.record,
        )

    # ------------------------------------------------------------------ logging

    def log(self, event: str, **values: Any) -> None:
        """One metrics.jsonl line and its TensorBoard scalars."""
        self.log_writer.write(event, **values)
        if "step" in values:
            scalars = {f"{event}/{k}": v for k, v in values.items() if isinstance(v, (int, float)) and k != "step"}
            self.log_writer.scalars(scalars, values["step"])

    def _log_evaluation(self, record: dict[str, Any], step: int) -> None:
        self.log_writer.scalars({f"eval_loss/{name}": loss for name, loss in record["loss"].items()}, step)

    # ------------------------------------------------------------------ training

    def _options(self) -> tuple[type, dict[str, Any], float]:
        """(optimizer class, kwargs, weight decay): HF's Trainer applies the weight decay per
        parameter group (not to biases and LayerNorm), overriding a kwarg, so it goes there. An
        optimizer that forms its own groups from the model (Muon) gets them as the kwargs' "params",
        which the Trainer uses instead of its own, with the same weight-decay convention."""
        name = self.arm.name
        options = dict(self.arm.options)
        weight_decay = float(options.pop("weight_decay", 0.0))
        grouping = {k: options.pop(k) for k in group_options(name) if k in options}
        groups = model_param_groups(name, self.model, weight_decay=weight_decay, **grouping)
        if groups is not None:
            options["params"] = groups
        return optimizer_factory(name), options, weight_decay

    def training_arguments(self, index: int) -> TrainingArguments:
        """TrainingArguments of domain ``index`` (its seed, this unit's optimizer weight decay)."""
        train = self.config.train
        weight_decay = self._options()[2]
        domain_seed = self.seed * 1000 + index  # data order, masking and dropout of this domain
        return TrainingArguments(
            output_dir=str(self.checkpoints / f"domain-{index:03d}"),  # mid-domain saves: checkpoint-<step>/
            max_steps=train.steps_per_domain,
            per_device_train_batch_size=train.batch_size,
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            learning_rate=float(self.arm.options.get("lr", 1e-3)),  # shown in logs; the optimizer owns it
            weight_decay=weight_decay,
            lr_scheduler_type=train.lr_scheduler,
            warmup_steps=train.warmup_steps,
            max_grad_norm=train.max_grad_norm,
            bf16=train.bf16,
            logging_steps=train.logging_steps,
            save_strategy="steps" if train.save_steps else "no",
            save_steps=train.save_steps or 500,
            save_total_limit=1,
            eval_strategy="no",
            report_to=[],
            seed=domain_seed,
            data_seed=domain_seed,
            use_cpu=not torch.cuda.is_available(),
            average_tokens_across_devices=False,  # else the logged loss is multiplied by the world size under DDP
            ignore_data_skip=True,  # the domain's loader starts at the checkpoint's position itself
            dataloader_num_workers=train.dataloader_num_workers,
            disable_tqdm=not ranks.is_main_process(),
            deepspeed=train.deepspeed,
            **self.process_kwargs,
        )

    def domain_trainer(
        self, index: int, carried=None, restore: Callable | None = None, position: dict | None = None, first_step: int = 0
    ) -> tuple[DomainTrainer, TrainingLog]:
        """The Trainer of domain ``index`` (its data from ``position``, reached after ``first_step`` optimizer
        steps) with this unit's callbacks, and its TrainingLog."""
        optimizer_cls, kwargs, _ = self._options()
        data = DomainData(self.domains[index], self.config, self.seed * 1000 + index, self.tokenizer, position, first_step)
        log = TrainingLog(self, index, index * self.config.train.steps_per_domain, carried is not None, data)
        if self.config.train.deepspeed:
            # Accelerate refuses a DeepSpeed plugin for a second Accelerator in one process, but every
            # domain's Trainer builds one: drop the accelerator state (the process group stays).
            AcceleratorState._reset_state()
        trainer = DomainTrainer(
            model=self.model,
            args=self.training_arguments(index),
            train_dataset=data.stream if data.stream is not None else self.domains[index].train,
            data_collator=data.collator(),
            data=data,
            optimizer_cls_and_kwargs=(optimizer_cls, kwargs),
            callbacks=[log, self.callback],
            carried_optimizer=carried,
            restore_optimizer=restore,
        )
        return trainer, log

    def tokens_per_step(self, args: TrainingArguments) -> int:
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * self.config.data.max_length

    def train(self) -> TextUnitResult:
        started = time.perf_counter()
        first, restore, midway, resumed_step, position = self._resume()
        if first == 0 and midway is None:
            self._log_evaluation(self.callback.evaluate(self.model, INITIAL, step=0), 0)
        carried, optimizer = None, None
        steps = self.config.train.steps_per_domain
        for index in range(first, len(self.domains)):
            domain = self.domains[index]
            resuming = midway is not None and index == first
            trainer, log = self.domain_trainer(index, carried, restore, position if resuming else None,
                                               resumed_step if resuming else 0)
            logger.info("%s: domain %d/%d %s (%s train sequences)", self.unit, index + 1, len(self.domains), domain.name,
                        "streamed" if domain.train_sequences is None else domain.train_sequences)
            self.callback.start_domain(domain.name)
            trainer.train(resume_from_checkpoint=str(midway) if resuming else None)
            record = self.callback.records[-1]
            self._log_evaluation(record, (index + 1) * steps)
            optimizer = unwrap_optimizer(trainer.optimizer)
            self.domain_stats.append(
                {
                    "domain": domain.name,
                    "tokens_per_second": log.tokens_per_second(steps, self.tokens_per_step(trainer.args)),
                    "optimizer_steps": optimizer_steps(optimizer),
                }
            )
            self.log("domain_end", step=(index + 1) * steps, **self.domain_stats[-1])
            carried = None if self.config.train.reset_optimizer_per_domain else optimizer
            restore = None
            self._save_checkpoint(index, optimizer)
            del trainer
            gc.collect()
        self.optimizer_state_shards = state_shards(optimizer) if optimizer is not None else 1
        return self._result(time.perf_counter() - started)

    # ------------------------------------------------------------------ checkpoints

    def save_progress(self, folder: Path, index: int, step: int, data: dict | None = None) -> None:
        """Mark ``folder`` a complete checkpoint at ``step`` of domain ``index`` (every rank calls this,
        after writing its part): the evaluation records, the training curve, how many metrics lines
        the unit has written and, inside a domain, its data position; progress.json last."""
        ranks.barrier()
        if ranks.is_main_process():
            _save_torch(folder / "callback.pt", self.callback.state_dict())
            complete = step >= self.config.train.steps_per_domain
            atomic_write_json(
                folder / PROGRESS,
                {
                    "position": [index, step],
                    "data": data,
                    "completed_domains": index + 1 if complete else index,
                    "metrics_lines": self.log_writer.lines,
                    "domain_stats": self.domain_stats,
                    "train_loss": self.train_loss,
                },
            )
        ranks.barrier()

    def _save_checkpoint(self, index: int, optimizer: torch.optim.Optimizer) -> None:
        """Every rank writes its optimizer shard (Shampoo, SOAP, Muon) before the main process marks the
        checkpoint complete; older checkpoints (and this domain's mid-domain ones) go only after that."""
        folder = self.checkpoints / f"domain-{index:03d}"
        save_optimizer_state(optimizer, folder, ranks.is_main_process())
        if ranks.is_main_process():
            _save_torch(folder / "model.pt", self.model.state_dict())
        self.save_progress(folder, index, self.config.train.steps_per_domain)
        if ranks.is_main_process():
            for old in [*self.checkpoints.glob("domain-*"), *folder.glob("checkpoint-*")]:
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        ranks.barrier()

    def _resume(self) -> tuple[int, Callable | None, Path | None, int, dict | None]:
        """(first domain to train, optimizer loader or None, the Trainer checkpoint to resume that domain
        from or None, its step and its data position) from the latest complete checkpoint."""
        folder = self.run.latest_checkpoint(self.unit)
        if folder is None:
            return 0, None, None, 0, None
        progress = json.loads((folder / PROGRESS).read_text())
        self.callback.load_state_dict(torch.load(folder / "callback.pt", map_location="cpu", weights_only=True))
        self.domain_stats = progress["domain_stats"]
        self.train_loss = progress["train_loss"]
        first = progress["completed_domains"]
        index, step = progress["position"]
        if first == index:  # inside a domain: the Trainer resumes it (model, optimizer, data position, RNG)
            logger.info("%s: resuming domain %d (%s) at step %d from %s", self.unit, index + 1, self.domains[index].name, step, folder)
            return index, None, folder, step, DomainData.load_position(folder, progress.get("data"))
        self.model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        logger.info("%s: resuming after domain %d (%s) from %s", self.unit, first, self.domains[first - 1].name, folder)
        if self.config.train.reset_optimizer_per_domain:
            return first, None, None, 0, None
        return first, lambda optimizer: load_optimizer_state(optimizer, folder), None, 0, None

    # ------------------------------------------------------------------ result

    def _result(self, wall_time: float) -> TextUnitResult:
        summary = self.callback.summary()
        rows = [r for r in self.callback.records if r["kind"] == "after_domain"]
        return TextUnitResult(
            unit=self.unit,
            arm=self.arm.label,
            optimizer_name=self.arm.name,
            seed=self.seed,
            world_size=ranks.world_size(),
            optimizer_state_shards=self.optimizer_state_shards,
            wall_time_s=wall_time,
            **summary,
            domain_sizes={d.name: {"train": d.train_sequences, "eval": len(d.eval), "probe": len(d.probe)} for d in self.domains},
            representation_rows=[r["layers"] for r in rows],
            train_loss=self.train_loss,
            tokens_per_second=[s["tokens_per_second"] for s in self.domain_stats],
        )


def _save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))
