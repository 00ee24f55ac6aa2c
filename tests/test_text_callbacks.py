"""DomainEvaluationCallback on a tiny BERT trained by a real HF Trainer, domain after domain,
and the seeded BERT builder."""

import json
import math

import datasets
import pytest
import torch
from transformers import BertTokenizerFast, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from basinlab.eval.callbacks import DomainEvaluationCallback
from basinlab.models import BERT_PRESETS, build_bert_mlm

SEQ = 16
EVERY = 10
STEPS = 30


def make_tokenizer(directory) -> BertTokenizerFast:
    """5 special tokens + 195 words w0..w194 (ids 5..199)."""
    words = [f"w{i}" for i in range(195)]
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return BertTokenizerFast.from_pretrained(str(directory))


def domain(tokenizer, first_word: int, n: int, seed: int) -> datasets.Dataset:
    """[CLS] + random words from a 32-word range + [SEP]: two domains with disjoint vocabularies."""
    generator = torch.Generator().manual_seed(seed)
    first_id = tokenizer.convert_tokens_to_ids(f"w{first_word}")
    body = torch.randint(first_id, first_id + 32, (n, SEQ - 2), generator=generator)
    ids = torch.cat(
        [torch.full((n, 1), tokenizer.cls_token_id), body, torch.full((n, 1), tokenizer.sep_token_id)], dim=1
    )
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


def tiny_bert(tokenizer, seed=0):
    return build_bert_mlm("tiny", len(tokenizer), max_length=32, seed=seed, pad_token_id=tokenizer.pad_token_id)


def make_callback(tokenizer, **kwargs):
    eval_sets = {"A": domain(tokenizer, 0, 32, seed=1), "B": domain(tokenizer, 100, 32, seed=2)}
    probe_sets = {"A": domain(tokenizer, 0, 16, seed=3), "B": domain(tokenizer, 100, 16, seed=4)}
    return DomainEvaluationCallback(eval_sets, probe_sets, tokenizer, batch_size=16, **kwargs)


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    """Initial evaluation, then one Trainer.train() per domain (A then B) with one callback."""
    tmp_path = tmp_path_factory.mktemp("text_callbacks")
    tokenizer = make_tokenizer(tmp_path)
    model = tiny_bert(tokenizer)
    callback = make_callback(tokenizer, every_n_steps=EVERY, output_dir=tmp_path / "metrics")
    callback.evaluate(model, "initial")
    train_sets = {"A": domain(tokenizer, 0, 128, seed=10), "B": domain(tokenizer, 100, 128, seed=11)}
    for name, train_set in train_sets.items():
        callback.start_domain(name)
        args = TrainingArguments(
            output_dir=str(tmp_path / f"trainer_{name}"),
            max_steps=STEPS,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            lr_scheduler_type="constant",
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
            logging_strategy="no",
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
            callbacks=[callback],
        )
        trainer.train()
    return callback, model, tmp_path


def test_loss_matrix_shows_learning_and_forgetting(sequential_run):
    callback, _, _ = sequential_run
    L = callback.loss_matrix()
    assert L.shape == (2, 2) and callback.domains == ["A", "B"]
    initial = callback.records[0]["loss"]
    assert initial["A"] > 4.5 and initial["B"] > 4.5  # near ln(200) = 5.3 at random init
    assert L[0, 0] < initial["A"] - 1.0  # training A lowers A's loss
    assert L[1, 1] < L[0, 1] - 1.0  # training B lowers B's loss
    assert L[1, 0] > L[0, 0] + 0.5  # and B, with a disjoint vocabulary, makes A's loss rise again

    summary = callback.summary()
    assert summary["rows"] == ["A", "B"] and summary["domains"] == ["A", "B"]
    assert summary["loss_matrix"] == L.tolist()
    continual = summary["continual"]
    assert continual["final_loss"] == pytest.approx(L[1].mean())
    assert continual["bwt_loss"] == pytest.approx(L[1, 0] - L[0, 0]) and continual["bwt_loss"] > 0
    assert continual["fwt_loss"] == pytest.approx(L[0, 1] - initial["B"])
    assert continual["forgetting_loss"] == pytest.approx(L[1, 0] - L[0, 0])
    assert summary["final_representation"] == callback.records[-1]["layers"]


