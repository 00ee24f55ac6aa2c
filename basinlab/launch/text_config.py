"""The text recipe's config (``recipe: text``): its domains and tokenizer, BERT and HF Trainer
sections, checked when the config loads (domain files included)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from basinlab.data.cache import check_cache_dir
from basinlab.data.corpus_spec import check_domain_spec, domain_name
from basinlab.data.text_sources import TEXT_DOMAINS
from basinlab.data.tokenizer import check_tokenizer_dir
from basinlab.errors import UserError
from basinlab.launch.config import ExperimentConfig
from basinlab.launch.config_checks import check_like_default, keyed, require
from basinlab.models.bert import BERT_PRESETS


@dataclass
class TextDataConfig:
    """Text domains trained in order, the tokenizer, and how much of each domain is used."""

    domains: list[Any] = field(default_factory=lambda: list(TEXT_DOMAINS))  # built-in names or spec mappings
    max_length: int = 128  # tokens per packed training/evaluation sequence
    vocab_size: int = 8192  # WordPiece vocabulary trained on the union of the train splits
    tokenizer: Optional[str] = None  # a local pretrained tokenizer directory instead
    max_train_sequences: Optional[int] = None  # cap per domain, for quick runs
    eval_sequences: int = 256  # validation sequences per domain for the loss matrix
    probe_sequences: int = 64  # of those, the fixed probe set for representation metrics
    cache_dir: Optional[str] = None  # default: $BASINLAB_CACHE or ~/.cache/basinlab
    num_proc: Optional[int] = None  # processes that clean and tokenize a cached domain (default: CPUs, at most 8)

    def check(self) -> None:
        require(len(self.domains) >= 1, "data.domains", "must list at least one domain")
        names = [keyed(f"data.domains[{i}]", check_domain_spec, entry) for i, entry in enumerate(self.domains)]
        require(len(set(names)) == len(names), "data.domains", f"names must be unique, got {names}")
        require(self.max_length >= 8, "data.max_length", "must be >= 8")
        require(self.vocab_size >= 1000, "data.vocab_size", "must be >= 1000")
        if self.max_train_sequences is not None:
            require(self.max_train_sequences >= 1, "data.max_train_sequences", "must be >= 1 or null")
        require(self.eval_sequences >= 2, "data.eval_sequences", "must be >= 2")
        require(
            2 <= self.probe_sequences <= self.eval_sequences,
            "data.probe_sequences",
            "must be >= 2 and at most data.eval_sequences (the probes are the first evaluation sequences)",
        )
        if self.tokenizer is not None:
            keyed("data.tokenizer", check_tokenizer_dir, self.tokenizer)
        if self.cache_dir is not None:
            keyed("data.cache_dir", check_cache_dir, self.cache_dir)
        if self.num_proc is not None:
            require(self.num_proc >= 1, "data.num_proc", "must be >= 1 or null")

    def streamed(self) -> list[str]:
        return [entry["name"] for entry in self.domains if isinstance(entry, dict) and entry.get("streaming")]

    def domain_names(self) -> list[str]:
        return [domain_name(entry) for entry in self.domains]


@dataclass
class TextModelConfig:
    preset: str = "tiny"  # tiny | mini | small | base (basinlab.models.BERT_PRESETS)
    config_overrides: dict[str, Any] = field(default_factory=dict)  # further BertConfig fields

    def check(self) -> None:
        from transformers import BertConfig, PretrainedConfig

        require(self.preset in BERT_PRESETS, "model.preset", f"must be one of {', '.join(BERT_PRESETS)}")
        defaults, common = BertConfig().to_dict(), PretrainedConfig().to_dict()
        bert_fields = [k for k in defaults if k not in common and k not in _SET_BY_RECIPE]  # what a message lists
        for name, value in self.config_overrides.items():
            key = f"model.config_overrides.{name}"
            require(name not in _SET_BY_RECIPE, key, f"is set by the recipe (from {_SET_BY_RECIPE.get(name)}); drop it")
            require(name in defaults, key, f"is not a BertConfig field; valid ones include {', '.join(bert_fields)}")
            check_like_default(value, defaults[name], key, integer=isinstance(defaults[name], int))
        self._check_sizes()

    def _check_sizes(self) -> None:
        """The preset's sizes with the overrides applied must build: positive, heads dividing the width."""
        overridden = {k: v for k, v in self.config_overrides.items() if k in _PRESET_FIELDS}
        sizes = {**dict(zip(_PRESET_FIELDS, BERT_PRESETS[self.preset])), **overridden}
        for name, size in sizes.items():
            require(size >= 1, f"model.config_overrides.{name}", f"must be >= 1, got {size}")
        require(
            sizes["hidden_size"] % sizes["num_attention_heads"] == 0,
            "model.config_overrides",
            f"give a hidden_size ({sizes['hidden_size']}) that is a multiple of num_attention_heads ({sizes['num_attention_heads']})",
        )


