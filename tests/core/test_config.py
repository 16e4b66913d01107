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
