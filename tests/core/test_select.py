import pytest
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector


def model():
    m = nn.Module()
    m.layers = nn.ModuleList()
    for _ in range(2):
        blk = nn.Module()
        blk.q_proj, blk.k_proj, blk.down_proj = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        blk.norm = nn.LayerNorm(4)
        m.layers.append(blk)
    m.lm_head = nn.Linear(4, 8)
    return m


def names(sel, m):
    return [n for n, _ in sel.select(m)]


def test_default_selects_all_linears():
    assert len(names(Selector(), model())) == 7


def test_exact_regex_type_callable_include_exclude():
    m = model()
    assert names(Selector(include=("lm_head",)), m) == ["lm_head"]
    assert names(Selector(include=(r"re:layers\.\d+\.(q|k)_proj",)), m) == [
        "layers.0.q_proj", "layers.0.k_proj", "layers.1.q_proj", "layers.1.k_proj"]
    assert names(Selector(include=(nn.LayerNorm,)), m) == ["layers.0.norm", "layers.1.norm"]
    assert names(Selector(include=("type:LayerNorm",)), m) == ["layers.0.norm", "layers.1.norm"]
    assert names(Selector(include=(lambda n, mod: n.endswith("down_proj"),)), m) == [
        "layers.0.down_proj", "layers.1.down_proj"]
    assert names(Selector(exclude=("lm_head", "re:.*k_proj")), m) == [
        "layers.0.q_proj", "layers.0.down_proj", "layers.1.q_proj", "layers.1.down_proj"]
    # regex must match the whole name
    assert names(Selector(include=("re:q_proj",)), m) == []


def test_override_precedence_exact_over_regex_over_type():
    m = model()
    sel = Selector(overrides={nn.Linear: "type", "re:.*down_proj": "regex", "layers.1.down_proj": "exact",
                              "lm_head": None})
    got = {n: v for n, _, v in sel.resolve(m, "default")}
    assert got["layers.0.down_proj"] == "regex"
    assert got["layers.1.down_proj"] == "exact"
    assert got["layers.0.q_proj"] == "type"
    assert "lm_head" not in got  # None means skip


def test_serialization_round_trip_and_errors():
    sel = Selector(include=("re:.*proj", nn.LayerNorm), exclude=("lm_head",), overrides={"layers.0.q_proj": None})
    d = sel.to_dict()
    assert d["include"] == ["re:.*proj", "type:LayerNorm"]
    assert Selector.from_dict(d) == sel
    with pytest.raises(ConfigError, match="cannot be serialized"):
        Selector(include=(lambda n, m: True,)).to_dict()
    with pytest.raises(ConfigError, match="unknown module type"):
        Selector(include=("type:Nope",))
    with pytest.raises(ConfigError, match="bad regular expression"):
        Selector(include=("re:(",))
    with pytest.raises(ConfigError, match="unknown selector key"):
        Selector.from_dict({"includes": []})
