"""The docs run as written.

- Every ```python block of README.md and docs/*.md executes (fresh namespace, cwd = a tmp dir
  with a `configs` link to the repository's), unless an HTML comment right before it says
  `<!-- snippet: gpu-only ... -->` or `<!-- snippet: multi-process, tested by tests/F.py::T -->`;
  `<!-- snippet: slow -->` marks a block that runs but takes seconds.
- Every launch command in a ```bash block (basinlab run/tune/report/prepare, accelerate launch,
  torchrun, deepspeed, make, python benchmarks/...) sits under `<!-- command: ... tests/F.py::T -->`
  naming the tests that run it or its shortened form; the named tests exist, and the ones named
  here do run the documented commands with shortened settings.
- Relative links resolve (files and #anchors), the README's result rows are those of
  docs/results.md, and nothing mentions the retired design document.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import types
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


# ------------------------------------------------------------------ reading the docs


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str  # the HTML comment right before the fence, without <!-- -->, or ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        """"snippet" / "command" (the marker's first word) and what follows it."""
        return self.marker.split(":", 1)[0].strip() if ":" in self.marker else ""

    @property
    def tests(self) -> list[tuple[str, str]]:
        return TEST_REF.findall(self.marker)


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        comment = re.fullmatch(r"<!--(.*)-->", before)
        found.append(Block(path, i + 1, opening.group(1), "\n".join(lines[i + 1:end]) + "\n",
                           comment.group(1).strip() if comment else ""))
        i = end + 1
    return found


BLOCKS = [block for path in DOCS for block in blocks_of(path)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def shell_commands(text: str) -> list[list[str]]:
    """The logical commands of a shell block: continuation lines joined, open quotes continued
    across lines, comments dropped."""
    commands, pending = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line + "\n"
        try:
            tokens = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        if tokens:
            commands.append(tokens)
        pending = ""
    assert not pending.strip(), f"unterminated command: {pending!r}"
    return commands


@dataclass(frozen=True)
class Command:
    block: Block
    tokens: tuple[str, ...]

    @property
    def program(self) -> list[str]:
        """The command without leading VAR=value assignments."""
        tokens = list(self.tokens)
        while tokens and re.fullmatch(r"\w+=\S*", tokens[0]):
            tokens.pop(0)
        return tokens

    @property
    def env(self) -> dict[str, str]:
        env = {}
        for token in self.tokens:
            if not re.fullmatch(r"\w+=\S*", token):
                break
            key, value = token.split("=", 1)
            env[key] = value
        return env

    @property
    def launcher(self) -> str:
        return Path(self.program[0]).name

    @property
    def is_launch(self) -> bool:
        program = self.program
        name = self.launcher
        if name == "basinlab":
            return len(program) > 1 and program[1] in ("run", "tune", "sweep", "report", "prepare")
        if name in ("python", "python3"):
            return len(program) > 1 and program[1].startswith("benchmarks/")
        if name == "bash":
            return len(program) > 1 and program[1].startswith("benchmarks/")
        return name in ("accelerate", "torchrun", "deepspeed", "make")

    @property
    def basinlab_args(self) -> list[str] | None:
        """The arguments of the `basinlab` it runs (directly or through `-m basinlab`), else None."""
        program = self.program
        if self.launcher == "basinlab":
            return program[1:]
        for i in range(len(program) - 1):
            if program[i] == "-m" and program[i + 1] == "basinlab":
                return program[i + 2:]
        return None


COMMANDS = [Command(b, tuple(t)) for b in BLOCKS if b.lang in SHELL for t in shell_commands(b.text)]
LAUNCHES = [c for c in COMMANDS if c.is_launch]


def option(args: list[str], name: str) -> list[str]:
    """Every value of ``--name VALUE`` in args."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def without(args: list[str], *names: str, flags: tuple[str, ...] = ()) -> list[str]:
    """args without ``--name VALUE`` pairs for names and without the bare flags."""
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif a not in flags:
            out.append(a)
    return out


def existing_test(path: str, name: str) -> bool:
    file = ROOT / path
    return file.is_file() and re.search(rf"^\s*def {name}\(", file.read_text(), re.M) is not None


# ------------------------------------------------------------------ markers, conventions, links


def test_markers_are_known_and_name_existing_tests():
    for block in BLOCKS:
        if not block.marker:
            continue
        assert block.kind in ("snippet", "command"), f"{block.where}: unknown marker <!-- {block.marker} -->"
        for path, name in block.tests:
            assert existing_test(path, name), f"{block.where}: {path}::{name} does not exist"
        if block.kind == "snippet":
            assert block.lang == "python", f"{block.where}: a snippet marker belongs before a python block"
            what = block.marker.split(":", 1)[1].split(",")[0].strip()
            assert what in ("slow", "gpu-only", "multi-process"), f"{block.where}: unknown snippet kind {what!r}"
            if what == "multi-process":
                assert block.tests, f"{block.where}: a multi-process snippet names the test that runs it"


def test_every_launch_command_names_the_test_that_runs_it():
    for command in LAUNCHES:
        block = command.block
        assert block.lang == "bash", f"{block.where}: launch commands go in ```bash blocks"
        assert block.kind == "command" and block.tests, (
            f"{block.where}: {' '.join(command.tokens)!r} needs <!-- command: ... tested by tests/F.py::T --> "
            "right before its block")


def test_commands_call_the_venv_tools_by_path():
    """One convention everywhere: .venv/bin/<tool> (README, Set-up), never a bare basinlab or python."""
    for command in COMMANDS:
        program = command.program
        if command.launcher in ("make", "bash", "export", "source", "cd"):
            continue
        assert program[0].startswith(".venv/bin/"), f"{command.block.where}: {' '.join(command.tokens)!r}"


def test_each_launch_of_a_run_writes_its_own_run_directory():
    """Two documented commands share a run directory only when they are the same experiment (the
    same launcher, config and overrides; --only, --resume and --workers only choose what runs now)."""
    outputs = {}
    for command in LAUNCHES:
        args = command.basinlab_args
        if not args or args[0] != "run":
            continue
        if command.launcher != "basinlab":  # a multi-process launch always names its run directory
            assert option(args, "--output"), f"{command.block.where}: {' '.join(command.tokens)!r} has no --output"
        names = [s.split("=", 1)[1] for s in option(args, "--set") if s.startswith("name=")]
        target = (option(args, "--output") or [f"runs/{(names or [Path(args[1]).stem])[-1]}"])[-1]
        experiment = (command.launcher, *without(args, "--workers", "--output", "--only", flags=("--resume",)))
        outputs.setdefault(target, {}).setdefault(experiment, command.block.where)
    for target, experiments in outputs.items():
        assert len(experiments) == 1, f"different commands write to {target}: {sorted(experiments.values())}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_relative_links_resolve():
    for path in DOCS:
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # not inside code blocks
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file) if file else path
            where = f"{path.relative_to(ROOT)}: link {target!r}"
            assert resolved.exists(), f"{where}: {resolved} does not exist"
            if anchor and resolved.suffix == ".md":
                assert anchor in anchors(resolved.resolve()), f"{where}: no heading #{anchor} in {resolved.name}"


def test_no_mention_of_the_retired_design_document():
    name = "DESIGN" + ".md"
    listed = subprocess.run(["git", "grep", "-I", "-l", "--untracked", "-e", name, "--", "."],
                            cwd=ROOT, capture_output=True, text=True)
    assert listed.stdout.strip() == "", f"files mentioning {name}:\n{listed.stdout}"


def table_rows(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.startswith("| ") and "±" in line}


def test_readme_results_are_those_of_docs_results():
    readme, results = (ROOT / "README.md").read_text(), (ROOT / "docs/results.md").read_text()
    missing = table_rows(readme) - table_rows(results)
    assert not missing, f"README result rows not in docs/results.md: {sorted(missing)}"


def test_adding_a_recipe_section_is_there():
    assert re.search(r"^## Adding a recipe$", (ROOT / "docs/recipes.md").read_text(), re.M)


# ------------------------------------------------------------------ every python snippet runs


def _reset_process_state():
    """What a snippet may leave behind for later tests: Accelerate's singletons."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def doc_dir(tmp_path, monkeypatch, mnist_cache_dir):
    """cwd = a fresh folder that sees the repository's configs, with the test's MNIST cache;
    the optimizer registry is restored afterwards."""
    from basinlab.optim import registry

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BASINLAB_CACHE", str(mnist_cache_dir))
    saved = dict(registry._REGISTRY), dict(registry._GROUPS)
    _reset_process_state()
    yield tmp_path
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved[0])
    registry._GROUPS.clear()
    registry._GROUPS.update(saved[1])
    _reset_process_state()


def _runnable(block: Block):
    marks = []
    if block.kind == "snippet":
        what = block.marker.split(":", 1)[1].split(",")[0].strip()
        if what in ("gpu-only", "multi-process"):
            return None
        if what == "slow":
            marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.where, marks=marks)


