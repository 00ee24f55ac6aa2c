"""A Hugging Face ``TrainerCallback`` that tracks per-domain MLM loss and representations.

Add :class:`DomainEvaluationCallback` to any ``Trainer``. A sequential recipe calls
``callback.start_domain(name)`` and then ``trainer.train()`` once per domain with the same
callback object; every ``on_train_end`` records one "after <name>" evaluation, which is one
row of the loss matrix L[i][j] (validation MLM loss on domain j after training domain i).

Each evaluation measures:

- the masked-LM loss on every eval set (mean cross-entropy over all masked tokens of the set);
- on the probe sets, the attention-mask-aware mean-pooled hidden states of every layer
  (layer 0 = embeddings), and per layer: the effective rank of each domain's representation,
  the cosine similarity between domain-mean representations (domains as classes) with its
  mean off-diagonal value, and the linear CKA of each domain's representation now against the
  one recorded right after that domain was trained (NaN until then).

Design choices:

- Deterministic masking. Every eval example is masked once, at construction, by a generator
  seeded from (seed, domain name, example index): the same tokens are masked at every
  evaluation, and the training collator's RNG is never used. Masking follows BERT's recipe
  (each non-special, attended token is chosen with ``mlm_probability``; chosen tokens become
  [MASK] 80%, a random token 10%, unchanged 10%); an example with no chosen token gets one,
  so short sequences always count.
- Evaluation does not disturb training: ``torch.no_grad``, ``model.eval()`` and the previous
  train/eval mode restored afterwards, all RNG calls inside ``torch.random.fork_rng`` (the CPU
  and the model's CUDA device), inputs moved to the model's device.
- Distributed training: every rank evaluates (the same full eval and probe sets) and keeps
  the same records. Evaluation uses no collectives, so nothing can deadlock whatever ranks
  do, and under DDP all ranks hold identical weights, hence identical records; sharded
  setups (ZeRO-3, FSDP) whose forward needs every rank also work because all ranks run it.
  Only the main process (``torch.distributed`` rank 0, or no process group) writes.
- ``records`` hold only dicts, lists, strings, ints, floats and None (NaN stays a float NaN
  in memory), so ``state_dict`` is plain data (loads with ``weights_only=True``). Each record
  goes to ``sink`` (a recipe's one writer of its metrics file) or, standalone, as one JSON
  line to ``<output_dir>/metrics.jsonl`` (NaN written as null, one append-mode write).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from basinlab import ranks
from basinlab.atomic import append_json_line
from basinlab.eval.continual import loss_continual_metrics
from basinlab.eval.representation import (
    class_mean_cosine,
    covariance_spectrum,
    effective_rank_from_spectrum,
    linear_cka,
    mean_off_diagonal,
)

INITIAL = "initial"
IGNORE_INDEX = -100


def _example_seed(seed: int, domain: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{domain}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _rows_of(dataset: Any, name: str, what: str) -> tuple[list[list[int]], list[list[int]]]:
    """input_ids and attention_mask (all ones when absent) of a tokenized dataset, as lists."""
    columns = getattr(dataset, "column_names", None) or list(dataset.keys())
    if "input_ids" not in columns:
        raise ValueError(f"{what}[{name!r}] needs an 'input_ids' column (tokenize it first); got {columns}")
    ids = [list(map(int, row)) for row in dataset["input_ids"]]
    if not ids:
        raise ValueError(f"{what}[{name!r}] is empty")
    if "attention_mask" in columns:
        masks = [list(map(int, row)) for row in dataset["attention_mask"]]
    else:
        masks = [[1] * len(row) for row in ids]
    for i, (row, mask) in enumerate(zip(ids, masks)):
        if len(row) != len(mask):
            raise ValueError(f"{what}[{name!r}] example {i}: input_ids and attention_mask differ in length")
    return ids, masks


def _model_device(model: torch.nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


class DomainEvaluationCallback(TrainerCallback):
    """Per-domain MLM loss and per-layer representation metrics at domain boundaries.

    Args:
        eval_sets: domain name -> tokenized validation set (``input_ids``, optional
            ``attention_mask``). Its order is the column order of :meth:`loss_matrix`.
        probe_sets: domain name -> small fixed tokenized probe set (e.g. 64 sequences) for
            the representation metrics; must name the same domains as ``eval_sets``.
        tokenizer: gives ``pad_token_id``, ``mask_token_id``, the special ids and the vocab size.
        mlm_probability: fraction of eval tokens masked (fixed once, see the module doc).
        batch_size: evaluation batch size.
        every_n_steps: also record an intermediate evaluation every that many optimizer steps
            (kind "step"; not a loss-matrix row). None: only at domain boundaries.
        seed: seeds the evaluation masks.
        output_dir: when set, every record is appended to ``<output_dir>/metrics.jsonl``.
        record_fields: extra keys written into every record (e.g. the run's unit and seed),
            so one metrics.jsonl can hold several runs.
        sink: instead of ``output_dir``, a function that writes each record (main process).
    """

    def __init__(
        self,
        eval_sets: Mapping[str, Any],
        probe_sets: Mapping[str, Any],
        tokenizer: Any,
        mlm_probability: float = 0.15,
        batch_size: int = 32,
        every_n_steps: int | None = None,
        seed: int = 0,
        output_dir: str | os.PathLike | None = None,
        record_fields: Mapping[str, Any] | None = None,
        sink: Callable[[dict], None] | None = None,
    ):
        if not eval_sets:
            raise ValueError("eval_sets is empty; pass at least one domain")
        if set(probe_sets) != set(eval_sets):
            raise ValueError(
                f"probe_sets must name the same domains as eval_sets: {sorted(probe_sets)} vs {sorted(eval_sets)}"
            )
        if INITIAL in eval_sets:
            raise ValueError(f"{INITIAL!r} is reserved for the evaluation before training; rename that domain")
        if not 0.0 < float(mlm_probability) < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {mlm_probability}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be None or >= 1, got {every_n_steps}")
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token for masked-LM evaluation")
        self.domains = [str(name) for name in eval_sets]
        self.mlm_probability = float(mlm_probability)
        self.batch_size = int(batch_size)
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.seed = int(seed)
        if sink is not None and output_dir is not None:
            raise ValueError("pass output_dir or sink, not both: each record has one writer")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.sink = sink
        self.record_fields = dict(record_fields or {})
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.vocab_size = len(tokenizer)
        self.special_ids = frozenset(int(i) for i in tokenizer.all_special_ids)

        self._eval = {name: self._mask_set(name, *_rows_of(eval_sets[name], name, "eval_sets")) for name in self.domains}
        self._probe = {name: _rows_of(probe_sets[name], name, "probe_sets") for name in self.domains}
        for name, (ids, _) in self._probe.items():
            if len(ids) < 2:
                raise ValueError(f"probe_sets[{name!r}] needs at least 2 sequences for covariance and CKA")
        self.records: list[dict[str, Any]] = []
        self._reference: dict[str, list[torch.Tensor]] = {}  # domain -> per-layer probe reps after training it
        self._current_domain: str | None = None
        self._last_step: int | None = None

    # ---------------------------------------------------------------- masking

    def _mask_set(self, name: str, ids: list[list[int]], masks: list[list[int]]):
        """Fixed (masked input, labels, attention) per example, drawn from per-example generators."""
        examples = []
        for index, (row, attention) in enumerate(zip(ids, masks)):
            generator = torch.Generator().manual_seed(_example_seed(self.seed, name, index))
            input_ids = torch.tensor(row, dtype=torch.long)
            attention_t = torch.tensor(attention, dtype=torch.long)
            candidates = (attention_t == 1) & torch.tensor([t not in self.special_ids for t in row], dtype=torch.bool)
            draw = torch.rand(len(row), generator=generator)
            chosen = candidates & (draw < self.mlm_probability)
            if candidates.any() and not chosen.any():
                chosen[torch.where(candidates, draw, torch.inf).argmin()] = True
            labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
            how = torch.rand(len(row), generator=generator)
            random_tokens = torch.randint(self.vocab_size, (len(row),), generator=generator)
            masked = input_ids.clone()
            masked[chosen & (how < 0.8)] = self.mask_token_id
            swap = chosen & (how >= 0.8) & (how < 0.9)
            masked[swap] = random_tokens[swap]
            examples.append((masked, labels, attention_t))
        return examples

    def _batches(self, examples, device):
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start:start + self.batch_size]
            width = max(len(e[0]) for e in chunk)
            shape = (len(chunk), width)
            input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
            labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
            attention = torch.zeros(shape, dtype=torch.long)
            for k, (ids, lab, att) in enumerate(chunk):
                input_ids[k, : len(ids)] = ids
                labels[k, : len(ids)] = lab
                attention[k, : len(ids)] = att
            yield input_ids.to(device), labels.to(device), attention.to(device)

    # ---------------------------------------------------------------- evaluation

    def _mlm_loss(self, model, name: str, device) -> float:
        total, count = 0.0, 0
        for input_ids, labels, attention in self._batches(self._eval[name], device):
            logits = model(input_ids=input_ids, attention_mask=attention).logits
            selected = labels != IGNORE_INDEX
            if selected.any():
                total += float(F.cross_entropy(logits[selected].float(), labels[selected], reduction="sum"))
                count += int(selected.sum())
        return total / count if count else math.nan

    def _probe_representations(self, model, name: str, device) -> list[torch.Tensor]:
        """Per layer (0 = embeddings), the mean-pooled hidden states [N, D] of the probe set, on the CPU."""
        ids, masks = self._probe[name]
        examples = [(torch.tensor(r), torch.full((len(r),), IGNORE_INDEX), torch.tensor(m)) for r, m in zip(ids, masks)]
        per_layer: list[list[torch.Tensor]] = []
        for input_ids, _, attention in self._batches(examples, device):
            hidden = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True).hidden_states
            weights = attention.unsqueeze(-1).to(torch.float32)
            denominator = weights.sum(dim=1).clamp_min(1.0)
            if not per_layer:
                per_layer = [[] for _ in hidden]
            for layer, h in enumerate(hidden):
                pooled = (h.float() * weights).sum(dim=1) / denominator
                per_layer[layer].append(pooled.detach().cpu())
        return [torch.cat(chunks) for chunks in per_layer]

    def _kind(self, label: str) -> str:
        if label == INITIAL:
            return "initial"
        if label in self.domains:
            return "after_domain"
        return "custom"

    def evaluate(self, model: torch.nn.Module, label: str, *, step: int | None = None, kind: str | None = None) -> dict:
        """Evaluate ``model`` now, append the record to ``records`` (and metrics.jsonl) and return it.

        ``label`` = a domain name means "right after training that domain": a loss-matrix row,
        and the CKA reference of that domain. ``"initial"`` is the evaluation before training
        (the initial losses of the summary). Any other label is a free-standing record.
        """
        label = str(label)
        if kind is None:
            kind = self._kind(label)
        net = getattr(model, "module", model) if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        device = _model_device(net)
        was_training = net.training
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        try:
            net.eval()
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                losses = {name: self._mlm_loss(net, name, device) for name in self.domains}
                reps = {name: self._probe_representations(net, name, device) for name in self.domains}
        finally:
            net.train(was_training)

        if kind == "after_domain":
            self._reference[label] = [h.clone() for h in reps[label]]
        layers = []
        num_layers = len(reps[self.domains[0]])
        for layer in range(num_layers):
            stacked = torch.cat([reps[name][layer] for name in self.domains])
            domain_ids = torch.cat(
                [torch.full((reps[name][layer].shape[0],), k, dtype=torch.long) for k, name in enumerate(self.domains)]
            )
            cosine = class_mean_cosine(stacked, domain_ids, len(self.domains))
            layers.append(
                {
                    "layer": layer,
                    "effective_rank": {
                        name: effective_rank_from_spectrum(covariance_spectrum(reps[name][layer])) for name in self.domains
                    },
                    "domain_mean_cosine": cosine.tolist(),
                    "mean_cross_domain_cosine": mean_off_diagonal(cosine),
                    "cka_to_after_domain": {
                        name: (linear_cka(reps[name][layer], self._reference[name][layer])
                               if name in self._reference else math.nan)
                        for name in self.domains
                    },
                }
            )
        record = {
            **self.record_fields,
            "label": label,
            "kind": kind,
            "domain": self._current_domain,  # the domain being trained (None before or between domains)
            "step": self._last_step if step is None else int(step),
            "loss": losses,
            "layers": layers,
        }
        self.records.append(record)
        self._write(record)
        return record

    def _write(self, record: dict) -> None:
        if not ranks.is_main_process():
            return
        if self.sink is not None:
            self.sink(record)
        elif self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            append_json_line(self.output_dir / "metrics.jsonl", record)

    # ---------------------------------------------------------------- domain boundaries

    def start_domain(self, name: str) -> None:
        """Call before training domain ``name``; the next ``on_train_end`` records "after ``name``"."""
        if name not in self.domains:
            raise ValueError(f"unknown domain {name!r}; eval_sets has: {', '.join(self.domains)}")
        self._current_domain = name

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._last_step = int(state.global_step)
        if self.every_n_steps and model is not None and state.global_step % self.every_n_steps == 0:
            self.evaluate(model, f"step {state.global_step}", kind="step")
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Record the "after <domain>" evaluation (a loss-matrix row).

        Without a preceding :meth:`start_domain` the row is labelled "train_end" (kind
        "after_train"): it is a loss-matrix row, but not tied to a domain, so it sets no CKA
        reference and the continual metrics skip it.
        """
        self._last_step = int(state.global_step)
        if model is None:
            return control
        if self._current_domain is not None:
            self.evaluate(model, self._current_domain, kind="after_domain")
        else:
            self.evaluate(model, "train_end", kind="after_train")
        self._current_domain = None
        return control

    # ---------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Records and CKA references, so a resumed run continues the same loss matrix."""
        return {"records": self.records, "reference": self._reference, "last_step": self._last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = list(state["records"])
        self._reference = {name: [h.clone() for h in reps] for name, reps in state["reference"].items()}
        self._last_step = state["last_step"]

    # ---------------------------------------------------------------- results

    def _rows(self) -> list[dict]:
        return [r for r in self.records if r["kind"] in ("after_domain", "after_train")]

    def loss_matrix(self) -> np.ndarray:
        """Rows = the after-training records in order, columns = the eval domains (``self.domains``)."""
        rows = self._rows()
        return np.array([[r["loss"][name] for name in self.domains] for r in rows], dtype=np.float64).reshape(
            len(rows), len(self.domains)
        )

    def summary(self) -> dict:
        """Loss matrix, continual metrics (loss units, signs of ``loss_continual_metrics``) and
        the per-layer representation metrics of the last after-training record.

        The continual metrics use the trained domains as a square matrix (columns reordered to
        the training order); they need every row tied to a distinct domain, else they are
        omitted (None). Without an "initial" record the initial losses, hence FWT, are NaN.
        """
        rows = self._rows()
        initial = next((r for r in self.records if r["kind"] == "initial"), None)
        trained = [r["label"] for r in rows]
        continual = None
        if rows and all(r["kind"] == "after_domain" for r in rows) and len(set(trained)) == len(trained):
            square = [[r["loss"][name] for name in trained] for r in rows]
            start = [initial["loss"][name] if initial else math.nan for name in trained]
            continual = loss_continual_metrics(square, start)
        final = rows[-1] if rows else None
        return {
            "domains": list(self.domains),
            "rows": trained,
            "loss_matrix": self.loss_matrix().tolist(),
            "initial_losses": None if initial is None else [initial["loss"][n] for n in self.domains],
            "continual": continual,
            "final_representation": None if final is None else final["layers"],
        }
