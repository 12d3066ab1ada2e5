"""Typed params: a section becomes a frozen dataclass; unknown keys and wrong types are errors."""
from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from converters.errors import ParamsError
from pipeline.params import from_mapping, load_section


@dataclasses.dataclass(frozen=True)
class Inner:
    scale: list[int] = dataclasses.field(default_factory=lambda: [1, 2])


@dataclasses.dataclass(frozen=True)
class Section:
    n: int = 3
    ratio: float = 0.5
    name: str = "x"
    flag: bool = False
    inner: Inner = Inner()
    maybe: int | None = None
    mode: Literal["a", "b"] = "a"


def test_defaults_and_values():
    s = from_mapping(Section, {"n": 4, "ratio": 1, "inner": {"scale": [3, 4]}, "maybe": None},
                     section="s")
    assert s == Section(n=4, ratio=1.0, inner=Inner([3, 4]))
    assert isinstance(s.ratio, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n = 5  # type: ignore[misc]


@pytest.mark.parametrize("data, message", [
    ({"m": 1}, "unknown key 's.m'"),                      # typo at the top
    ({"inner": {"scal": [1]}}, "unknown key 's.inner.scal'"),  # typo nested
    ({"n": "3"}, "'s.n' must be an integer"),             # a string is not an int
    ({"n": True}, "'s.n' must be an integer"),            # nor is a bool
    ({"flag": 1}, "'s.flag' must be true or false"),      # nor is an int a bool
    ({"inner": {"scale": 3}}, "'s.inner.scale' must be a list"),
    ({"mode": "c"}, "'s.mode' must be one of a, b, got 'c'"),  # not a choice
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ParamsError, match=message.replace("[", r"\[")):
        from_mapping(Section, data, section="s")


def test_missing_section_means_defaults(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("other: {a: 1}\n")
    assert load_section(Section, "s", p) == Section()


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_section(Section, "s", tmp_path / "nope.yaml")


def test_scientific_notation_is_a_number_as_dvc_reads_it(tmp_path):
    """PyYAML's YAML 1.1 reads 1e-4 as a string; DVC (ruamel, YAML 1.2) as a number: a
    learning rate written so must be the number DVC tracks, not a type error."""
    p = tmp_path / "params.yaml"
    p.write_text("s:\n  ratio: 1e-4\n  name: '1e5'\n  maybe: 2\n")
    assert load_section(Section, "s", p) == Section(ratio=1e-4, name="1e5", maybe=2)
    p.write_text("s:\n  ratio: 2.5E+3\n")
    assert load_section(Section, "s", p).ratio == 2500.0
