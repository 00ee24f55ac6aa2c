"""Bad input of every kind fails when the config loads: a UserError naming the key, and from the
command line one line on stderr, exit status 2 and no run directory."""

import re

import pytest
import torch
import yaml

from basinlab.data.mnist import TRAIN_CLASS_COUNTS
from basinlab.data.streams import build_tasks
from basinlab.errors import UserError
from basinlab.launch.cli import main
from basinlab.launch.config import config_from_dict, load_config
from basinlab.optim import registry

NAN, INF = float("nan"), float("inf")
SGD = {"name": "sgd", "lr": 0.1}
MNIST = {"seeds": [0], "arms": [SGD], "train": {"batch_size": 64}, "log_with": "none"}
TEXT = {"recipe": "text", "arms": [{"name": "adamw", "lr": 1e-3}], "data": {"domains": ["news"]}, "log_with": "none"}


def mnist(**sections):
    """MNIST with ``sections`` replacing top-level keys."""
    return {**MNIST, **sections}


def text(data=None, **sections):
    """The text recipe with ``data`` merged into its data section and ``sections`` replacing other keys."""
    return {**TEXT, "data": {**TEXT["data"], **(data or {})}, **sections}


def refused(tmp_path, capsys, path, *overrides) -> str:
    """``basinlab run PATH --set ...`` exits 2 with one line and creates no run directory; its message."""
    out = tmp_path / "out"
    argv = ["run", str(path), "--output", str(out), *[a for o in overrides for a in ("--set", o)]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("basinlab: error: ") and "\n" not in err, err
    assert not out.exists()
    return err


def assert_refused(tmp_path, capsys, raw, message, *overrides):
    """``raw`` fails in config_from_dict (without overrides), in load_config and on the command line."""
    if not overrides:
        with pytest.raises(UserError, match=message):
            config_from_dict(raw)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=message):
        load_config(path, list(overrides))
    assert re.search(message, refused(tmp_path, capsys, path, *overrides))


# ------------------------------------------------------------------ 1. non-finite numbers


@pytest.mark.parametrize(
    "raw, message",
    [
        (mnist(arms=[{"name": "sgd", "lr": NAN}]), r"'arms\[0\]\.lr' must be a finite number, got nan"),
        (mnist(arms=[{"name": "adamw", "betas": [0.9, NAN]}]), r"'arms\[0\]\.betas\[1\]' must be a finite number, got nan"),
        (mnist(train={"convergence_target": INF}), r"'train\.convergence_target' must be a finite number, got inf"),
        (mnist(arms=[{**SGD, "then": {"name": "sgd", "lr": -INF}, "switch_after_steps": 5}]), r"'arms\[0\]\.then\.lr' .* got -inf"),
        (mnist(arms=[{**SGD, "model": {"powerprop_alpha": INF}}]), r"'arms\[0\]\.model\.powerprop_alpha' must be a finite"),
        (mnist(arms=[{**SGD, "l1_penalty": NAN}]), r"'arms\[0\]\.l1_penalty' must be a finite"),
        (mnist(pruning={"keep_fractions": [0.5, NAN]}), r"'pruning\.keep_fractions\[1\]' must be a finite"),
        (text(train={"mlm_probability": NAN}), r"'train\.mlm_probability' must be a finite"),
        (text(model={"config_overrides": {"layer_norm_eps": INF}}), r"'model\.config_overrides\.layer_norm_eps' must be a finite"),
    ],
)
def test_non_finite_values(tmp_path, capsys, raw, message):
    assert_refused(tmp_path, capsys, raw, message)


def test_non_finite_value_from_set(tmp_path, capsys):
    assert_refused(tmp_path, capsys, MNIST, r"'arms\[0\]\.lr' must be a finite number, got nan", "arms.sgd.lr=.nan")


# ------------------------------------------------------------------ 2. optimizer option types


