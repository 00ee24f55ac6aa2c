"""Worker: HF Trainer with TrainingArguments(deepspeed=configs/deepspeed/zero0_fp32.json) and our
Shampoo via optimizer_cls_and_kwargs, tiny BertForMaskedLM from a config, 2 CPU ranks.

    python -m torch.distributed.run --nproc_per_node 2 tests/workers/hf_trainer_deepspeed.py OUT_DIR
writes OUT_DIR/trainer_rank<r>.json per rank.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tiny model and vocab are built here; never download

import ds_common  # noqa: F401  (first: disables the shm comm JIT build)
import datasets
import torch
from accelerate import PartialState
from deepspeed import DeepSpeedEngine
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from basinlab.optim import Shampoo
from basinlab.ranks import exit_rank
from ds_common import ROOT, fingerprint, rank, step_recorder, write_json

MAX_STEPS, FREQUENCY = 6, 2


class RecordSteps(TrainerCallback):
    """Hooks the optimizer the Trainer really built (it only exists once training starts)."""

    def __init__(self):
        self.record, self.optimizer = None, None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = optimizer
        while hasattr(inner, "optimizer"):
            inner = inner.optimizer
        self.optimizer = inner
        self.record = step_recorder(inner)


def tiny_tokenizer(directory: Path) -> BertTokenizerFast:
    """A real WordPiece tokenizer over a written vocab: 5 special tokens + 195 words."""
    words = [f"w{i}" for i in range(195)]
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # BertTokenizer(vocab_file=...) is silently ignored in transformers 5; this reads vocab.txt.
    return BertTokenizerFast.from_pretrained(str(directory))


def configure_cpu_deepspeed_state() -> None:
    """HF's TrainingArguments builds Accelerate's PartialState for deepspeed= WITHOUT a backend
    (it ignores ddp_backend there); on a CPU-only machine that state then says 1 process and
    rank 0 on every rank (no data sharding, every rank "main"), although DeepSpeed itself runs
    2 ranks. Build the state ourselves, DeepSpeed-typed with gloo, and let HF reuse it
    (accelerator_config={"use_configured_state": True})."""
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")


def main(out: Path) -> None:
    configure_cpu_deepspeed_state()
    work = out / f"rank{rank()}"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(work)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 5 + 32, (128, 16), generator=generator)  # a learnable 32-word unigram prior
    dataset = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id,
    ))
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        deepspeed=str(ROOT / "configs/deepspeed/zero0_fp32.json"),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        # Under 2-process DDP the logged loss is doubled otherwise (docs/distributed.md, "DeepSpeed").
        average_tokens_across_devices=False,
        accelerator_config={"use_configured_state": True},
    )
    callback = RecordSteps()
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    batches = []

    def collator(examples):  # records which rows this rank trains on
        batches.append(sum(sum(e["input_ids"]) for e in examples))
        return collate(examples)

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        # `optimizers=(Shampoo(...), None)` would be dropped silently under deepspeed= (AdamW instead).
        optimizer_cls_and_kwargs=(Shampoo, {"lr": 1e-2, "precondition_frequency": FREQUENCY}),
        callbacks=[callback],
    )
    output = trainer.train()

    chain, inner = [type(trainer.optimizer).__name__], trainer.optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
        chain.append(type(inner).__name__)
    engine = trainer.model_wrapped
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    write_json(out / f"trainer_rank{rank()}.json", {
        "args_world_size": trainer.args.world_size,
        "dist_world_size": torch.distributed.get_world_size(),
        "accelerator_processes": trainer.accelerator.num_processes,
        "engine_world_size": engine.world_size,
        "parallel_mode": str(trainer.args.parallel_mode),
        "distributed_state": repr(trainer.args.distributed_state),
        "batch_id_sums": batches,
        "deepspeed_config": str(trainer.args.deepspeed),
        "engine_is_deepspeed": isinstance(engine, DeepSpeedEngine),
        "engine_basic_is_ours": isinstance(engine, DeepSpeedEngine) and engine.basic_optimizer is inner,
        "micro_batch": engine.train_micro_batch_size_per_gpu(),
        "gradient_clipping": engine.gradient_clipping(),
        "optimizer_chain": chain,
        "innermost_is_shampoo": isinstance(inner, Shampoo),
        "hooked_is_innermost": callback.optimizer is inner,
        "steps_taken": callback.record["steps"],
        "shapes_at_step": callback.record["shapes_at_step"],
        "param_shapes": [list(p.shape) for p in params],
        "num_groups": len(inner.param_groups),
        "global_step": trainer.state.global_step,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "training_loss": output.training_loss,
        "fingerprint": fingerprint(params),
        "diagnostics": inner.diagnostics(),
    })
    exit_rank(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
