"""The recipe table: a recipe's name -> its config class and its implementation.

This is the one place the driver, config loading and ``basinlab report`` look a recipe up.
Entries are import paths, so loading a config does not import the training stack. A new
recipe is one module (a config class and a :class:`basinlab.launch.driver.Recipe`) plus
one entry here.
"""

from __future__ import annotations

import importlib
from typing import Any

from basinlab.errors import UserError

RECIPES: dict[str, tuple[str, str]] = {
    "mnist": ("basinlab.launch.mnist_config:MnistRunConfig", "basinlab.launch.mnist_recipe:MnistRecipe"),
    "text": ("basinlab.launch.text_config:TextRunConfig", "basinlab.launch.text_recipe:TextRecipe"),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _entry(recipe: str) -> tuple[str, str]:
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise UserError(f"config key 'recipe' must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return RECIPES[recipe]


def config_class(recipe: str) -> type:
    return _load(_entry(recipe)[0])


def recipe_class(recipe: str) -> type:
    return _load(_entry(recipe)[1])