@pytest.mark.parametrize(
    "arm, message",
    [
        ({"name": "sgd", "momentum": "high"}, r"'arms\[0\]\.momentum' must be a number like 0 \(the default\), got str 'high'"),
        ({"name": "muon", "momentum": "high"}, r"'arms\[0\]\.momentum' must be a number like 0\.95 \(the default\)"),
        ({"name": "sgd", "lr": "0.1"}, r"'arms\[0\]\.lr' must be a number like 0\.001 \(the default\), got str '0\.1'"),
        ({"name": "sgd", "lr": True}, r"'arms\[0\]\.lr' must be a number .* got bool True"),
        ({"name": "adamw", "betas": 0.9}, r"'arms\[0\]\.betas' must be a list of 2 numbers like \[0\.9, 0\.999\] .* got float 0\.9"),
        ({"name": "adamw", "betas": [0.9]}, r"'arms\[0\]\.betas' must be a list of 2 numbers"),
        ({"name": "adamw", "betas": [0.9, "x"]}, r"'arms\[0\]\.betas' must be a list of 2 numbers"),
        ({"name": "adamw", "amsgrad": "yes"}, r"'arms\[0\]\.amsgrad' must be a boolean like false \(the default\), got str"),
        ({"name": "sgd", "nesterov": 1}, r"'arms\[0\]\.nesterov' must be a boolean"),
        ({"name": "shampoo", "precondition_frequency": 2.5}, r"'arms\[0\]\.precondition_frequency' must be an integer like 10"),
        ({"name": "shampoo", "grafting": 3}, r"'arms\[0\]\.grafting' must be a string like \"adam\" \(the default\), got int 3"),
        ({**SGD, "then": {"name": "adamw", "betas": 0.9}, "switch_after_steps": 5}, r"'arms\[0\]\.then\.betas' must be a list"),
        ({"name": "lion"}, r"'arms\[0\]' \(lion\): unknown optimizer 'lion'"),
    ],
)
def test_wrong_option_types(tmp_path, capsys, arm, message):
    assert_refused(tmp_path, capsys, mnist(arms=[arm]), message)


def test_any_construction_error_is_one_line_naming_the_arm(monkeypatch):
    def explodes(params, lr=0.1):
        raise RuntimeError("boom\nsecond line of an internal error")

    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY, "explodes": explodes})
    with pytest.raises(UserError, match=r"^config key 'arms\[0\]' \(explodes\): boom$"):
        config_from_dict(mnist(arms=[{"name": "explodes"}]))


# ------------------------------------------------------------------ 3. impossible sizes


@pytest.mark.parametrize(
    "raw, message",
    [
        (mnist(data={"stream": "class_incremental", "validation_size": 59999}),
         r"'data\.validation_size' \(59999\) leaves a task at most 1 training image\(s\), fewer than train\.batch_size \(64\)"),
        (mnist(data={"validation_size": 59950}), r"'data\.validation_size' \(59950\) leaves a task at most 50 training"),
        (mnist(data={"validation_size": 60000}), r"'data\.validation_size' must be in 1\.\.59999"),
        (mnist(data={"max_train_examples": 10}), r"'data\.max_train_examples' \(10\) is below train\.batch_size \(64\)"),
        (mnist(data={"num_tasks": 0}), r"'data\.num_tasks' must be >= 1"),
        (mnist(data={"stream": "class_incremental", "num_tasks": 6}), "at most 5 tasks"),
        (mnist(train={"batch_size": 0}), r"'train\.batch_size' must be >= 1"),
        (mnist(train={"eval_batch_size": -1}), r"'train\.eval_batch_size' must be >= 1"),
        (mnist(model={"hidden_sizes": [100, 0]}), r"'model\.hidden_sizes' must be a non-empty list of positive"),
        (mnist(seeds=[-1]), r"'seeds' must be integers in 0\.\.4294967295, got \[-1\]"),
        (mnist(seeds=[2**32]), r"'seeds' must be integers in 0\.\."),
        (mnist(seeds=[0, 0]), "'seeds' must not repeat a seed"),
        (mnist(seeds=[]), "'seeds' must list at least one seed"),
        (mnist(arms=[]), "'arms' must list at least one arm"),
        (mnist(arms=[SGD, SGD]), r"'arms' labels must be unique, got \['sgd', 'sgd'\]"),
        (text(train={"batch_size": 0}), r"'train\.batch_size' must be >= 1"),
        (text(model={"config_overrides": {"num_attention_heads": 3}}),
         r"'model\.config_overrides' give a hidden_size \(128\) that is a multiple of num_attention_heads \(3\)"),
        (text(model={"config_overrides": {"hidden_size": 0}}), r"'model\.config_overrides\.hidden_size' must be >= 1"),
        (text(model={"config_overrides": {"num_hidden_layers": 2.5}}), r"'model\.config_overrides\.num_hidden_layers' must be an integer"),
    ],
)
def test_impossible_sizes(tmp_path, capsys, raw, message):
    assert_refused(tmp_path, capsys, raw, message)