@pytest.mark.parametrize("block", [p for p in map(_runnable, PYTHON) if p is not None])
def test_python_snippet_runs(block, doc_dir):
    code = compile(block.text, block.where, "exec")
    module = types.ModuleType("__docs__")  # a real module, so dataclasses in a snippet resolve their annotations
    sys.modules["__docs__"] = module
    try:
        exec(code, module.__dict__)
    finally:
        del sys.modules["__docs__"]


# ------------------------------------------------------------------ launch commands, shortened

SHORT_MNIST = [
    "seeds=[0]", "data.num_tasks=2", "data.max_train_examples=128", "data.validation_size=128", "data.probe_size=64",
    "train.max_epochs=1", "train.batch_size=64", "log_with=none",
]


def _basinlab_runs(subcommand: str, recipe_dir: str) -> list[Command]:
    found = []
    for command in LAUNCHES:
        args = command.basinlab_args
        if args and args[0] == subcommand and command.launcher == "basinlab" and args[1].startswith(recipe_dir):
            found.append(command)
    return found


def _makefile_demo() -> Command:
    recipe = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    block = Block(ROOT / "Makefile", 0, "make", recipe, "")
    return Command(block, tuple(shlex.split(recipe.replace("$(BIN)", ".venv/bin"))))


def _distinct(commands: list[Command]) -> list[Command]:
    """One command per distinct experiment: the same config with the same `arms` override (the
    other flags --only, --resume, --workers, --output and seed or name overrides change which units
    run or where, which the first such command exercises)."""
    seen, kept = set(), []
    for command in commands:
        args = command.basinlab_args
        arms = tuple(a for a in option(args, "--set") if a.startswith("arms="))
        key = (args[1], arms)
        if key not in seen:
            seen.add(key)
            kept.append(command)
    return kept


