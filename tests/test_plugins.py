"""Users' own optimizers: a `plugins:` module or a `basinlab.optimizers` entry point makes a config arm of them."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from basinlab.errors import UserError
from basinlab.launch.config import config_from_dict
from basinlab.optim import build_optimizer, registry

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = textwrap.dedent('''
    import torch
    from basinlab.optim import register_optimizer


    class MyOpt(torch.optim.SGD):
        """SGD under another name."""


    register_optimizer("myopt", MyOpt)
''')
FACTORY = textwrap.dedent('''
    import torch


    def factory(params, lr=0.01, momentum=0.0):
        return torch.optim.SGD(params, lr=lr, momentum=momentum)


    def register():
        from basinlab.optim import register_optimizer

        register_optimizer("myopt_registered", torch.optim.AdamW)
''')
MODULES = ("myopt_plugin", "myopt_factory", "myopt_broken")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path with the plug-in module and an installed-looking distribution whose
    entry points name a module, a factory and a registration function; registrations made in the test are undone after it."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "myopt_plugin.py").write_text(PLUGIN)
    (folder / "myopt_factory.py").write_text(FACTORY)
    (folder / "myopt_broken.py").write_text("raise RuntimeError('plug-in exploded')\n")
    info = folder / "myopt_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myopt-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nmyopt_ep = myopt_factory:factory\nmyopt_mod = myopt_plugin\n"
        "myopt_reg = myopt_factory:register\n"
    )
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_GROUPS", dict(registry._GROUPS))
    monkeypatch.setattr(registry, "_LOADED_ENTRY_POINTS", set())
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in MODULES:
        sys.modules.pop(name, None)


def _builds(config) -> torch.optim.Optimizer:
    return config.arms[0].build(torch.nn.Linear(3, 2).parameters())


def test_plugins_key_imports_the_module_before_the_arms_are_checked(plugin_dir):
    config = config_from_dict({"plugins": ["myopt_plugin"], "arms": [{"name": "myopt", "lr": 0.1}]})
    assert config.plugins == ["myopt_plugin"] and config.to_yaml()["plugins"] == ["myopt_plugin"]
    assert type(_builds(config)).__name__ == "MyOpt"
    assert config_from_dict(config.to_yaml()) == config


def test_a_spawned_worker_unpickling_the_config_imports_its_plugins(plugin_dir):
    config = config_from_dict({"plugins": ["myopt_plugin"], "arms": [{"name": "myopt", "lr": 0.1}]})
    del registry._REGISTRY["myopt"], sys.modules["myopt_plugin"]  # what a fresh process lacks
    registry._LOADED_ENTRY_POINTS.add(("myopt_mod", "myopt_plugin"))  # so the entry point cannot bring it back
    assert type(_builds(pickle.loads(pickle.dumps(config)))).__name__ == "MyOpt"


def test_entry_points_register_a_factory_a_module_and_a_registration_function(plugin_dir):
    assert {"myopt_ep", "myopt", "myopt_registered"} <= set(registry.available_optimizers())
    assert "myopt_reg" not in registry.available_optimizers()  # the function registered, it is no optimizer
    config = config_from_dict({"arms": [{"name": "myopt_ep", "lr": 0.2, "momentum": 0.5}, {"name": "myopt"}]})
    assert _builds(config).defaults["momentum"] == 0.5
    assert type(build_optimizer("myopt", torch.nn.Linear(2, 2).parameters(), lr=0.1)).__name__ == "MyOpt"
    assert isinstance(build_optimizer("myopt_registered", torch.nn.Linear(2, 2).parameters()), torch.optim.AdamW)


def test_entry_points_load_lazily_and_once(plugin_dir):
    assert "myopt_ep" not in registry._REGISTRY  # nothing is loaded until a name is missing
    config_from_dict({"arms": [{"name": "myopt_ep"}]})
    factory = registry._REGISTRY["myopt_ep"]
    registry.load_entry_points()
    assert registry._REGISTRY["myopt_ep"] is factory and "myopt_factory" in sys.modules


def test_no_plugin_config_saves_no_plugins_key():
    """Runs saved before the key existed compare equal on --resume."""
    assert "plugins" not in config_from_dict({"arms": [{"name": "sgd", "lr": 0.1}]}).to_yaml()


@pytest.mark.parametrize(
    "plugins, message",
    [
        (["no_such_plugin"], r"'plugins\[0\]': cannot import 'no_such_plugin': No module named 'no_such_plugin'; is it installed"),
        (["myopt_broken"], r"'plugins\[0\]': cannot import 'myopt_broken': plug-in exploded; is it installed"),
        ([""], r"'plugins\[0\]': cannot import ''"),
        ("myopt_plugin", "'plugins' must be a list"),
    ],
)
def test_a_plugin_that_does_not_import_is_one_line(plugin_dir, plugins, message):
    with pytest.raises(UserError, match=message) as info:
        config_from_dict({"plugins": plugins, "arms": [{"name": "sgd"}]})
    assert "\n" not in str(info.value)


def test_a_broken_entry_point_is_named(plugin_dir):
    (plugin_dir / "myopt_plugins-0.1.dist-info" / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nbad = myopt_broken\n"
    )
    with pytest.raises(UserError, match=r"arms\[0\]' \(nope\): entry point bad = myopt_broken .*plug-in exploded"):
        config_from_dict({"arms": [{"name": "nope"}]})


def test_the_command_line_runs_a_plugin_optimizer(plugin_dir, tmp_path, mnist_cache_dir):
    config = tmp_path / "plugged.yaml"
    config.write_text(yaml.safe_dump({
        "plugins": ["myopt_plugin"],
        "seeds": [0],
        "data": {"num_tasks": 1, "max_train_examples": 256, "validation_size": 1000, "probe_size": 10,
                 "cache_dir": str(mnist_cache_dir)},
        "train": {"batch_size": 64, "max_epochs": 1},
        "arms": [{"name": "myopt", "lr": 0.05}],
        "log_with": "none",
    }))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "basinlab", "run", str(config), "--output", str(out)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["arms"]["myopt"]["name"] == "myopt"
