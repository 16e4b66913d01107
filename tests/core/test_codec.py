import enum
from dataclasses import dataclass

import pytest
import torch

from torchslim.core.codec import decode, decode_dataclass, encode, jsonable, shown
from torchslim.core.errors import ConfigError


class Color(str, enum.Enum):
    RED = "red"


@dataclass
class Inner:
    n: int = 1


@dataclass
class Outer:
    inner: Inner
    items: list[Inner]
    dtype: torch.dtype = torch.float32
    color: Color = Color.RED
    pair: tuple[int, int] | None = None


def test_round_trip_of_nested_dataclasses_enums_dtypes():
    o = Outer(Inner(2), [Inner(3)], torch.bfloat16, Color.RED, (1, 2))
    data = encode(o)
    assert data == {"inner": {"n": 2}, "items": [{"n": 3}], "dtype": "bfloat16", "color": "red", "pair": [1, 2]}
    assert decode_dataclass(Outer, data, "o") == o


def test_errors_name_the_field_path_and_cut_long_values():
    with pytest.raises(ConfigError, match=r"o.items\[0\].n: expected int, got 'x'"):
        decode_dataclass(Outer, {"inner": {}, "items": [{"n": "x"}]}, "o")
    with pytest.raises(ConfigError, match="o.inner is missing"):
        decode_dataclass(Outer, {"items": []}, "o")
    with pytest.raises(ConfigError, match="unknown key 'zz'"):
        decode_dataclass(Outer, {"inner": {}, "items": [], "zz": 1}, "o")
    assert decode_dataclass(Outer, {"inner": {"n": 1, "new": 0}, "items": [], "zz": 1}, "o", lenient=True).inner.n == 1
    with pytest.raises(ConfigError, match="expected 2 values"):
        decode([1, 2, 3], tuple[int, int], "p")
    with pytest.raises(ConfigError, match="expected int, got True"):
        decode(True, int, "b")
    assert len(shown("x" * 10_000)) <= 80


def test_jsonable_makes_anything_printable():
    assert jsonable({"a": (1, float("nan")), 2: torch.float32}) == {"a": [1, None], "2": "torch.float32"}