MNIST_RUNS = _distinct([_makefile_demo(), *_basinlab_runs("run", "configs/mnist/")])


def _short_mnist_args(args: list[str], out: Path, cache_dir: Path) -> list[str]:
    config = yaml.safe_load(Path(args[1]).read_text())  # relative to the cwd (doc_dir sees configs/)
    short = list(SHORT_MNIST) + [f"data.cache_dir={cache_dir}"]
    pruning = config.get("pruning", {})
    if pruning.get("finetune_steps", 0):
        short.append("pruning.finetune_steps=2")
    if pruning.get("enabled") or "pruning.enabled=true" in option(args, "--set"):
        short.append("pruning.keep_fractions=[1.0,0.05]")
    args = without(args, "--workers", "--output", "--write")  # --workers: tests/test_resume_and_launch.py
    arms = next((yaml.safe_load(s.split("=", 1)[1]) for s in reversed(option(args, "--set")) if s.startswith("arms=")),
                config.get("arms", []))
    if len(arms) > 5 and not option(args, "--only"):  # one arm of each kind; every arm loads in test_documented_commands_load
        kinds = {}
        for arm in arms:
            kinds.setdefault((arm["name"], *sorted(k for k in ("model", "l1_penalty", "then") if k in arm)),
                             arm.get("label", arm["name"]))
        args += ["--only", ",".join(kinds.values())]
    return [*args, *(x for s in short for x in ("--set", s)), "--output", str(out)]


