import enum
from dataclasses import dataclass, field

import pytest
import torch

from torchslim.core.config import BaseConfig, config_from_dict, read_mapping
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector


class Mode(str, enum.Enum):
    A = "a"
    B = "b"


@dataclass
class InnerCfg(BaseConfig):
    bits: int = 4


@dataclass
class DemoCfg(BaseConfig):
    VERSION = 2
    mode: Mode = Mode.A
    dtype: torch.dtype = torch.bfloat16
    ratio: float = 0.5
    inner: InnerCfg = field(default_factory=InnerCfg)
    names: tuple[str, ...] = ("x",)
    selector: Selector = field(default_factory=Selector)
    group: int | None = None

    def validate(self):
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"ratio must be in (0, 1], got {self.ratio}")

    @classmethod
    def migrate(cls, data, version):
        if version == 1 and "sparsity" in data:
            data["ratio"] = data.pop("sparsity")
        return data


def test_round_trip_dict_json_yaml(tmp_path):
    cfg = DemoCfg(mode=Mode.B, dtype=torch.float16, inner=InnerCfg(bits=3), names=("a", "b"),
                  selector=Selector(include=("re:.*proj",), exclude=("lm_head",)), group=128)
    d = cfg.to_dict()
    assert d["_type"] == "DemoCfg" and d["_version"] == 2
    assert d["_data"]["dtype"] == "float16" and d["_data"]["mode"] == "b"
    assert config_from_dict(d) == cfg
    for suffix in (".json", ".yaml"):
        p = tmp_path / f"c{suffix}"
        cfg.save(p)
        assert BaseConfig.load(p) == cfg


def test_validation_at_construction():
    with pytest.raises(ConfigError, match="ratio"):
        DemoCfg(ratio=2.0)
    with pytest.raises(ConfigError, match="ratio"):
        config_from_dict({"_type": "DemoCfg", "_data": {"ratio": 0.0}})


def test_unknown_key_and_type_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key 'ratioo'.*valid keys"):
        config_from_dict({"_type": "DemoCfg", "_data": {"ratioo": 0.5}})
    with pytest.raises(ConfigError, match="unknown config type 'Nope'"):
        config_from_dict({"_type": "Nope", "_data": {}})
    with pytest.raises(ConfigError, match="'c' is not one of a, b"):
        config_from_dict({"_type": "DemoCfg", "_data": {"mode": "c"}})
    with pytest.raises(ConfigError, match="not a torch dtype"):
        config_from_dict({"_type": "DemoCfg", "_data": {"dtype": "float99"}})
    with pytest.raises(ConfigError, match="expected int"):
        config_from_dict({"_type": "InnerCfg", "_data": {"bits": "four"}})


def test_versions_migrate_and_refuse_newer():
    old = config_from_dict({"_type": "DemoCfg", "_version": 1, "_data": {"sparsity": 0.25}})
    assert old.ratio == 0.25
    with pytest.raises(ConfigError, match="newer"):
        config_from_dict({"_type": "DemoCfg", "_version": 3, "_data": {}})


def test_plain_mapping_with_expected_type_and_int_to_float():
    cfg = DemoCfg.from_dict({"ratio": 1})
    assert isinstance(cfg, DemoCfg) and cfg.ratio == 1.0 and isinstance(cfg.ratio, float)


def test_read_mapping_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_mapping(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_mapping(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_mapping(lst)


# -- hostile config files: one clear error, the field path, bounded values ---------------------------
import math  # noqa: E402



@pytest.mark.parametrize("data,match", [
    ({"_type": 5}, "'_type' must be a config class name, got 5"),
    ({"_type": "PerGroup", "_version": "1"}, "'_version' must be a positive integer, got '1'"),
    ({"_type": "PerGroup", "_version": 0}, "'_version' must be a positive integer, got 0"),
    ({"_type": "PerGroup", "_version": -4}, "positive integer, got -4"),
    ({"_type": "PerGroup", "_version": 1.9}, "positive integer, got 1.9"),
    ({"_type": "PerGroup", "_version": True}, "positive integer, got True"),
    ({"_type": "PerGroup", "_data": [1]}, "'_data' must be a mapping, got \\[1\\]"),
    ({"_type": "PerGroup", "_data": {}, "size": 3}, "unexpected key 'size' next to '_data'"),
    ({"_type": "PerGroup", "_secret": 1}, "unexpected key '_secret'"),
    ({"_type": "GPTQConfig", "weight": {"granularity": {"_type": "PerGroup", "size": 0}}},
     "GPTQConfig.weight.granularity: PerGroup.size must be between 2 and 65536, got 0"),
    ({"_type": "GPTQConfig", "weight": None}, "GPTQConfig.weight: expected WeightOnlyConfig, got null"),
    ({"_type": "GPTQConfig", "n_samples": 10**6}, "n_samples must be between 1 and 65536"),
    ({"_type": "GPTQConfig", "n_samples": 2**63}, "n_samples is out of range"),
    ({"_type": "GPTQConfig", "calibration_dtype": "int8"}, "calibration_dtype must be bfloat16, float16 or float32"),
    ({"_type": "PerGroup", "size": 10**12}, "PerGroup.size must be between 2 and 65536"),
    ({"_type": "KL", "stride": 0}, "KL.stride must be between 1"),
    ({"_type": "KL", "bins": -3}, "KL.bins must be between 16"),
    ({"_type": "UnstructuredConfig", "seed": 2**70}, "seed is out of range"),
    ({"_type": "Ternary", "threshold": float("nan")}, "Ternary.threshold must be a finite number"),
    ({"_type": "Ternary", "threshold": 1e9}, "Ternary.threshold must be between"),
    ({"_type": "Codebook", "iters": 0}, "Codebook.iters must be between 1 and 1000"),
    ({"_type": "WeightOnlyConfig", "selector": "lm_head"}, "selector: expected a mapping for Selector"),
    ({"_type": "WeightOnlyConfig", "selector": {"include": 5}}, "selector include must be a rule or a list"),
    ({"_type": "WeightOnlyConfig", "selector": {"overrides": ["a"]}}, "overrides must map rules to configs"),
    ({"_type": "WeightOnlyConfig", "selector": {"overrides": {"a": 5}}}, "override 'a' must be a config mapping"),
])
def test_bad_config_values_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_a_single_include_rule_is_accepted_and_errors_cut_huge_values():
    cfg = config_from_dict({"_type": "WeightOnlyConfig", "selector": {"include": "type:Linear", "exclude": "lm_head"}})
    assert cfg.selector.exclude == ("lm_head",)
    with pytest.raises(ConfigError) as e:
        config_from_dict({"_type": "PerGroup", "size": "x" * 100_000})
    assert len(str(e.value)) < 300


def test_hostile_files_are_refused_quickly(tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    t = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        read_mapping(bomb)
    assert time.perf_counter() - t < 1.0
    latin = tmp_path / "l.json"
    latin.write_bytes(b'{"_type": "PerGroup", "size": "\xe9"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_mapping(latin)
    deep = tmp_path / "d.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply|not valid JSON"):
        read_mapping(deep)
    assert not math.isnan(0.0)