def test_building_a_task_with_no_validation_images_is_a_user_error(mnist_arrays):
    """A split that loading cannot rule out (the validation images of a class pair depend on the seed)."""
    assert list(TRAIN_CLASS_COUNTS) == [int(n) for n in torch.bincount(torch.as_tensor(mnist_arrays.y_train))]
    with pytest.raises(UserError, match=r"task 'classes .*' gets \d+ training and 0 validation images"):
        build_tasks("class_incremental", mnist_arrays, 5, seed=0, validation_size=1)


def test_a_task_split_that_fails_for_a_seed_stops_before_the_run_directory(tiny_config, tmp_path, capsys):
    config = tiny_config(data={"stream": "class_incremental", "num_tasks": 2, "validation_size": 1})
    output = tmp_path / "run"
    assert main(["run", str(config), "--output", str(output)]) == 2
    assert "0 validation images" in capsys.readouterr().err and not output.exists()


# ------------------------------------------------------------------ 4. text sources, tokenizer, cache


def _file(tmp_path, name, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _domain(path, **options):
    return {"data": {"domains": [{"name": "mine", "local_files": [path], **options}]}}


WORDS = "enough words on this line for a document\n"
TEXT_SOURCES = {
    "missing": (lambda d: _domain(str(d / "nothing.txt")), r"'data\.domains\[0\]': text domain 'mine': local file '.*nothing\.txt' does not exist"),
    "empty": (lambda d: _domain(_file(d, "e.txt", "")), r"local file '.*e\.txt' is empty"),
    "blank": (lambda d: _domain(_file(d, "b.txt", "\n  \n")), r"local file '.*b\.txt' is empty"),
    "directory": (lambda d: _domain(str(d)), r"local file '.*' is a directory"),
    "device": (lambda d: _domain("/dev/null"), r"local file '/dev/null' is not a regular file"),
    "binary": (lambda d: _domain(_file(d, "bin.txt", b"ok text\n\xff\xfe\x00")), r"local file '.*bin\.txt' is not UTF-8 text at byte 8"),
    "jsonl not json": (lambda d: _domain(_file(d, "x.jsonl", '{"text": "' + WORDS.strip() + '"}\n{not json\n')),
                       r"x\.jsonl' is neither JSON Lines nor a JSON array"),
    "jsonl no field": (lambda d: _domain(_file(d, "f.jsonl", '{"body": "words"}\n')), r"f\.jsonl' record 0 has no string field 'text'; set text_field"),
    "json not objects": (lambda d: _domain(_file(d, "a.json", "[1, 2]")), r"a\.json' record 0 has no string field 'text'"),
    "text_field": (lambda d: _domain(_file(d, "g.jsonl", '{"text": "words"}\n'), text_field="body"), r"record 0 has no string field 'body'"),
    "sample_by": (lambda d: _domain(_file(d, "s.txt", WORDS), sample_by="sentence"),
                  r"sample_by 'sentence' is not supported; use line, paragraph, document"),
    "format": (lambda d: _domain(_file(d, "s.txt", WORDS), format="csv"), r"format 'csv' is not supported; use text, json, parquet"),
    "glob matches nothing": (lambda d: _domain(str(d / "shard-*.txt")), r"local_files pattern '.*shard-\*\.txt' matches no file"),
    "mixed formats": (lambda d: {"data": {"domains": [{"name": "mine", "local_files": [_file(d, "a.txt", WORDS), _file(d, "b.jsonl", "{}")]}]}},
                      r"local_files mixes formats \(json, text\)"),
    "not parquet": (lambda d: _domain(_file(d, "p.parquet", WORDS)), r"local file '.*p\.parquet' is not a readable Parquet file"),
    "streamed dedupe": (lambda d: _domain(_file(d, "s.txt", WORDS), streaming=True, dedupe=True), "dedupe needs the whole corpus"),
    "budget": (lambda d: _domain(_file(d, "s.txt", WORDS), max_tokens=0), "max_tokens must be a positive number"),
    "builtin options": (lambda d: {"data": {"domains": [{"name": "news", "streaming": True}]}}, "built-in domains take no options"),
    "unknown key": (lambda d: {"data": {"domains": [{"name": "mine", "local_file": "x.txt"}]}}, r"unknown key\(s\) local_file"),
    "no source": (lambda d: {"data": {"domains": [{"name": "mine"}]}}, "give local_files or hf_dataset"),
    "builtin": (lambda d: {"data": {"domains": ["news", "poetry"]}}, r"'data\.domains\[1\]': text domain 'poetry' is not one of"),
    "tokenizer missing": (lambda d: {"data": {"tokenizer": str(d / "tok")}}, r"'data\.tokenizer': tokenizer directory .*tok does not exist"),
    "tokenizer empty": (lambda d: {"data": {"tokenizer": str(d)}}, r"'data\.tokenizer': cannot load a tokenizer from .*: it holds neither"),
    "cache is a file": (lambda d: {"data": {"cache_dir": _file(d, "cache", "x")}}, r"'data\.cache_dir': cache folder '.*cache' is a file"),
    "cache under a file": (lambda d: {"data": {"cache_dir": _file(d, "f", "x") + "/cache"}},
                           r"'data\.cache_dir': cache folder .* cannot be created: '.*f' is a file"),
    "override unknown": (lambda d: {"model": {"config_overrides": {"hiden_size": 64}}},
                         r"'model\.config_overrides\.hiden_size' is not a BertConfig field; valid ones include hidden_size"),
    "override set by recipe": (lambda d: {"model": {"config_overrides": {"max_position_embeddings": 64}}},
                               r"'model\.config_overrides\.max_position_embeddings' is set by the recipe \(from data\.max_length\)"),
    "override type": (lambda d: {"model": {"config_overrides": {"hidden_act": 3}}},
                      r"'model\.config_overrides\.hidden_act' must be a string like \"gelu\""),
}


@pytest.mark.parametrize("kind", TEXT_SOURCES)
def test_text_sources(tmp_path, capsys, kind):
    make, message = TEXT_SOURCES[kind]
    files = tmp_path / "files"
    files.mkdir()
    change = make(files)
    assert_refused(tmp_path, capsys, text(change.pop("data", None), **change), message)


def test_mnist_cache_dir_that_is_a_file(tmp_path, capsys):
    cache = _file(tmp_path, "cache", "x")
    assert_refused(tmp_path, capsys, mnist(data={"cache_dir": cache}), r"'data\.cache_dir': cache folder '.*cache' is a file")


def test_a_readable_jsonl_head_passes_and_a_long_file_is_only_sampled(tmp_path):
    """Only the head is checked at load: a bad record far down surfaces when the domain is read."""
    lines = [f'{{"text": "record {i} {WORDS.strip()}"}}' for i in range(3000)] + ["{broken"]
    path = _file(tmp_path, "long.jsonl", "\n".join(lines))
    assert config_from_dict(text(**_domain(path))).data.domain_names() == ["mine"]


# ------------------------------------------------------------------ 5. config file problems


CONFIG_FILES = {
    "not utf-8": (lambda d: _file(d, "c.yaml", b"arms: [{name: sgd}]\n# caf\xe9\n"), r"config file '.*c\.yaml' is not UTF-8 text at byte 25 \(save it as UTF-8\)"),
    "directory": (lambda d: str(d), r"config file '.*' is a directory"),
    "device": (lambda d: "/dev/null", r"config file '/dev/null' is not a regular file"),
    "empty": (lambda d: _file(d, "c.yaml", ""), r"config file '.*c\.yaml' is empty; a run config needs at least arms"),
    "comments only": (lambda d: _file(d, "c.yaml", "# nothing yet\n"), r"config file '.*c\.yaml' is empty"),
    "missing": (lambda d: str(d / "nope.yaml"), r"config file '.*nope\.yaml' does not exist"),
    "under a file": (lambda d: _file(d, "f", "x") + "/c.yaml", r"config file '.*f/c\.yaml' cannot be read \(Not a directory\)"),
    "not yaml": (lambda d: _file(d, "c.yaml", "arms: [\n"), r"config file '.*c\.yaml' is not valid YAML at line 2"),
    "a list": (lambda d: _file(d, "c.yaml", "- sgd\n"), "a run config must be a YAML mapping"),
}


@pytest.mark.parametrize("kind", CONFIG_FILES)
def test_config_file_problems(tmp_path, capsys, kind):
    make, message = CONFIG_FILES[kind]
    files = tmp_path / "files"
    files.mkdir()
    path = make(files)
    with pytest.raises(UserError, match=message):
        load_config(path)
    assert re.search(message, refused(tmp_path, capsys, path))


# ------------------------------------------------------------------ 6. --set shapes


@pytest.mark.parametrize(
    "override, message",
    [
        ("name.foo=1", r"--set name\.foo: 'name' is str 'config', not a section; set 'name' itself"),
        ("train.batch_size.x=1", r"--set train\.batch_size\.x: 'train\.batch_size' is int 64, not a section"),
        ("seeds.0.x=1", r"'seeds\.0' is int 0, not a section"),
        ("arms.nosuch.lr=1", r"--set arms\.nosuch\.lr: 'arms' has no entry with index or label 'nosuch'"),
        ("arms.5.lr=1", r"'arms' has no entry with index or label '5'"),
        ("arms.lr=1", r"'arms' has no entry with index or label 'lr'"),
        ("=3", r"--set expects key=value with a dotted key .* got '=3'"),
        (".lr=3", r"--set expects key=value with a dotted key"),
        ("train..batch_size=3", r"--set expects key=value with a dotted key"),
        ("train.max_epochs", r"--set expects key=value"),
        ("train=3", r"--set train: 'train' is a section; set one of its keys, e.g\. --set train\.<key>=VALUE"),
        ("arms.0=fast", r"--set arms\.0: 'arms\.0' is a section"),
        ("arms.0.lr=[1", r"--set arms\.0\.lr: value '\[1' is not valid YAML"),
        ("model=3", r"config key 'model' must be a mapping, got 3"),
    ],
)
def test_set_shapes(tmp_path, capsys, override, message):
    assert_refused(tmp_path, capsys, MNIST, message, override)


# ------------------------------------------------------------------ 7. names


@pytest.mark.parametrize(
    "raw, message",
    [
        (mnist(name="../../../x"), r"'name' must be letters, digits and '_\.\+-', .*it names the run directory.*got '\.\./\.\./\.\./x'"),
        (mnist(name="a/b"), r"'name' must be letters, .* got 'a/b'"),
        (mnist(name=".hidden"), r"'name' must be letters, .* got '\.hidden'"),
        (mnist(name=""), r"'name' must be letters, .* got ''"),
        (mnist(name=5), r"'name' must be str, got int 5"),
        (mnist(arms=[{**SGD, "label": "../up"}]), r"'arms\[0\]\.label' must be letters, digits and '_\.\+-'"),
        (text(name="x y"), r"'name' must be letters, .* got 'x y'"),
    ],
)
def test_names(tmp_path, capsys, raw, message):
    assert_refused(tmp_path, capsys, raw, message)


def test_name_from_the_file_name_is_checked_too(tmp_path, capsys):
    path = tmp_path / "my run.yaml"
    path.write_text(yaml.safe_dump(MNIST))
    assert re.search(r"'name' .*the default is the config file's name\), got 'my run'", refused(tmp_path, capsys, path))
    assert_refused(tmp_path, capsys, MNIST, r"'name' must be letters, .* got '\.\./x'", "name=../x")


# ------------------------------------------------------------------ tune --write


@pytest.mark.parametrize(
    "target, message",
    [
        ("{tmp}", r"--write '.*' is a directory; name a YAML file"),
        ("{tmp}/nowhere/tuned.yaml", r"--write '.*tuned\.yaml': folder '.*nowhere' does not exist"),
    ],
)
def test_tune_write_target_is_checked_before_training(tmp_path, capsys, target, message):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(MNIST))
    out = tmp_path / "out"
    argv = ["tune", str(path), "--grid", "sgd=0.1,0.2", "--output", str(out), "--write", target.format(tmp=tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err and not out.exists()
