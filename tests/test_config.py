"""Run configs: shipped configs load, overrides work, every mistake names its key."""

from pathlib import Path

import pytest

from basinlab.errors import UserError
from basinlab.launch.config import config_from_dict, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/mnist/*.yaml"))
MINIMAL = {"arms": [{"name": "sgd", "lr": 0.1}]}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.name == path.stem and config.arms


def test_overrides_by_key_label_and_index(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("arms:\n  - {name: sgd, lr: 0.1}\n  - {name: adamw, label: aw, lr: 0.001}\n")
    config = load_config(
        path,
        ["train.max_epochs=7", "seeds=[3, 4]", "arms.sgd.momentum=0.9", "arms.1.lr=0.01", "data.max_train_examples=null"],
    )
    assert config.name == "c" and config.train.max_epochs == 7 and config.seeds == [3, 4]
    assert config.arms[0].options == {"lr": 0.1, "momentum": 0.9}
    assert config.arms[1].label == "aw" and config.arms[1].options == {"lr": 0.01}
    assert load_config(path, ["arms.aw.lr=0.5"]).arms[1].options["lr"] == 0.5


def test_ints_are_accepted_for_float_options_and_round_trip():
    config = config_from_dict({**MINIMAL, "data": {"num_tasks": 3}})
    again = config_from_dict(config.to_yaml())
    assert again == config


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**MINIMAL, "trian": {}}, "unknown config key 'trian'"),
        ({**MINIMAL, "train": {"max_epoch": 3}}, "unknown config key 'train.max_epoch'; valid keys in 'train': .*max_epochs"),
        ({**MINIMAL, "train": {"batch_size": "64"}}, "'train.batch_size' must be int, got str"),
        ({**MINIMAL, "train": {"batch_size": True}}, "'train.batch_size' must be int, got bool"),
        ({**MINIMAL, "train": {"batch_size": 0}}, "'train.batch_size' must be >= 1"),
        ({**MINIMAL, "model": {"hidden_sizes": 100}}, "'model.hidden_sizes' must be a list"),
        ({**MINIMAL, "data": {"stream": "rotated"}}, "'data.stream' must be one of permuted, class_incremental"),
        ({**MINIMAL, "data": {"stream": "class_incremental", "num_tasks": 6}}, "at most 5 tasks"),
        ({**MINIMAL, "seeds": []}, "'seeds' must list at least one seed"),
        ({**MINIMAL, "seeds": [1, 1]}, "must not repeat"),
        ({"arms": []}, "must list at least one arm"),
        ({"arms": [{"name": "lion"}]}, r"arms\[0\]' \(lion\): unknown optimizer 'lion'; available: adamw"),
        ({"arms": [{"name": "sgd", "lrr": 1}]}, "has no option 'lrr'"),
        ({"arms": [{"name": "adamw", "lr": -1.0}]}, "Invalid learning rate"),
        ({"arms": [{"lr": 0.1}]}, "must be a mapping with a 'name'"),
        ({"arms": [{"name": "sgd"}, {"name": "sgd"}]}, "labels must be unique"),
        ({"arms": [{"name": "sgd", "label": "a/b"}]}, "label' must be letters"),
        ({"arms": [{"name": "sgd", "then": {"name": "sgd"}}]}, r"arms\[0\]' \(sgd\) needs both 'then' and 'switch_after_steps'"),
        ({"arms": [{"name": "sgd", "switch_after_steps": 5}]}, "needs both 'then' and 'switch_after_steps' or neither"),
        ({"arms": [{"name": "sgd", "then": "adamw", "switch_after_steps": 5}]}, r"arms\[0\]\.then' must be a mapping with a 'name'"),
        ({"arms": [{"name": "sgd", "then": {"name": "sgd", "lrr": 1}, "switch_after_steps": 5}]}, r"arms\[0\]\.then' \(sgd\): optimizer 'sgd' has no option 'lrr'"),
        ({"arms": [{"name": "sgd", "then": {"name": "adamw", "lr": -1.0}, "switch_after_steps": 5}]}, r"arms\[0\]\.then' \(sgd\): Invalid learning rate"),
        ({"arms": [{"name": "sgd", "then": {"name": "sgd"}, "switch_after_steps": 0}]}, r"arms\[0\]\.switch_after_steps' must be >= 1"),
        ({"recipe": "text", "arms": [{"name": "sgd", "then": {"name": "sgd"}, "switch_after_steps": 5}]}, "then/switch_after_steps, which only the mnist recipe supports"),
        ([1, 2], "must be a YAML mapping"),
    ],
)
def test_mistakes_name_the_key(raw, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(raw)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("arms: [\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(broken)
    good = tmp_path / "good.yaml"
    good.write_text("arms: [{name: sgd, lr: 0.1}]\n")
    with pytest.raises(UserError, match="expects key=value"):
        load_config(good, ["train.max_epochs"])
    with pytest.raises(UserError, match="'arms' has no entry with index or label 'adamw'"):
        load_config(good, ["arms.adamw.lr=1"])
    with pytest.raises(UserError, match="unknown config key 'train.epochs'"):
        load_config(good, ["train.epochs=3"])
