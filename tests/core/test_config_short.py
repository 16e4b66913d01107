"""Config files in the short form recipes use: written by to_yaml, read back equal, parsed by content not name."""
from __future__ import annotations

import pytest
import yaml

import torchslim
from torchslim.core.config import BaseConfig, config_from_dict, config_types, read_mapping
from torchslim.core.errors import ConfigError
from torchslim.quantization import GPTQConfig, IntFormat, PerChannel, WeightOnlyConfig


def _defaults() -> list[BaseConfig]:
    out = []
    for name, cls in sorted(config_types().items()):
        try:
            out.append(cls())
        except (TypeError, ConfigError):
            continue                     # a config with required fields
    return out


@pytest.mark.parametrize("config", _defaults(), ids=lambda c: type(c).__name__)
def test_every_default_config_round_trips_through_the_short_form(config) -> None:
    short = config.to_short_dict()
    assert set(short) <= {"_type", "_version"}, short          # nothing differs from the defaults
    assert config_from_dict(yaml.safe_load(config.to_yaml())) == config


def test_the_short_form_keeps_only_what_differs() -> None:
    cfg = GPTQConfig(weight=WeightOnlyConfig(format=IntFormat(8, symmetric=True), granularity=PerChannel()),
                     n_samples=16)
    short = cfg.to_short_dict()
    assert short == {"_type": "GPTQConfig", "n_samples": 16,
                     "weight": {"_type": "WeightOnlyConfig", "format": {"_type": "IntFormat"},
                                "granularity": {"_type": "PerChannel"}}}
    assert config_from_dict(short) == cfg
    assert len(cfg.to_yaml()) < len(yaml.safe_dump(cfg.to_dict())) / 2


@pytest.mark.parametrize("name", ["int4.yaml", "int4.yml", "int4.cfg", "int4", "int4.json"])
def test_a_config_file_is_read_whatever_its_name(tmp_path, name) -> None:
    cfg = torchslim.CastConfig()
    path = tmp_path / name
    path.write_text(cfg.to_json() if name.endswith(".json") else cfg.to_yaml())
    assert config_from_dict(read_mapping(path)) == cfg


def test_json_text_in_a_yaml_named_file_and_errors_name_the_format(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text('{"_type": "CastConfig"}')
    assert config_from_dict(read_mapping(tmp_path / "a.yaml")) == torchslim.CastConfig()
    (tmp_path / "b.cfg").write_text("_type: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_mapping(tmp_path / "b.cfg")
