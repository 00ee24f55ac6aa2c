"""What the text recipe's hooks cost: tokens/s of its Trainer vs a plain HF Trainer.

Both arms train the same BERT (same seed) with the same TrainingArguments, data loader
and optimizer class (AdamW) in this process. "recipe" is the Trainer the text recipe builds
(``TextUnit.domain_trainer``: the DomainTrainer subclass, the carried optimizer, the
TrainingLog and DomainEvaluationCallback callbacks, evaluation only at the end of training);
"plain" is ``transformers.Trainer`` with no callbacks of ours, fed by the same loader (the
recipe's position-addressed sampler and position-seeded masks; HF's own sampler and collator
would make the data path, not the hooks, the difference). A timing callback in both
reads the clock at the end of the first and of the last optimizer step (after a CUDA
synchronize on a GPU), so start-up, the first step's lazy state allocation and the
end-of-domain evaluation are outside the window: the difference is the per-step cost of the
hooks. Windows alternate (plain, recipe, recipe, plain, ...) and the medians are compared.

    python benchmarks/text_hooks.py [--preset tiny] [--max-length 64] [--batch-size 16]
        [--steps 25] [--windows 3]

Data: the built-in news domain (prepared from its pinned wheel on first use).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import Trainer, TrainerCallback

from basinlab.eval.results import TextUnitResult
from basinlab.launch.config import config_from_dict
from basinlab.launch.driver import UnitLog
from basinlab.launch.rundir import RunDirectory
from basinlab.launch.text_domains import load_domains
from basinlab.launch.text_loader import DomainData
from basinlab.launch.text_unit import TextUnit
from basinlab.optim.checkpoint import unwrap_optimizer
from basinlab.models import build_bert_mlm


class SameData(Trainer):
    """transformers.Trainer reading the recipe's loader (nothing else of the recipe)."""

    def __init__(self, *args, data: DomainData, **kwargs):
        super().__init__(*args, **kwargs)
        self.data = data

    def get_train_dataloader(self):
        return self.data.loader()


class StepClock(TrainerCallback):
    """Wall time from the end of step 1 to the end of the last step."""

    def __init__(self):
        self.first = self.last = None

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if state.global_step == 1:
            self.first = now
        self.last = now

    def seconds(self) -> float:
        return self.last - self.first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="BERT preset (default tiny)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per sequence (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per window (default 25)")
    parser.add_argument("--windows", type=int, default=3, help="windows per arm (default 3)")
    args = parser.parse_args()

    config = config_from_dict({
        "name": "text_hooks", "recipe": "text", "log_with": "none",
        "data": {"domains": ["news"], "max_length": args.max_length},
        "model": {"preset": args.preset},
        "train": {"steps_per_domain": args.steps, "batch_size": args.batch_size, "logging_steps": 10},
        "arms": [{"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}],
    })
    tokenizer, domains = load_domains(config)
    tokens_per_step = args.batch_size * args.max_length
    with tempfile.TemporaryDirectory() as folder:
        run = RunDirectory(folder)
        run.open(config.to_yaml(), TextUnitResult)
        log = UnitLog(run, config.arms[0], 0, {}, config.log_with)
        unit = TextUnit(config, config.arms[0], log, domains, tokenizer, run, process_kwargs={})
        plain_model = build_bert_mlm(args.preset, len(tokenizer), args.max_length, seed=0, pad_token_id=tokenizer.pad_token_id)
        plain_optimizer = torch.optim.AdamW(plain_model.parameters(), lr=1e-3, weight_decay=0.01)
        carried = None
        rates: dict[str, list[float]] = {"plain": [], "recipe": []}

        def recipe_window() -> float:
            nonlocal carried
            trainer, _ = unit.domain_trainer(0, carried)
            clock = StepClock()
            trainer.add_callback(clock)
            unit.callback.start_domain("news")
            trainer.train()
            carried = unwrap_optimizer(trainer.optimizer)
            return clock.seconds()

        def plain_window() -> float:
            clock = StepClock()
            trainer = SameData(
                data=DomainData(domains[0], config, 0, tokenizer),
                model=plain_model,
                args=unit.training_arguments(0),
                train_dataset=domains[0].train,
                optimizers=(plain_optimizer, None),
                callbacks=[clock],
            )
            trainer.train()
            return clock.seconds()

        order = ["plain", "recipe", "recipe", "plain"] * ((args.windows + 1) // 2)
        for arm in order[: 2 * args.windows]:
            seconds = plain_window() if arm == "plain" else recipe_window()
            rates[arm].append((args.steps - 1) * tokens_per_step / seconds)
            print(f"{arm:7s} window: {rates[arm][-1]:9.0f} tokens/s", flush=True)
    plain, recipe = statistics.median(rates["plain"]), statistics.median(rates["recipe"])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nBERT-{args.preset}, batch {args.batch_size} x {args.max_length} tokens, AdamW, {device}")
    print(f"plain HF Trainer : {plain:9.0f} tokens/s (median of {len(rates['plain'])} windows of {args.steps - 1} steps)")
    print(f"text recipe      : {recipe:9.0f} tokens/s")
    print(f"recipe / plain   : {recipe / plain:.3f}  (hook overhead {100 * (1 - recipe / plain):+.1f} %)")


if __name__ == "__main__":
    main()