def test_records_kinds_and_jsonl(sequential_run):
    callback, _, tmp_path = sequential_run
    kinds = [(r["kind"], r["label"]) for r in callback.records]
    steps = [("step", f"step {s}") for s in range(EVERY, STEPS + 1, EVERY)]
    assert kinds == [("initial", "initial"), *steps, ("after_domain", "A"), *steps, ("after_domain", "B")]
    assert callback.records[-1]["step"] == STEPS
    lines = (tmp_path / "metrics" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(callback.records)
    parsed = [json.loads(line) for line in lines]  # strict JSON: NaN written as null
    assert [p["label"] for p in parsed] == [r["label"] for r in callback.records]
    assert parsed[0]["layers"][0]["cka_to_after_domain"] == {"A": None, "B": None}
    json.dumps(callback.records)  # only plain Python types in memory


def test_per_layer_representation_metrics_and_cka(sequential_run):
    callback, model, _ = sequential_run
    num_layers = model.config.num_hidden_layers + 1  # embeddings + every block
    by_label = {r["label"]: r for r in callback.records}
    for record in callback.records:
        assert [layer["layer"] for layer in record["layers"]] == list(range(num_layers))
        for layer in record["layers"]:
            for name in ("A", "B"):
                assert 1.0 <= layer["effective_rank"][name] <= 15.0  # 16 probe sequences
            assert -1.0 <= layer["mean_cross_domain_cosine"] <= 1.0
            assert len(layer["domain_mean_cosine"]) == 2
    for layer in by_label["initial"]["layers"]:
        assert all(math.isnan(v) for v in layer["cka_to_after_domain"].values())
    for layer in by_label["A"]["layers"]:  # right after A: CKA(A) = 1, B not trained yet
        assert layer["cka_to_after_domain"]["A"] == pytest.approx(1.0)
        assert math.isnan(layer["cka_to_after_domain"]["B"])
    for layer in by_label["B"]["layers"]:
        assert layer["cka_to_after_domain"]["B"] == pytest.approx(1.0)
        assert 0.0 <= layer["cka_to_after_domain"]["A"] <= 1.0 + 1e-9
    # Training B changed A's deepest representation.
    assert by_label["B"]["layers"][-1]["cka_to_after_domain"]["A"] < 0.999


@pytest.mark.parametrize("training", [True, False])
def test_evaluation_is_deterministic_and_leaves_training_untouched(tmp_path, training):
    tokenizer = make_tokenizer(tmp_path)
    model = tiny_bert(tokenizer)
    model.train(training)
    callback = make_callback(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    first = callback.evaluate(model, "check")
    assert torch.equal(torch.get_rng_state(), rng)
    second = callback.evaluate(model, "check")
    assert model.training is training
    assert first["kind"] == "custom" and callback.loss_matrix().shape == (0, 2)
    assert first["loss"] == second["loss"]  # same positions masked both times
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # A second callback with the same seed masks the same tokens; another seed does not.
    assert make_callback(tokenizer).evaluate(model, "check")["loss"] == first["loss"]
    assert make_callback(tokenizer, seed=1).evaluate(model, "check")["loss"] != first["loss"]


def test_callback_input_errors(tmp_path):
    tokenizer = make_tokenizer(tmp_path)
    callback = make_callback(tokenizer)
    with pytest.raises(ValueError, match="unknown domain 'C'"):
        callback.start_domain("C")
    sets = {"A": domain(tokenizer, 0, 4, seed=0)}
    with pytest.raises(ValueError, match="same domains"):
        DomainEvaluationCallback(sets, {"B": sets["A"]}, tokenizer)
    with pytest.raises(ValueError, match="input_ids"):
        DomainEvaluationCallback({"A": datasets.Dataset.from_dict({"text": ["w1 w2"]})}, sets, tokenizer)


def test_build_bert_mlm_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    a = build_bert_mlm("tiny", 200, max_length=32, seed=5)
    torch.rand(1000)  # whatever the global RNG did in between does not matter
    rng = torch.get_rng_state()
    b = build_bert_mlm("tiny", 200, max_length=32, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    c = build_bert_mlm("tiny", 200, max_length=32, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["bert.embeddings.word_embeddings.weight"], sc["bert.embeddings.word_embeddings.weight"])
    layers, hidden, heads, intermediate = BERT_PRESETS["tiny"]
    assert (a.config.num_hidden_layers, a.config.hidden_size, a.config.num_attention_heads,
            a.config.intermediate_size, a.config.max_position_embeddings) == (layers, hidden, heads, intermediate, 32)


def test_build_bert_mlm_unknown_preset():
    with pytest.raises(ValueError, match="unknown BERT preset 'huge'; valid presets: tiny, mini, small, base"):
        build_bert_mlm("huge", 200)
