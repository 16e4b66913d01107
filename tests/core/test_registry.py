from dataclasses import dataclass

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.config import BaseConfig
from torchslim.core.errors import ConfigError
from torchslim.core.registry import apply_, get_handler, register_handler


@dataclass
class ScaleCfg(BaseConfig):
    family = "pruning"
    factor: float = 2.0


@register_handler(ScaleCfg)
def _scale(model, config, **kwargs):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(config.factor)
    return model


@dataclass
class SubScaleCfg(ScaleCfg):
    pass


@dataclass
class OrphanCfg(BaseConfig):
    pass


def test_handler_lookup_by_type_and_mro():
    assert get_handler(ScaleCfg()) is _scale
    assert get_handler(SubScaleCfg()) is _scale
    with pytest.raises(ConfigError, match="no technique is registered for OrphanCfg"):
        get_handler(OrphanCfg())


def test_verbs_apply_in_place_and_guard_family():
    m = nn.Linear(2, 2, bias=False)
    w = m.weight.detach().clone()
    out = torchslim.prune_(m, ScaleCfg(3.0))
    assert out is m and torch.equal(m.weight, w * 3)
    with pytest.raises(ConfigError, match="cannot be applied by the quantization verb"):
        torchslim.quantize_(m, ScaleCfg())
    with pytest.raises(ConfigError, match="expected a torchslim config"):
        apply_(m, {"factor": 2})


def test_register_rejects_non_config():
    with pytest.raises(TypeError):
        register_handler(dict)