@pytest.mark.slow
@pytest.mark.parametrize("command", MNIST_RUNS, ids=[f"{c.block.where}:{Path(c.basinlab_args[1]).stem}" for c in MNIST_RUNS])
def test_documented_mnist_runs_shortened(command, doc_dir, mnist_cache_dir):
    from basinlab.launch.cli import main

    out = doc_dir / "out"
    assert main(_short_mnist_args(command.basinlab_args, out, mnist_cache_dir)) == 0
    summary = json.loads((out / "summary.json").read_text())
    only = option(_short_mnist_args(command.basinlab_args, out, mnist_cache_dir), "--only")
    assert summary["complete"] is not bool(only)
    trained = {u["arm"] for u in summary["units"]}
    assert trained == (set(only[0].split(",")) if only else set(summary["arms"]))


def _local_domains(folder: Path) -> list[dict]:
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from text_fixtures import VALIDATION_FRACTION, write_domain

    folder.mkdir(exist_ok=True)
    return [{"name": name, "local_files": [write_domain(folder, name, i)], "validation_fraction": VALIDATION_FRACTION}
            for i, name in enumerate(("alpha", "beta"))]


TEXT_RUNS = _distinct(_basinlab_runs("run", "configs/text/"))


def _short_text_args(args: list[str], folder: Path) -> list[str]:
    config = yaml.safe_load(Path(args[1]).read_text())
    short = [
        "seeds=[0]", f"data.domains={json.dumps(_local_domains(folder / 'corpora'))}", "data.max_length=32",
        "data.vocab_size=1000", "data.eval_sequences=8", "data.probe_sequences=4", f"data.cache_dir={folder / 'cache'}",
        "model.preset=tiny", "train.steps_per_domain=2", "train.batch_size=8", "train.logging_steps=1",
        "train.eval_batch_size=8", "train.warmup_steps=0", "train.bf16=false", "train.eval_every_n_steps=null",
        "log_with=none",
    ]
    args = without(args, "--output")
    if not option(args, "--only"):  # every arm's options are checked by test_documented_commands_load
        args += ["--only", config["arms"][0].get("label", config["arms"][0]["name"])]
    return [*args, *(x for s in short for x in ("--set", s)), "--output", str(folder / "out")]


@pytest.mark.slow
@pytest.mark.parametrize("command", TEXT_RUNS, ids=[f"{c.block.where}:{Path(c.basinlab_args[1]).stem}" for c in TEXT_RUNS])
def test_documented_text_runs_shortened(command, doc_dir):
    from basinlab.launch.cli import main

    assert main(_short_text_args(command.basinlab_args, doc_dir)) == 0
    summary = json.loads((doc_dir / "out" / "summary.json").read_text())
    assert summary["recipe"] == "text" and len(summary["units"]) == 1
    unit = summary["units"][0]
    assert len(unit["loss_matrix"]) == 2 and unit["arm"] in summary["arms"]


TUNES = _basinlab_runs("tune", "configs/mnist/")


@pytest.mark.slow
@pytest.mark.parametrize("command", TUNES, ids=[c.block.where for c in TUNES])
def test_documented_tune_commands_shortened(command, doc_dir, mnist_cache_dir):
    """Each grid cut to its first two values; --write goes to the tmp dir, never over the config."""
    from basinlab.launch.cli import main

    args = list(command.basinlab_args)
    for i, a in enumerate(args[:-1]):
        if a == "--grid":
            label, values = args[i + 1].split("=")
            args[i + 1] = f"{label}={','.join(values.split(',')[:2])}"
    written = doc_dir / "tuned.yaml"
    short = _short_mnist_args(args, doc_dir / "out", mnist_cache_dir)
    if option(command.basinlab_args, "--write"):
        short += ["--write", str(written)]
    assert main(short) == 0
    tuned = json.loads((doc_dir / "out" / "tune.json").read_text())
    assert set(tuned["arms"]) == {g.split("=")[0] for g in option(command.basinlab_args, "--grid")}
    if option(command.basinlab_args, "--write"):
        assert yaml.safe_load(written.read_text())["arms"]


