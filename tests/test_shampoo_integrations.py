"""Shampoo inside the training stacks we claim to support, all real and tiny: the MNIST
recipe driven by a config, a plain loop under Accelerate, and the HF Trainer on a BERT MLM."""

import json

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from tqdm import tqdm
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from basinlab.data.streams import TaskStream, build_tasks
from basinlab.launch.config import load_config
from basinlab.launch.driver import UnitLog, run_experiment
from basinlab.launch.mnist_trainer import ArmTrainer, Member
from basinlab.optim import Shampoo, build_optimizer


def underlying(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer inside Accelerate's AcceleratedOptimizer wrapper (or the optimizer itself)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def roots_due(steps: int, frequency: int, start: int) -> int:
    """How many root computations Shampoo makes in ``steps`` steps (at start, start + f, ...)."""
    return len(range(start, steps + 1, frequency))


def is_matrix(param: torch.Tensor) -> bool:
    """Shampoo gives Kronecker factors to matrices; vectors take the grafting (Adam) update by default."""
    return sum(d > 1 for d in param.shape) >= 2


def test_mnist_recipe_trains_with_shampoo_from_a_config(tiny_config, tmp_path):
    config = load_config(
        tiny_config(arms=[{"name": "shampoo", "lr": 0.001, "precondition_frequency": 5}])
    )
    assert config.arms[0].name == "shampoo"
    run = run_experiment(config, tmp_path / "out")

    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and [u["unit"] for u in summary["units"]] == ["shampoo__seed0"]
    unit = summary["units"][0]
    assert unit["optimizer_name"] == "shampoo" and summary["arms"]["shampoo"] == {
        "name": "shampoo", "lr": 0.001, "precondition_frequency": 5
    }
    R = unit["accuracy_matrix"]
    assert len(R) == 2 and all(len(row) == 2 for row in R)
    assert R[0][0] > 0.7, R  # task 1 right after training it; chance is 0.1
    assert unit["steps"] == 2 * (2000 // 64)  # one epoch per task: 2000 images, full batches of 64
    # Non-finite weights would show up in every downstream number: accuracies, and the
    # representation metrics computed from the hidden activations of the trained model.
    # (The cross-class cosine is left out: it is NaN by definition for a class whose mean is 0.)
    values = [*sum(R, []), unit["acc"], unit["bwt"], *unit["effective_rank"], *unit["final_covariance_spectrum"]]
    assert all(torch.isfinite(torch.tensor(values)))


def test_mnist_recipe_shampoo_parameters_stay_finite_and_get_preconditioned(tiny_config, mnist_arrays):
    """The recipe's own per-unit trainer, so the trained weights and optimizer are in reach."""
    config = load_config(tiny_config(arms=[{"name": "shampoo", "lr": 0.001, "precondition_frequency": 5}]))
    tasks = build_tasks("permuted", mnist_arrays, 2, seed=0, validation_size=1000, probe_size=200, max_train_examples=2000)
    member = Member(0, TaskStream(mnist_arrays, tasks), UnitLog(None, config.arms[0], 0, {}, "none"))
    trainer = ArmTrainer(Accelerator(cpu=True), config, config.arms[0], [member], tqdm(disable=True))
    (result,) = trainer.train()
    optimizer = underlying(trainer.optimizer)
    assert isinstance(optimizer, Shampoo)
    assert all(torch.isfinite(p).all() for p in trainer.net(0).parameters())
    diagnostics = optimizer.diagnostics()
    assert diagnostics["skipped_steps"] == 0 and diagnostics["root_failures"] == 0
    assert diagnostics["preconditioned_params"] == 2  # the two weight matrices
    for param in trainer.net(0).parameters():
        progress = optimizer.parameter_progress(param)
        assert progress["steps"] == result.steps
        assert progress["root_computations"] == (roots_due(result.steps, 5, 5) if is_matrix(param) else 0)


def test_shampoo_under_accelerate_in_one_process():
    accelerator = Accelerator(cpu=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=generator)
    y = x @ torch.randn(8, 2, generator=generator) * 0.5
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
    optimizer = build_optimizer("shampoo", model.parameters(), lr=0.02, precondition_frequency=2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    losses = []
    for _ in range(5):  # epochs
        for xb, yb in loader:
            loss = F.mse_loss(model(xb), yb)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            losses.append(loss.item())
    steps = len(losses)
    assert steps == 20
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.25 * sum(losses[:4]) / 4, losses
    shampoo = underlying(optimizer)
    assert isinstance(shampoo, Shampoo)
    assert shampoo.diagnostics() == {"skipped_steps": 0, "root_failures": 0, "preconditioned_params": 2}
    for param in model.parameters():
        progress = shampoo.parameter_progress(param)
        assert progress["steps"] == steps
        assert progress["root_computations"] == (roots_due(steps, 2, 2) if is_matrix(param) else 0)


def tiny_tokenizer(directory) -> BertTokenizerFast:
    """A real WordPiece tokenizer over a written vocab: 5 special tokens + 195 words."""
    words = [f"w{i}" for i in range(195)]
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # BertTokenizer(vocab_file=...) is silently ignored in transformers 5; this reads vocab.txt.
    return BertTokenizerFast.from_pretrained(str(directory))


def test_hf_trainer_trains_a_tiny_bert_mlm_with_shampoo(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    assert len(tokenizer) == 200 and tokenizer.convert_tokens_to_ids("w0") == 5
    # Random token ids from a 32-word subset of the vocab (learnable: the unigram prior).
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 5 + 32, (64, 16), generator=generator)
    dataset = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    max_steps, frequency = 24, 4
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=16,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
        optimizer_cls_and_kwargs=(Shampoo, {"lr": 1e-2, "precondition_frequency": frequency}),
    )
    output = trainer.train()

    shampoo = underlying(trainer.optimizer)
    assert isinstance(shampoo, Shampoo)
    assert trainer.state.global_step == max_steps
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == max_steps and all(torch.isfinite(torch.tensor(losses))) and torch.isfinite(
        torch.tensor(output.training_loss)
    )
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses  # from ~ln(200) = 5.3 toward ln(32) = 3.5
    # Every parameter took every step, and every matrix's preconditioner was recomputed on schedule.
    params = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in params if is_matrix(p)]
    assert len(matrices) >= 10  # embeddings, attention, FFN, MLM-head transform
    diagnostics = shampoo.diagnostics()
    assert diagnostics == {"skipped_steps": 0, "root_failures": 0, "preconditioned_params": len(matrices)}
    for param in params:
        progress = shampoo.parameter_progress(param)
        assert progress["steps"] == max_steps
        assert progress["root_computations"] == (roots_due(max_steps, frequency, frequency) if is_matrix(param) else 0)
    # The Trainer's two parameter groups (decay / no decay) both reached Shampoo.
    assert len(shampoo.param_groups) == 2
    assert sum(len(g["params"]) for g in shampoo.param_groups) == len(params)
