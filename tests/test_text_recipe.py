"""The text-domain recipe end to end on tiny local domains: real HF Trainer, real tokenizer training."""

import json

import pytest
import torch
from text_fixtures import DOMAINS, STEPS, tiny_text_config

from basinlab.errors import UserError
from basinlab.launch import text_recipe
from basinlab.launch.config import config_from_dict
from basinlab.launch.rundir import RunDirectory
from basinlab.eval.results import TextUnitResult
from basinlab.launch.driver import run_experiment, write_report
from basinlab.launch.text_unit import TextUnit, TrainingLog



def text_config(tmp_path, **sections):
    return config_from_dict(tiny_text_config(tmp_path, **sections))


def metrics_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


SAVES = {"save_steps": 2}  # the Trainer also checkpoints inside each domain (the mid-domain resume test needs it)


@pytest.fixture(scope="module")
def finished_text_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("text_run")
    return run_experiment(text_config(tmp_path, train=SAVES), tmp_path / "out"), tmp_path


def test_run_writes_loss_matrices_report_and_plots(finished_text_run):
    run_dir, _ = finished_text_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["recipe"] == "text" and summary["complete"]
    assert summary["domains"] == list(DOMAINS)
    for unit in summary["units"]:
        matrix = torch.tensor(unit["loss_matrix"])
        assert matrix.shape == (3, 3) and torch.isfinite(matrix).all()
        initial = torch.tensor(unit["initial_losses"])
        # training a domain lowers its loss below the initial one
        assert (matrix.diagonal() < initial - 0.1).all(), (matrix, initial)
        assert set(unit["continual"]) == {"final_loss", "bwt_loss", "fwt_loss", "forgetting_loss"}
        assert len(unit["final_representation"]) == 3  # embeddings + 2 layers of BERT-tiny
        assert unit["world_size"] == 1 and unit["tokens_per_second"][0] > 0
    # same seed -> same initial weights -> same initial losses for every optimizer
    assert summary["units"][0]["initial_losses"] == summary["units"][1]["initial_losses"]
    assert not (run_dir / "checkpoints").exists()  # removed once units finish
    report = (run_dir / "report.md").read_text()
    assert "BWT (loss)" in report and "| after \\ on | alpha | beta | gamma |" in report
    assert {p.name for p in (run_dir / "plots").iterdir()} == {
        "loss_matrix.png", "domain_losses.png", "per_layer_representation.png", "domain_cosine.png", "train_loss.png"
    }
    assert write_report(RunDirectory(run_dir)) == run_dir / "report.md"  # `basinlab report` rebuilds it


def test_metrics_and_carried_optimizer_state(finished_text_run):
    run_dir, _ = finished_text_run
    lines = metrics_lines(run_dir)
    shampoo = [line for line in lines if line["unit"] == "shampoo__seed0"]
    labels = [line["label"] for line in shampoo if line.get("kind") in ("initial", "after_domain")]
    assert labels == ["initial", *DOMAINS]
    train = [line for line in shampoo if line.get("event") == "train"]
    assert [line["step"] for line in train] == list(range(2, 3 * STEPS + 1, 2))  # steps run on across domains
    ends = [line for line in shampoo if line.get("event") == "domain_end"]
    assert [line["optimizer_steps"] for line in ends] == [STEPS, 2 * STEPS, 3 * STEPS]  # state carried


def test_reset_optimizer_per_domain(tmp_path):
    config = text_config(tmp_path, train={"reset_optimizer_per_domain": True, "steps_per_domain": 2, "logging_steps": 1},
                         arms=[{"name": "adamw", "lr": 1e-3}])
    run_dir = run_experiment(config, tmp_path / "out")
    ends = [line for line in metrics_lines(run_dir) if line.get("event") == "domain_end"]
    assert [line["optimizer_steps"] for line in ends] == [2, 2, 2]


def test_resume_after_interruption_matches_uninterrupted_run(finished_text_run, monkeypatch):
    reference_dir, tmp_path = finished_text_run
    save = TextUnit._save_checkpoint

    def crash_after_second_domain(self, index, optimizer):
        save(self, index, optimizer)
        if self.unit == "shampoo__seed0" and index == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(TextUnit, "_save_checkpoint", crash_after_second_domain)
    config = text_config(tmp_path, train=SAVES)
    output = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, output)
    assert (output / "checkpoints" / "shampoo__seed0" / "domain-001" / "progress.json").exists()
    monkeypatch.setattr(TextUnit, "_save_checkpoint", save)
    run_experiment(config, output, resume=True)

    reference = RunDirectory(reference_dir).read_units(TextUnitResult)
    resumed = RunDirectory(output).read_units(TextUnitResult)
    assert [u.unit for u in resumed] == [u.unit for u in reference]
    for a, b in zip(reference, resumed):
        assert (b.loss_matrix, b.train_loss, b.final_representation) == (a.loss_matrix, a.train_loss, a.final_representation)

    def comparable(lines):
        return [(l["unit"], l.get("event"), l.get("label"), l.get("step"), l.get("loss")) for l in lines]

    assert comparable(metrics_lines(output)) == comparable(metrics_lines(reference_dir))


