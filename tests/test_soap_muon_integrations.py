"""SOAP and Muon inside the training stacks we claim to support, all real and tiny: the MNIST
recipe from a config (two seeds in one stack), Accelerate, and the HF Trainer on a BERT MLM
(Muon's param groups through the Trainer's ``params`` kwarg)."""

import json

import datasets
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from test_shampoo_integrations import tiny_tokenizer, underlying
from torch import nn
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from basinlab.launch.config import load_config
from basinlab.launch.driver import run_experiment
from basinlab.optim import SOAP, Muon, build_optimizer, muon_param_groups


def test_mnist_recipe_trains_soap_and_muon_arms_from_a_config(tiny_config, tmp_path):
    config = load_config(tiny_config(seeds=[0, 1], arms=[
        {"name": "soap", "lr": 0.003, "precondition_frequency": 5},
        {"name": "muon", "lr": 0.003, "adamw_rule": "default"},
    ]))
    run = run_experiment(config, tmp_path / "out")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and len(summary["units"]) == 4
    for unit in summary["units"]:
        R = unit["accuracy_matrix"]
        assert R[0][0] > 0.7, (unit["unit"], R)  # chance is 0.1
        values = [*sum(R, []), unit["acc"], unit["bwt"], *unit["effective_rank"]]
        assert all(torch.isfinite(torch.tensor(values)))
    assert summary["arms"]["muon"] == {"name": "muon", "lr": 0.003, "adamw_rule": "default"}
    report = (run / "report.md").read_text()
    assert "soap" in report and "muon" in report


@pytest.mark.parametrize("name", ["soap", "muon"])
def test_soap_and_muon_under_accelerate_in_one_process(name):
    accelerator = Accelerator(cpu=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=generator)
    y = x @ torch.randn(8, 2, generator=generator) * 0.5
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    optimizer = build_optimizer(name, model, lr=0.02, **({"precondition_frequency": 2} if name == "soap" else {}))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses = []
    for _ in range(5):
        for xb, yb in loader:
            loss = F.mse_loss(model(xb), yb)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.25 * sum(losses[:4]) / 4, losses
    inner = underlying(optimizer)
    if name == "muon":  # the two hidden matrices take Muon; the head (last Linear) and the biases AdamW
        assert inner.diagnostics() == {"skipped_steps": 0, "muon_params": 2, "adamw_params": 4}
    else:
        assert inner.diagnostics() == {"skipped_steps": 0, "basis_failures": 0, "rotated_params": 3}


def _trainer(tmp_path, optimizer_cls_and_kwargs, max_steps=24):
    tokenizer = tiny_tokenizer(tmp_path)
    ids = torch.randint(5, 5 + 32, (64, 16), generator=torch.Generator().manual_seed(0))
    dataset = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
    model = BertForMaskedLM(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id,
    ))
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=max_steps, per_device_train_batch_size=16,
        lr_scheduler_type="constant", logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, seed=0, weight_decay=0.01,
    )
    kwargs = optimizer_cls_and_kwargs(model)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, optimizer_cls_and_kwargs=kwargs,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == max_steps and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses  # from ~ln(200) = 5.3 toward ln(32) = 3.5
    return model, underlying(trainer.optimizer)


def test_hf_trainer_trains_a_tiny_bert_mlm_with_soap(tmp_path):
    model, soap = _trainer(tmp_path, lambda model: (SOAP, {"lr": 1e-2, "precondition_frequency": 4}))
    assert isinstance(soap, SOAP)
    assert len(soap.param_groups) == 2 and [g["weight_decay"] for g in soap.param_groups] == [0.01, 0.0]
    assert soap.diagnostics()["skipped_steps"] == 0 and soap.diagnostics()["basis_failures"] == 0


def test_hf_trainer_takes_muons_param_groups_through_the_params_kwarg(tmp_path):
    model, muon = _trainer(
        tmp_path, lambda model: (Muon, {"params": muon_param_groups(model, weight_decay=0.01), "lr": 1e-2})
    )
    assert isinstance(muon, Muon)
    groups = [(g["use_muon"], g["weight_decay"], len(g["params"])) for g in muon.param_groups]
    hidden = 2 * 6 + 1  # per layer q, k, v, attention output, intermediate, output; the MLM transform
    assert groups[0] == (True, 0.01, hidden) and [g[:2] for g in groups[1:]] == [(False, 0.01), (False, 0.0)]
    assert sum(g[2] for g in groups) == len(list(model.parameters()))


def test_text_recipe_trains_soap_and_muon_arms_from_a_config(tmp_path):
    """Muon's groups reach the HF Trainer from a run config (Muon refuses bare parameters); both
    optimizers' state goes through the recipe's sharded domain checkpoints."""
    from text_fixtures import tiny_text_config

    from basinlab.launch.config import config_from_dict

    optimizers = [
        {"name": "soap", "lr": 3e-3, "precondition_frequency": 2, "weight_decay": 0.01},
        {"name": "muon", "lr": 3e-3, "weight_decay": 0.01, "adamw_rule": "default"},
    ]
    config = config_from_dict(tiny_text_config(tmp_path, arms=optimizers, train={"steps_per_domain": 3}))
    run_dir = run_experiment(config, tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and [u["arm"] for u in summary["units"]] == ["soap", "muon"]
    for unit in summary["units"]:
        matrix = torch.tensor(unit["loss_matrix"])
        assert torch.isfinite(matrix).all() and (matrix.diagonal() < torch.tensor(unit["initial_losses"])).all()