@dataclass
class TextTrainConfig:
    """One HF Trainer per domain; these map onto its TrainingArguments."""

    steps_per_domain: int = 200  # optimizer steps per domain
    batch_size: int = 32  # per device
    gradient_accumulation_steps: int = 1
    mlm_probability: float = 0.15
    lr_scheduler: str = "constant_with_warmup"  # any transformers SchedulerType, restarted per domain
    warmup_steps: int = 0  # per domain
    max_grad_norm: float = 1.0  # 0 disables clipping
    bf16: bool = False  # autocast (fp32 master weights); needs a GPU
    eval_batch_size: int = 64
    eval_every_n_steps: Optional[int] = None  # extra evaluations inside each domain
    logging_steps: int = 10
    save_steps: Optional[int] = None  # also checkpoint every this many steps inside a domain (resume mid-domain)
    reset_optimizer_per_domain: bool = False  # default carries optimizer state across domains
    deepspeed: Optional[str] = None  # DeepSpeed JSON config (ZeRO stage 0), passed to TrainingArguments
    dataloader_num_workers: int = 0

    def check(self) -> None:
        from transformers import SchedulerType

        for name in ("steps_per_domain", "batch_size", "gradient_accumulation_steps", "eval_batch_size", "logging_steps"):
            require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        require(0 < self.mlm_probability < 1, "train.mlm_probability", "must lie in (0, 1)")
        schedulers = [s.value for s in SchedulerType]
        require(self.lr_scheduler in schedulers, "train.lr_scheduler", f"must be one of {', '.join(schedulers)}")
        require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        require(self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 disables clipping)")
        if self.eval_every_n_steps is not None:
            require(self.eval_every_n_steps >= 1, "train.eval_every_n_steps", "must be >= 1 or null")
        if self.save_steps is not None:
            require(
                self.save_steps >= 1 and self.save_steps % self.logging_steps == 0,
                "train.save_steps",
                f"must be a positive multiple of train.logging_steps ({self.logging_steps}), so a domain resumed "
                "from a save logs the same averaged losses; or null",
            )
        require(self.dataloader_num_workers >= 0, "train.dataloader_num_workers", "must be >= 0")
        if self.deepspeed is not None:
            self._check_deepspeed()

    def _check_deepspeed(self) -> None:
        """Carrying optimizer state across domains needs the raw optimizer to own the model's
        parameters: ZeRO >= 1 and DeepSpeed's fp16/bf16 give it new copies at every engine."""
        path = Path(self.deepspeed)
        require(path.is_file(), "train.deepspeed", f"names {str(path)!r}, which is not a file (e.g. configs/deepspeed/zero0_fp32.json)")
        try:
            ds = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"config key 'train.deepspeed': {str(path)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
        if self.reset_optimizer_per_domain:
            return
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        mixed = [k for k in ("fp16", "bf16") if ds.get(k, {}).get("enabled") in (True, "auto")]
        require(
            stage == 0 and not mixed,
            "train.deepspeed",
            f"({path.name}: ZeRO stage {stage}{', ' + '/'.join(mixed) if mixed else ''}) would give the optimizer new "
            "parameter copies at every domain, losing its state; use ZeRO stage 0 without fp16/bf16 "
            "(configs/deepspeed/zero0_fp32.json; train.bf16 for autocast) or set train.reset_optimizer_per_domain: true",
        )


@dataclass
class TextRunConfig(ExperimentConfig):
    """The continual masked-LM recipe over text domains (basinlab.launch.text_recipe)."""

    recipe: str = "text"
    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: TextModelConfig = field(default_factory=TextModelConfig)
    train: TextTrainConfig = field(default_factory=TextTrainConfig)

    def check(self) -> None:
        super().check()
        self.data.check()
        self.model.check()
        self.train.check()
        streamed = self.data.streamed()
        require(
            not (streamed and self.train.dataloader_num_workers),
            "train.dataloader_num_workers",
            f"must be 0 with streamed domains ({', '.join(streamed)}): a stream is read, and its position kept, in the "
            "training process",
        )
        for optimizer in self.arms:
            require(
                not optimizer.model and not optimizer.l1_penalty and not optimizer.rank_penalty and optimizer.then is None,
                f"arms.{optimizer.label}",
                "sets model overrides, l1_penalty, rank_penalty or then/switch_after_steps, which only the mnist recipe supports",
            )


_PRESET_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")  # BERT_PRESETS order
_SET_BY_RECIPE = {"vocab_size": "the tokenizer", "max_position_embeddings": "data.max_length", "pad_token_id": "the tokenizer"}