def _documented_keys(section_title: str) -> list[str]:
    """The backticked keys in the first column of the table right after the paragraph naming it."""
    text = (ROOT / "docs/recipes.md").read_text()
    start = text.index(section_title)
    table = re.search(r"((?:^\|.*\n)+)", text[start:], re.M).group(1)
    keys = []
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        keys += re.findall(r"`([\w.\[\]]+)`", first)
    return keys


@pytest.mark.slow
def test_run_directory_matches_the_documented_schema(doc_dir, mnist_cache_dir):
    """`basinlab run` then `basinlab report` (docs/recipes.md, Commands): the files and the
    summary.json keys the docs list are the ones a run writes."""
    from basinlab.launch.cli import main

    out = doc_dir / "runs" / "demo"
    documented = ["run", "configs/mnist/demo.yaml", "--set", "pruning.enabled=true"]
    argv = _short_mnist_args(documented, out, mnist_cache_dir) + ["--set", "seeds=[0,1]", "--set", "log_with=tensorboard"]
    assert main(argv) == 0
    assert main(["report", str(out)]) == 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.md", "units/sgd__seed0.json",
                 "plots/accuracy_matrix.png", "plots/average_accuracy.png", "plots/covariance_spectra.png",
                 "plots/cross_class_cosine.png", "plots/pruning_curves.png", "tensorboard"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == 2
    assert set(_documented_keys("Top level, both recipes:")) - {"recipe", "domains", "domain_sizes", "model",
                                                                "max_length", "steps_per_domain"} <= set(summary)
    unit = summary["units"][0]
    assert set(_documented_keys("An MNIST unit")) <= set(unit)
    assert set(_documented_keys("MNIST `aggregate[label]`")) <= set(summary["aggregate"]["sgd"])
    assert set(_documented_keys("MNIST `property_card.arms[label]`")) <= set(summary["property_card"]["arms"]["sgd"])
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {e["event"] for e in events} == {"init", "epoch", "task"}
    assert all({"unit", "arm", "seed", "event", "step"} <= set(e) for e in events)