def test_resume_mid_domain_matches_uninterrupted_run(finished_text_run, monkeypatch):
    """train.save_steps: the Trainer's own checkpoints inside a domain (model, every rank's optimizer
    shard, scheduler, data position, RNG) plus the unit's progress; a run cut after step 4 of the
    second domain resumes there."""
    reference_dir, tmp_path = finished_text_run
    config = text_config(tmp_path, train=SAVES)
    save = TrainingLog.on_save

    def crash_after_a_save(self, args, state, control, **kwargs):
        save(self, args, state, control, **kwargs)
        if self.unit.unit == "shampoo__seed0" and self.index == 1 and state.global_step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingLog, "on_save", crash_after_a_save)
    output = tmp_path / "interrupted_midway"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, output)
    assert (output / "checkpoints" / "shampoo__seed0" / "domain-001" / "checkpoint-4" / "progress.json").exists()
    monkeypatch.setattr(TrainingLog, "on_save", save)
    run_experiment(config, output, resume=True)
    assert not (output / "checkpoints").exists()

    reference = RunDirectory(reference_dir).read_units(TextUnitResult)
    resumed = RunDirectory(output).read_units(TextUnitResult)
    for a, b in zip(reference, resumed):
        assert (b.loss_matrix, b.train_loss, b.final_representation) == (a.loss_matrix, a.train_loss, a.final_representation)

    def comparable(lines):
        return [(l["unit"], l.get("event"), l.get("label"), l.get("step"), l.get("loss")) for l in lines]

    assert comparable(metrics_lines(output)) == comparable(metrics_lines(reference_dir))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"domains": ["news", "poetry"]}}, "'poetry' is not one of"),
        ({"data": {"probe_sequences": 16}}, "at most data.eval_sequences"),
        ({"train": {"lr_scheduler": "triangle"}}, "train.lr_scheduler"),
        ({"model": {"preset": "huge"}}, "model.preset"),
        ({"arms": [{"name": "sgd", "lr": 0.1, "l1_penalty": 1e-4}]}, "only the mnist recipe"),
    ],
)
def test_config_mistakes_name_the_key(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        text_config(tmp_path, **change)


def test_deepspeed_config_that_would_drop_optimizer_state_is_refused(tmp_path):
    ds = tmp_path / "zero2.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(UserError, match="ZeRO stage 2.*reset_optimizer_per_domain"):
        text_config(tmp_path, train={"deepspeed": str(ds)})
    text_config(tmp_path, train={"deepspeed": str(ds), "reset_optimizer_per_domain": True})  # fresh optimizer per domain: fine


def test_too_small_validation_split_is_a_clear_error(tmp_path):
    config = text_config(tmp_path, data={"max_length": 512, "probe_sequences": 4})
    with pytest.raises(UserError, match="validation split gives .* fewer than data.probe_sequences"):
        text_recipe.load_domains(config)


def _stream_config(tmp_path, streaming: bool, tokenizer=None):
    """The tiny config with every domain read in file order: streamed, or cached without shuffling or
    deduplication (so both give the same sequences in the same order at one process)."""
    raw = tiny_text_config(tmp_path, train=SAVES, arms=[{"name": "adamw", "lr": 3e-3}])
    raw["data"]["tokenizer"] = tokenizer
    for spec in raw["data"]["domains"]:
        spec.update({"streaming": True} if streaming else {"shuffle": False, "dedupe": False})
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("streamed")
    return run_experiment(_stream_config(tmp_path, True), tmp_path / "out"), tmp_path


def test_streamed_domains_give_the_cached_results(streamed_run):
    streamed_dir, tmp_path = streamed_run
    # the same tokenizer: WordPiece training breaks frequency ties in hash-map order, so two trainings
    # on the same text differ (a cached tokenizer is reused; a streamed domain's is trained on a sample)
    (tokenizer,) = (tmp_path / "cache" / "tokenizers").iterdir()
    cached_dir = run_experiment(_stream_config(tmp_path, False, str(tokenizer)), tmp_path / "cached")
    streamed, cached = (RunDirectory(d).read_units(TextUnitResult)[0] for d in (streamed_dir, cached_dir))
    assert (streamed.loss_matrix, streamed.train_loss, streamed.final_representation) == (
        cached.loss_matrix, cached.train_loss, cached.final_representation)
    assert [s["train"] for s in streamed.domain_sizes.values()] == [None] * len(DOMAINS)


def test_streamed_domain_resumes_mid_domain_from_its_state(streamed_run, monkeypatch):
    reference_dir, tmp_path = streamed_run
    save = TrainingLog.on_save

    def crash_after_a_save(self, args, state, control, **kwargs):
        save(self, args, state, control, **kwargs)
        if self.index == 1 and state.global_step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingLog, "on_save", crash_after_a_save)
    output = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_stream_config(tmp_path, True), output)
    checkpoint = output / "checkpoints" / "adamw__seed0" / "domain-001" / "checkpoint-4"
    state = json.loads((checkpoint / "stream-rank0.json").read_text())
    assert state["emitted"] == 4 * 8 and state["skip"] > 0  # 4 steps of 8 sequences: inside the first batch of documents
    monkeypatch.setattr(TrainingLog, "on_save", save)
    run_experiment(_stream_config(tmp_path, True), output, resume=True)
    reference, resumed = (RunDirectory(d).read_units(TextUnitResult)[0] for d in (reference_dir, output))
    assert (resumed.loss_matrix, resumed.train_loss) == (reference.loss_matrix, reference.train_loss)


def test_streamed_domains_refuse_loader_workers(tmp_path):
    raw = tiny_text_config(tmp_path, train={"dataloader_num_workers": 2})
    raw["data"]["domains"][0]["streaming"] = True
    with pytest.raises(UserError, match="dataloader_num_workers.*must be 0 with streamed domains \\(alpha\\)"):
        config_from_dict(raw)
