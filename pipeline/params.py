"""Typed params: one params.yaml section becomes one frozen dataclass (DESIGN.md, convention 3).

Unknown keys are an error naming the key; values are checked against the field's type
(int, float, bool, str, lists and nested dataclasses; floats finite: ``.nan`` and ``.inf`` are
errors); missing keys take the dataclass default.
A typo in params.yaml is never a silent default.

Ranges and formats are declared on the dataclass field, next to its default, as field
metadata: ``field(default=8, metadata={"min": 1})``; ``"max"``; ``"pattern"`` (a regular
expression every string, or every string item of a list, must match in full; ``"example"``
shows one in the error).

YAML is read as YAML 1.2 (and DVC, through ruamel) reads numbers: ``1e-4`` is a float, where
PyYAML's YAML 1.1 rules want ``1.0e-4`` and would give the string ``"1e-4"``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from converters.core.errors import ParamsError

T = TypeVar("T")
DEFAULT_PARAMS = Path("params.yaml")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """PyYAML's safe loader (libyaml's where PyYAML has it: params.yaml parses in 2 ms
    instead of 15-20, on every command's start), with YAML 1.2's floats in scientific
    notation."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with ``1e-4`` a number (module docstring)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def read_params_file(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError("params file not found", file=path) from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"not UTF-8 text (byte {exc.start})", file=path) from None
    except OSError as exc:
        raise ParamsError(f"cannot read the params file ({exc.strerror})", file=path) from None
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"malformed YAML{where}", file=path) from None
    if not isinstance(data, dict):
        raise ParamsError("top level must be a mapping of sections", file=path)
    return data


def _coerce(value: Any, tp: Any, key: str, file: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, file)
            except ParamsError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            allowed = ", ".join(map(str, choices))
            raise ParamsError(f"key '{key}' must be one of {allowed}, got {value!r}", file=file)
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ParamsError(f"key '{key}' must be a list, got {value!r}", file=file)
        items = [_coerce(v, item_tp, f"{key}[{i}]", file) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"key '{key}' must be a mapping, got {value!r}", file=file)
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{key}.{k}", file) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, section=key, file=file)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"key '{key}' must be true or false, got {value!r}", file=file)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"key '{key}' must be an integer, got {value!r}", file=file)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"key '{key}' must be a number, got {value!r}", file=file)
        if not math.isfinite(value):      # .nan / .inf: no bound or size means that
            raise ParamsError(f"key '{key}' must be a finite number, got {value!r}", file=file)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"key '{key}' must be a string, got {value!r}", file=file)
        return value
    raise TypeError(f"unsupported params field type {tp!r} for {key}")  # a bug, not user input


_POST = ("score_thr", "nms_iou", "min_area", "overlap_min_fraction", "largest_component",
         "containment_max", "cross_class_iou")
#: keys that moved or went (an old params.yaml gets one line naming the new place, never a
#: silent default)
MOVED: dict[str, str] = {
    **{f"{section}.{key}": f"moved to 'postprocess.{key}' (one section for evaluate and propose)"
       for section in ("evaluate", "propose") for key in _POST},
    "propose.match_iou": "is no longer read (propose never used it): remove it",
}
#: fields of a dataclass that moved, whatever section it sits in (a preset's name varies)
MOVED_FIELDS: dict[str, str] = {
    "Preset.options": "moved to its models' blocks: 'models.<model>.options' (nested YAML or "
                      "dotted keys; each train stage depends on its own model's block)",
    "Preset.model_img_scale": "moved to its models' blocks: 'models.<model>.img_scale'",
}


def from_mapping(cls: type[T], data: Any, *, section: str, file: str | Path = DEFAULT_PARAMS) -> T:
    """Build ``cls`` (a frozen dataclass) from a mapping, rejecting unknown keys by name."""
    file = Path(file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"section '{section}' must be a mapping", file=file)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    for key in unknown:
        if f"{section}.{key}" in MOVED:
            raise ParamsError(f"key '{section}.{key}' {MOVED[f'{section}.{key}']}", file=file)
        if f"{cls.__name__}.{key}" in MOVED_FIELDS:
            raise ParamsError(f"key '{section}.{key}' {MOVED_FIELDS[f'{cls.__name__}.{key}']}",
                              file=file)
    if unknown:
        known = ", ".join(sorted(fields))
        raise ParamsError(f"unknown key '{section}.{unknown[0]}' (known keys: {known})", file=file)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{section}.{name}", file)
        _check(kwargs[name], fields[name].metadata, f"{section}.{name}", file)
    missing = [n for n, f in fields.items()
               if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ParamsError(f"missing key '{section}.{missing[0]}'", file=file)
    return cls(**kwargs)


def _check(value: Any, rules: Any, key: str, file: Path) -> None:
    """Apply a field's declared ``min`` / ``max`` / ``pattern`` (module docstring)."""
    if not rules:
        return
    values = value if isinstance(value, list) else [value]
    for i, v in enumerate(values):
        where = f"{key}[{i}]" if isinstance(value, list) else key
        if "min" in rules and isinstance(v, (int, float)) and v < rules["min"]:
            raise ParamsError(f"key '{where}' must be >= {rules['min']}, got {v!r}", file=file)
        if "max" in rules and isinstance(v, (int, float)) and v > rules["max"]:
            raise ParamsError(f"key '{where}' must be <= {rules['max']}, got {v!r}", file=file)
        if "pattern" in rules and isinstance(v, str) and not re.fullmatch(rules["pattern"], v):
            example = f" (e.g. {rules['example']!r})" if "example" in rules else ""
            raise ParamsError(f"key '{where}' is malformed: {v!r}{example}", file=file)


def load_section(cls: type[T], section: str, path: str | Path = DEFAULT_PARAMS) -> T:
    """Load ``section`` of params.yaml into ``cls``; a missing section means all defaults."""
    data = read_params_file(path)
    return from_mapping(cls, data.get(section), section=section, file=path)


def stage_params(cls: type[T], section: str, path: str | Path = DEFAULT_PARAMS) -> T:
    """The params of one stage: ``section`` of the params file as ``cls``, or all of
    ``cls``'s defaults when there is no params file (a command used outside a project)."""
    return load_section(cls, section, path) if Path(path).exists() else cls()