@pytest.mark.slow
def test_text_run_matches_the_documented_schema(doc_dir):
    from basinlab.launch.cli import main

    assert main(_short_text_args(["run", "configs/text/smoke.yaml"], doc_dir)) == 0
    summary = json.loads((doc_dir / "out" / "summary.json").read_text())
    assert set(_documented_keys("Top level, both recipes:")) - {"stream", "num_tasks", "task_names", "property_card"} <= set(summary)
    label = next(iter(summary["aggregate"]))
    assert set(_documented_keys("A text unit")) <= set(summary["units"][0])
    assert set(_documented_keys("Text `aggregate[label]`")) <= set(summary["aggregate"][label])
    for name in ("loss_matrix.png", "domain_losses.png", "per_layer_representation.png", "domain_cosine.png", "train_loss.png"):
        assert (doc_dir / "out" / "plots" / name).exists(), name
    events = [json.loads(line) for line in (doc_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e.get("event") == "train"]
    assert train and all({"loss", "learning_rate", "grad_norm"} <= set(e) for e in train)
    assert {e["kind"] for e in events if "kind" in e} == {"initial", "after_domain"}


def test_documented_commands_load():
    """Every documented basinlab command parses, and its config loads with its --set overrides
    (stale key names fail here first); launch configs and scripts it names exist."""
    from basinlab.launch.cli import build_parser
    from basinlab.launch.config import load_config
    from basinlab.launch.sweep import load_sweep

    parser = build_parser()
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        for command in LAUNCHES:
            where = f"{command.block.where}: {' '.join(command.tokens)!r}"
            program = command.program
            for config_file in option(program, "--config_file"):
                assert (ROOT / config_file).is_file(), where
            args = command.basinlab_args
            if args is None:
                if command.launcher in ("python", "python3", "bash"):
                    script = ROOT / program[1]
                    assert script.is_file(), where
                    source = script.read_text()
                    assert all(f'"{flag}"' in source for flag in program[2:] if flag.startswith("--")), where
                continue
            parsed = parser.parse_args(args)
            if args[0] in ("run", "tune") and (ROOT / args[1]).is_file():
                config = load_config(args[1], parsed.set)
                labels = {arm.label for arm in config.arms}
                for only in option(args, "--only"):
                    assert set(only.split(",")) <= labels, where
                for grid in option(args, "--grid"):
                    assert grid.split("=")[0] in labels, where
            if args[0] == "sweep":
                load_sweep(args[1], parsed.set)  # every cell's config builds and checks
    finally:
        os.chdir(cwd)


YAML_BLOCKS = [b for b in blocks_of(ROOT / "docs/recipes.md") if b.lang == "yaml"]
SWEEPS = [b for b in YAML_BLOCKS if b.text.startswith("# configs/sweeps/")]
REFERENCES = [b for b in YAML_BLOCKS if not b.text.startswith("data:") and b not in SWEEPS]


def test_sweep_snippet_loads(tmp_path, monkeypatch):
    """The sweep example of docs/recipes.md builds and checks every cell (from the repository root, where
    its base config path points)."""
    from basinlab.launch.sweep import load_sweep

    [block] = SWEEPS
    path = tmp_path / "sweep.yaml"
    path.write_text(block.text)
    monkeypatch.chdir(ROOT)
    sweep = load_sweep(path)
    assert len(sweep.cells) == 4 and "shampoo.grafting-none" in [a.label for a in sweep.cells[0].config.arms]


def test_corpus_domains_snippet_checks(tmp_path):
    """The "your own corpora" example of docs/recipes.md passes the config checks once its files exist
    (under tmp_path instead of /data; the hub entry needs no files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from basinlab.launch.text_config import TextDataConfig

    [block] = [b for b in blocks_of(ROOT / "docs/recipes.md") if b.lang == "yaml" and b.text.startswith("data:\n  domains:")]
    data = yaml.safe_load(block.text.replace("/data/", f"{tmp_path}/"))["data"]
    line = json.dumps({"text": "a document with enough words in it"}) + "\n"
    for folder in ("web", "books", "papers"):
        (tmp_path / folder).mkdir()
    (tmp_path / "web" / "shard-000.jsonl").write_text(line)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "books" / name).write_text("a paragraph with enough words\n\nand another one here\n")
    pq.write_table(pa.table({"abstract": ["an abstract with enough words"]}), tmp_path / "papers" / "p.parquet")
    config = TextDataConfig(domains=data["domains"])
    config.check()
    assert config.streamed() == ["c4"]

def test_reference_configs_load(tmp_path):
    """The two config references of docs/recipes.md are valid configs (the `plugins:` line apart:
    test_reference_config_plugins_key_loads)."""
    from basinlab.launch.config import load_config

    assert len(REFERENCES) == 2
    for i, block in enumerate(REFERENCES):
        path = tmp_path / f"reference{i}.yaml"
        path.write_text(re.sub(r"^plugins:.*\n", "", block.text, flags=re.M))
        assert load_config(path, []).arms


def test_reference_config_plugins_key_loads(tmp_path):
    from basinlab.launch.config import load_config

    [mnist] = [b for b in REFERENCES if re.search(r"^plugins:", b.text, re.M)]
    path = tmp_path / "reference.yaml"
    path.write_text(mnist.text)
    assert load_config(path, []).arms


def test_prepare_mnist_command(mnist_cache_dir, capsys):
    """`basinlab prepare mnist` (docs/recipes.md) on a valid cache: verified, nothing downloaded."""
    from basinlab.launch.cli import main

    [command] = [c for c in LAUNCHES if c.basinlab_args == ["prepare", "mnist"]]
    assert main([*command.basinlab_args, "--cache-dir", str(mnist_cache_dir)]) == 0
    assert "MNIST ready" in capsys.readouterr().out


def test_makefile_runs_the_documented_commands():
    """make demo runs what test_documented_mnist_runs_shortened runs (its first case), make test
    the test suite, make bench every benchmark that docs/benchmarks.md documents."""
    makefile = (ROOT / "Makefile").read_text()
    targets = dict(re.findall(r"^(\w+):.*\n((?:\t.*\n)+)", makefile, re.M))
    assert MNIST_RUNS[0].block.path.name == "Makefile"
    assert targets["test"].strip() == "$(BIN)/python -m pytest"
    benched = set(re.findall(r"benchmarks/(\w+)\.py", targets["bench"]))
    documented = {Path(c.program[1]).stem for c in LAUNCHES
                  if c.launcher == "python" and c.block.path.name == "benchmarks.md"}
    assert benched == documented - {"gpu_check"}, (benched, documented)
    readme = [c.program for c in LAUNCHES if c.launcher == "make" and c.block.path.name == "README.md"]
    assert {p[1] for p in readme} <= set(targets)


# ------------------------------------------------------------------ plugins

PLUGIN = next(b for b in PYTHON if b.text.startswith("# my_optimizers.py"))


def _plugin_config(tmp_path: Path, cache_dir: Path) -> Path:
    block = next(b for b in BLOCKS if b.lang == "yaml" and "plugins: [my_optimizers]" in b.text)
    (tmp_path / "my_optimizers.py").write_text(PLUGIN.text)
    config = yaml.safe_load(block.text)
    config.update(name="my_study", data={"cache_dir": str(cache_dir)})
    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_plugin_module_registers_an_optimizer_for_a_config(doc_dir, mnist_cache_dir, monkeypatch):
    """docs/optimizers.md: the plugin module, the config naming it and `PYTHONPATH=. basinlab run`."""
    from basinlab.launch.cli import main

    [command] = [c for c in LAUNCHES if c.basinlab_args and c.basinlab_args[1:2] == ["my_study.yaml"]]
    assert command.env == {"PYTHONPATH": "."}
    _plugin_config(doc_dir, mnist_cache_dir)
    monkeypatch.syspath_prepend(str(doc_dir))  # PYTHONPATH=.
    monkeypatch.delitem(sys.modules, "my_optimizers", raising=False)
    argv = _short_mnist_args(command.basinlab_args, doc_dir / "out", mnist_cache_dir)
    assert main(argv) == 0
    summary = json.loads((doc_dir / "out" / "summary.json").read_text())
    assert summary["arms"]["signsgd"]["name"] == "signsgd"


def test_entry_point_plugins_register_before_the_arms_are_checked(tmp_path, monkeypatch):
    """docs/optimizers.md: an installed package registers through the `basinlab.optimizers` group."""
    import importlib.metadata

    from basinlab.launch.config import load_config

    package = tmp_path / "site"
    (package / "my_entry_plugin.py").parent.mkdir()
    (package / "my_entry_plugin.py").write_text(PLUGIN.text.replace('"signsgd"', '"signsgd_ep"'))
    info = package / "my_entry_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-entry-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[basinlab.optimizers]\nsignsgd_ep = my_entry_plugin\n")
    monkeypatch.syspath_prepend(str(package))
    importlib.invalidate_caches()
    from basinlab.optim import registry

    saved = dict(registry._REGISTRY)
    try:
        config = tmp_path / "c.yaml"
        config.write_text("arms: [{name: signsgd_ep, lr: 0.01}]\n")
        assert load_config(config, []).arms[0].name == "signsgd_ep"
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
        sys.modules.pop("my_entry_plugin", None)


# ------------------------------------------------------------------ multi-process snippets


MULTI_PROCESS_SCRIPTS = ["train_engine.py", "train.py", "train_trainer_ds.py", "train_fsdp2.py"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MULTI_PROCESS_SCRIPTS)
def test_multi_process_scripts_run_as_written(name, doc_dir):
    """docs/distributed.md's DeepSpeed and FSDP2 scripts, as written, with their documented launch
    commands (torchrun or accelerate launch), on 2 CPU ranks."""
    [script] = [b for b in PYTHON if b.text.startswith(f"# {name}\n")]
    [command] = [c for c in LAUNCHES if c.program[-1] == name]
    assert ("tests/test_docs.py", "test_multi_process_scripts_run_as_written") in script.tests
    (doc_dir / name).write_text(script.text)
    argv = [str(Path(sys.executable).parent / command.launcher), *command.program[1:]]  # .venv/bin/<launcher>
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # it would switch Accelerate's DeepSpeed path off
    result = subprocess.run(argv, cwd=doc_dir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    if name == "train_trainer_ds.py":
        first = float(re.search(r"first logged loss ([\d.]+)", result.stdout).group(1))
        assert abs(first - 5.3) < 0.5, first  # ln(200): the mean over both ranks, not their sum


# ------------------------------------------------------------------ benchmarks, shortened

BENCHMARKS = {  # script -> shortened arguments (the documented defaults take minutes)
    "batching": ["--repeats", "1", "--batch-size", "1024"],
    "mnist_recipe_speed": ["--seeds", "2", "--tasks", "1", "--train-examples", "256", "--workers", "1",
                           "--optimizers", "sgd"],
    "optimizer_step": ["--model", "mlp", "--frequencies", "10", "--no-peers", "--windows", "1", "--root-methods", "eigh"],
    "soap_muon": ["--model", "mlp", "--windows", "1", "--no-peers"],
    "sparsity": ["--skip-bert", "--mlp-steps", "5", "--mlp-windows", "1", "--seeds", "0", "--max-epochs", "1",
                 "--eval-every", "200"],
    "text_hooks": ["--steps", "3", "--windows", "1"],
    "text_cache": ["--megabytes", "0.2", "1", "--num-proc", "1"],
    "text_loader": ["--megabytes", "0.3", "--batches", "5", "--train-steps", "1", "--batch-size", "4", "--max-length", "32"],
    "gpu_check": ["--quick", "--device", "cpu", "--sections", "correctness"],
    "distributed_shampoo": ["--frequency", "2", "--windows", "1"],
    "fsdp2": ["--frequency", "2", "--windows", "1"],
}
TORCHRUN_BENCHMARKS = ("distributed_shampoo", "fsdp2")  # they train BERT-mini in every rank: run with the MLP

# These train BERT-mini in every rank; this wrapper swaps in the MLP workload, in the launcher and
# in the ranks it starts (the script launches __file__, so it launches the wrapper).
MLP_WRAPPER = '''
import os, runpy, sys
bench = os.environ["BASINLAB_BENCHMARKS"]
sys.path.insert(0, bench)
import optimizer_step
optimizer_step.bert_workload = lambda preset, *args, **kwargs: optimizer_step.mlp_workload()
namespace = runpy.run_path(os.path.join(bench, "{script}.py"))
namespace["main"].__globals__["__file__"] = os.path.abspath(__file__)
namespace["main"]()
'''


def test_every_documented_benchmark_has_a_shortened_form():
    documented = {Path(c.program[1]).stem for c in LAUNCHES if c.launcher in ("python", "python3")
                  and c.program[1].startswith("benchmarks/")}
    assert documented == set(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmarks_run_shortened(name, tmp_path, mnist_cache_dir):
    env = {**os.environ, "BASINLAB_CACHE": str(mnist_cache_dir), "OMP_NUM_THREADS": "1",
           "BASINLAB_BENCHMARKS": str(ROOT / "benchmarks"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = ROOT / "benchmarks" / f"{name}.py"
    if name in TORCHRUN_BENCHMARKS:
        script = tmp_path / f"{name}_mlp.py"
        script.write_text(MLP_WRAPPER.format(script=name))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])
    result = subprocess.run([sys.executable, str(script), *BENCHMARKS[name]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    assert "x" in result.stdout  # every benchmark prints its ratios
