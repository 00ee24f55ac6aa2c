"""The value checks every config section uses: each failure is a one-line ``UserError`` that
names the dotted config key and what it must be."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from typing import Any

from basinlab.errors import UserError


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"config key '{key}' {message}")


def keyed(key: str, check: typing.Callable[..., Any], *args: Any) -> Any:
    """Run a data-layer check; its UserError is prefixed with the config key that supplied the value."""
    try:
        return check(*args)
    except UserError as err:
        raise UserError(f"config key '{key}': {err}") from None


def one_line(err: BaseException) -> str:
    """An exception as one line (its first), for messages the CLI prints on one line."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_label(value: Any, key: str, why: str) -> None:
    """Labels and the run name become folder names: no '/', no leading '.', nothing a shell would mangle."""
    if not isinstance(value, str) or not LABEL.match(value):
        raise UserError(f"config key '{key}' must be letters, digits and '_.+-', starting with a letter or digit ({why}), got {value!r}")


def check_finite(value: Any, key: str) -> None:
    """No NaN or infinity anywhere in the raw config (they pass every range check)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key '{key}' must be a finite number, got {value}")
    if isinstance(value, dict):
        for name, item in value.items():
            check_finite(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_finite(item, f"{key}[{i}]")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expectation(default: Any, integer: bool) -> tuple[typing.Callable[[Any], bool], str] | None:
    """What a value must be to stand in for ``default``, and how to say so (None: anything goes)."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "a boolean"
    if is_number(default):
        return ((lambda v: is_number(v) and isinstance(v, int)), "an integer") if integer else (is_number, "a number")
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    if isinstance(default, (tuple, list)) and all(map(is_number, default)):
        n = len(default)
        return (lambda v: isinstance(v, (tuple, list)) and len(v) == n and all(map(is_number, v))), f"a list of {n} numbers"
    return None


def check_like_default(value: Any, default: Any, key: str, integer: bool = False) -> None:
    """``value`` must have the kind of ``default`` (a number for a number, a list of as many numbers
    for a tuple); an option whose default is None takes anything."""
    expected = expectation(default, integer)
    if expected is not None and not expected[0](value):
        raise UserError(
            f"config key '{key}' must be {expected[1]} like {json.dumps(default)} (the default), "
            f"got {type(value).__name__} {value!r}"
        )


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a type annotation (int, float, bool, str, Any, dict, list[T], Optional[T])."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return value
    if origin is typing.Union:  # Optional[T]
        if value is None:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
        raise UserError(
            f"config key '{key}' must be {annotation.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def section(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"config key '{prefix}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}.{unknown[0]}'; valid keys in '{prefix}': {', '.join(sorted(fields))}"
        )
    return cls(**{k: coerce(v, hints[k], f"{prefix}.{k}") for k, v in raw.items()})
