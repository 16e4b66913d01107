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
def _scale(model, config, ctx):
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


def test_unknown_keyword_is_an_error_and_unused_ones_a_warning():
    m = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="unexpected argument 'calib'"):
        torchslim.prune_(m, ScaleCfg(), calib=[])
    with pytest.warns(UserWarning, match="ScaleCfg does not use calibration: ignored"):
        torchslim.prune_(m, ScaleCfg(), calibration=[{"x": 1}])
    with pytest.raises(ConfigError, match="not both"):
        torchslim.prune_(m, ScaleCfg(), torchslim.ApplyContext(), calibration=[])


@dataclass
class SwapCfg(BaseConfig):
    family = "quantization"
    width: int = 3


@register_handler(SwapCfg, uses=("calibration",))
def _swap(model, config, ctx):
    ctx.record.metrics["seen"] = len(ctx.calibration_data or [])
    model[0] = nn.Linear(4, config.width)
    model[2] = nn.Linear(config.width, 2)
    return model


def test_every_apply_appends_a_history_entry_with_what_it_touched():
    from torchslim.core.state import state_of

    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    torchslim.quantize_(m, SwapCfg(width=3), calibration=[{}, {}])
    torchslim.prune_(m, ScaleCfg(2.0))
    h = state_of(m).history
    assert [e.name for e in h] == ["SwapCfg", "ScaleCfg"] and [e.index for e in h] == [0, 1]
    assert h[0].config == SwapCfg(width=3).to_dict() and h[0].metrics == {"seen": 2}
    assert h[0].touched["by_type"] == {"Linear": 2} and h[0].touched["params_after"] == 4 * 3 + 3 + 3 * 2 + 2
    assert h[0].seconds >= 0 and state_of(m).layer_stage == {"0": 0, "2": 0}


def test_a_layer_stage_that_changes_nothing_is_logged(caplog):
    @dataclass
    class NoopCfg(BaseConfig):
        family = "quantization"

    register_handler(NoopCfg)(lambda model, config, ctx: model)
    with caplog.at_level("WARNING", logger="torchslim"):
        torchslim.quantize_(nn.Linear(2, 2), NoopCfg())
    assert "NoopCfg changed no layer" in caplog.text
