"""Bottleneck adapters on the tiny Llama and BERT: placed after the sub-layers that feed the residual stream
(Houlsby: attention and feed-forward outputs; Pfeiffer: feed-forward only), start as the identity, train only
their own parameters, refuse to merge, and round-trip through an artifact."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _peft_helpers import outputs, tensors
from torch import nn

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.peft import BottleneckBranch, BottleneckConfig, branches, merge_
from torchslim.peft.branch import layer_name
from torchslim.zoo.tiny import build_tiny_bert, build_tiny_llama, tiny_bert, tiny_llama

ARCHS = ("llama", "bert")
# the layers each placement adapts in block 0, per architecture
PLACED = {
    ("llama", "houlsby"): ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"],
    ("llama", "pfeiffer"): ["model.layers.0.mlp.down_proj"],
    ("bert", "houlsby"): ["encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense"],
    ("bert", "pfeiffer"): ["encoder.layer.0.output.dense"],
    ("gpt2", "houlsby"): ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"],
    ("gpt2", "pfeiffer"): ["transformer.h.0.mlp.c_proj"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()


BUILD = {"llama": lambda: build_tiny_llama(0), "bert": lambda: build_tiny_bert(0), "gpt2": _tiny_gpt2}


def _prepare(model: nn.Module, config: BottleneckConfig) -> dict[str, Any]:
    return config.prepare(model, torchslim.ApplyContext()).records[0]


@pytest.fixture(scope="module", params=ARCHS)
def trained(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "llama":
        lm = tiny_llama(0)
    else:
        lm = tiny_bert(0)
        lm.task.set_reference(lambda: build_tiny_bert(1))     # another model to imitate: the loss starts above 0
    held = next(lm.task.train_batches(8, seed=123))
    with torch.no_grad():
        loss_before = lm.task.loss(lm.model, held).item()
    base = {n: t.detach().clone() for n, t in tensors(lm.model).items()}
    torchslim.finetune_(lm.model, BottleneckConfig(size=8), task=lm.task,
                        train=torchslim.TrainConfig(steps=30, batch_size=4, lr=3e-3, progress=False))
    with torch.no_grad():
        loss_after = lm.task.loss(lm.model, held).item()
    return {"lm": lm, "base": base, "loss": (loss_before, loss_after), "inputs": lm.task.example_inputs(2, 32)}


def test_training_lowers_the_loss_and_changes_only_the_adapters(trained: dict[str, Any]) -> None:
    before, after = trained["loss"]
    assert after < before - 0.05
    model = trained["lm"].model
    now = tensors(model)
    added = {n for n in now if ".bottleneck_default." in n}
    assert added and set(now) - added == set(trained["base"])
    assert [n for n, t in trained["base"].items() if not torch.equal(t, now[n])] == []
    ups = [t for n, t in now.items() if n.endswith(".up.weight")]
    assert ups and all(t.abs().sum() > 0 for t in ups)          # the zero-initialised up projections learned


def test_merging_is_refused_in_one_line(trained: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"is a bottleneck adapter, .* cannot be merged: keep it as a branch"):
        merge_(trained["lm"].model)
    assert len(branches(trained["lm"].model, "default", "bottleneck")) == 4     # nothing was touched


def test_the_trained_model_round_trips_through_an_artifact(trained: dict[str, Any], tmp_path: Path) -> None:
    model, inputs = trained["lm"].model, trained["inputs"]
    torchslim.save(model, tmp_path / "bottleneck")
    loaded = torchslim.load(tmp_path / "bottleneck")
    found = branches(loaded, "default", "bottleneck")
    assert [n for n, _ in found] == [n for n, _ in branches(model, "default", "bottleneck")]
    assert all(isinstance(b, BottleneckBranch) and b.size == 8 for _, b in found)
    assert torch.equal(outputs(loaded, inputs), outputs(model, inputs))


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("arch", [*ARCHS, "gpt2"])
def test_placement_adapts_the_sub_layers_that_feed_the_residual_stream(arch: str, placement: str) -> None:
    model = BUILD[arch]()
    inputs = {"input_ids": torch.randint(5, 60, (2, 16), generator=torch.Generator().manual_seed(0))}
    base = outputs(model, inputs)
    record = _prepare(model, BottleneckConfig(size=4, placement=placement))
    layers = [layer_name(n) for n, _ in branches(model, "default", "bottleneck")]
    assert [n for n in layers if ".0." in n] == PLACED[(arch, placement)]
    assert record["layers"] == len(layers) == 2 * len(PLACED[(arch, placement)])     # two blocks
    features = {n: m.features for n, m in branches(model)}
    assert record["trainable_params"] == sum(2 * f * 4 + 4 + f for f in features.values())
    assert torch.equal(outputs(model, inputs), base)            # up starts at zero: the identity


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_each_activation_changes_the_output_once_up_is_nonzero(activation: str) -> None:
    model = build_tiny_llama(0)
    inputs = {"input_ids": torch.arange(5, 21).reshape(1, 16)}
    base = outputs(model, inputs)
    _prepare(model, BottleneckConfig(size=4, activation=activation, placement="pfeiffer"))
    with torch.no_grad():
        for _, b in branches(model):
            b.up.weight.fill_(0.1)
    assert (outputs(model, inputs) - base).abs().max() > 1e-3


def test_a_selector_matching_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="BottleneckConfig matched no layer"):
        _prepare(build_tiny_llama(0), BottleneckConfig(selector=torchslim.Selector(include=("re:.*\\.nothing",))))


def test_bad_settings_are_errors() -> None:
    with pytest.raises(ConfigError, match="placement must be one of houlsby, pfeiffer, got 'middle'"):
        BottleneckConfig(placement="middle")
    with pytest.raises(ConfigError, match="unknown bottleneck activation 'tanh'; one of relu, gelu, silu"):
        BottleneckConfig(activation="tanh")
    with pytest.raises(ConfigError, match="BottleneckConfig.size must be between 1"):
        BottleneckConfig(size=0)
    with pytest.raises(ConfigError, match="places adapters by architecture: cannot find the transformer blocks"):
        _prepare(nn.Sequential(nn.Linear(4, 4)), BottleneckConfig())
