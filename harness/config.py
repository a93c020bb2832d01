"""Dataclass configs: the paper's defaults, named presets, ``key=value`` overrides, JSON round trip.

A method declares ``@dataclass class MyConfig(TrainConfig)`` with one commented field per
hyperparameter (default = the paper's value) and a ``PRESETS`` dict beside it::

    PRESETS = {"paper": {}, "quick": {"total_steps": 2_000, "batch_size": 64}}

``build_config(MyConfig, PRESETS, "quick", ["lr=3e-4"])`` applies the preset, then the overrides.
The resolved config is saved as ``config.json`` in the run directory and ``load_config`` rebuilds
exactly that object, so the saved file reproduces the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from grp_workbench.harness.device import DEVICE_CHOICES, PRECISION_CHOICES
from grp_workbench.harness.errors import HarnessError

C = TypeVar("C", bound="TrainConfig")


@dataclass
class TrainConfig:
    """Fields every run has; method configs inherit and add their own."""

    seed: int = 0  # one seed drives python, numpy, torch and environments
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda[:N] | mps
    precision: str = "auto"  # autocast dtype: auto (bf16 on a capable GPU, else fp32) | fp32 | bf16 | fp16
    deterministic: bool = False  # forbid nondeterministic kernels; bitwise-identical reruns and resumes
    total_steps: int = 10_000  # training length, in the unit the method's update() counts
    eval_every: int = 1_000  # evaluate every N steps (and always at the end)
    log_every: int = 100  # write training metrics every N steps
    checkpoint_every: int = 1_000  # save a resumable checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2  # older checkpoints are deleted

    def __post_init__(self) -> None:
        for name in ("total_steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise HarnessError(f"config {name}={getattr(self, name)} must be a positive integer.")
        if self.device.partition(":")[0] not in DEVICE_CHOICES:
            raise HarnessError(f"config device={self.device!r} must be one of {', '.join(DEVICE_CHOICES)}.")
        if self.precision not in PRECISION_CHOICES:
            raise HarnessError(
                f"config precision={self.precision!r} must be one of {', '.join(PRECISION_CHOICES)}."
            )


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key_error(cls: type, key: str, where: str) -> HarnessError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return HarnessError(
        f"{where}: {cls.__name__} has no field {key!r}.{hint} Valid keys: {', '.join(names)}."
    )


def _coerce(value: Any, type_: Any, key: str) -> Any:
    """Convert ``value`` (a string from the command line, or JSON) to the field's declared type."""
    origin = typing.get_origin(type_)
    args = typing.get_args(type_)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except HarnessError as err:
                errors.append(str(err))
        raise HarnessError("; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise HarnessError(f"{key}={value!r} must be one of {', '.join(map(repr, args))}.")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise HarnessError(f"{key}={value!r} must be a JSON list such as [1, 2]: {err}") from None
        if not isinstance(value, (list, tuple)):
            raise HarnessError(f"{key}={value!r} must be a list such as [1, 2].")
        item = args[0] if args else Any
        items = [v if item is Any or item is Ellipsis else _coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if type_ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise HarnessError(f"{key}={value!r} must be true or false.")
    if type_ in (int, float):
        if isinstance(value, bool):
            raise HarnessError(f"{key}={value!r} must be a number, not a boolean.")
        try:
            number = float(value) if type_ is float else int(float(value) if "e" in str(value) else value)
        except (TypeError, ValueError):
            raise HarnessError(f"{key}={value!r} must be {'a float' if type_ is float else 'an integer'}.") from None
        if type_ is int and isinstance(value, float) and not value.is_integer():
            raise HarnessError(f"{key}={value!r} must be an integer.")
        return number
    if type_ is str:
        return str(value)
    if type_ is Any:
        return value
    raise HarnessError(f"{key}: fields of type {type_} cannot be set from the command line.")


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "batch_size=64"]`` → dict; a pair without ``=`` is an error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise HarnessError(f"override {pair!r} must look like key=value (for example --set lr=3e-4).")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(config: C, overrides: dict[str, Any], where: str = "override") -> C:
    """A copy of ``config`` with typed overrides; ``__post_init__`` re-validates the result.

    Fields a config filled in itself from other fields (listed in its ``derived_fields`` attribute,
    e.g. A2PR's per-family hyperparameters from the dataset) are reset so the copy derives them
    again from its own values: a copy with another dataset must not keep the first one's values."""
    types_ = _field_types(type(config))
    changes = {key: None for key in getattr(config, "derived_fields", ())}
    for key, value in overrides.items():
        if key not in types_:
            raise _unknown_key_error(type(config), key, where)
        changes[key] = _coerce(value, types_[key], key)
    return dataclasses.replace(config, **changes)


def build_config(
    cls: type[C], presets: dict[str, dict[str, Any]], preset: str, overrides: list[str] | dict[str, Any] = ()
) -> C:
    """Paper defaults ← preset ← command-line overrides."""
    if preset not in presets:
        raise HarnessError(
            f"unknown preset {preset!r} for {cls.__name__}; choose one of {', '.join(sorted(presets))}."
        )
    config = apply_overrides(cls(), presets[preset], where=f"preset {preset!r}")
    if not isinstance(overrides, dict):
        overrides = parse_overrides(list(overrides))
    return apply_overrides(config, overrides)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Strict inverse of ``config_to_dict``: an unknown key means the file is for another method."""
    return apply_overrides(cls(), data, where="saved config")


def diff_configs(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    a, b = config_to_dict(old), config_to_dict(new)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def config_keys_help(cls: type) -> list[str]:
    """One line per config key, ``key = default: comment``, with the comment of the field's
    definition in the source (for ``train --help``)."""
    import inspect
    import re

    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE):
            comments[match[1]] = match[2].strip()
    lines = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        lines.append(f"{field.name} = {default!r}" + (f": {comments[field.name]}" if field.name in comments else ""))
    return lines
