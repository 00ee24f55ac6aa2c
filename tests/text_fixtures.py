"""A tiny text-recipe config over three made-up local domains (shared by the text recipe tests)."""

import random

STEPS = 8
DOMAINS = ("alpha", "beta", "gamma")
VALIDATION_FRACTION = 0.2  # of 80 documents: enough validation text for 8 evaluation sequences


def write_domain(folder, name: str, seed: int) -> str:
    """80 one-line documents over a vocabulary of made-up words of this domain (plus shared words)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    own = ["".join(rng.choice(letters[seed * 6:seed * 6 + 10]) for _ in range(rng.randint(3, 7))) for _ in range(60)]
    shared = ["the", "of", "and", "to", "in"]
    lines = [" ".join(rng.choice(own if rng.random() < 0.8 else shared) for _ in range(rng.randint(30, 60))) for _ in range(80)]
    path = folder / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def tiny_text_config(tmp_path, **sections) -> dict:
    """Raw config: BERT-tiny, 32-token sequences, STEPS steps per domain, AdamW and Shampoo; ``sections``
    update a section (mappings) or replace a key (anything else)."""
    files = tmp_path / "corpora"
    files.mkdir(exist_ok=True)
    raw = {
        "name": "tiny_text",
        "recipe": "text",
        "seeds": [0],
        "log_with": "none",
        "data": {
            "domains": [{"name": d, "local_files": [write_domain(files, d, i)], "validation_fraction": VALIDATION_FRACTION}
                        for i, d in enumerate(DOMAINS)],
            "max_length": 32,
            "vocab_size": 1000,
            "eval_sequences": 8,
            "probe_sequences": 4,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"steps_per_domain": STEPS, "batch_size": 8, "logging_steps": 2, "eval_batch_size": 8},
        "arms": [
            {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
            {"name": "shampoo", "lr": 3e-3, "precondition_frequency": 2, "max_preconditioner_dim": 64},
        ],
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw
