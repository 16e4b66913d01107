"""IA3 on the tiny Llama and BERT: trains only its vectors, merges exactly into float layers (re-quantizing an
int8 base), round-trips through an artifact, and has exactly peft's trainable-parameter count."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from _peft_helpers import outputs, tensors
from torch import nn

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.peft import IA3Branch, IA3Config, branches, merge_, unmerge_
from torchslim.peft.branch import layer_name
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig
from torchslim.zoo.tiny import build_tiny_bert, build_tiny_llama, tiny_bert, tiny_llama

ARCHS = ("llama", "bert")
# the int8 base: every projection inside the blocks (IA3's layers among them)
BLOCK_LINEARS = {"llama": r"re:.*(self_attn|mlp)\..*_proj", "bert": r"re:encoder\.layer\.\d+\..*(query|key|value|dense)"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _loaded(arch: str) -> Any:
    if arch == "llama":
        return tiny_llama(0)
    lm = tiny_bert(0)
    lm.task.set_reference(lambda: build_tiny_bert(1))     # another model to imitate: the loss starts well above 0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                                # BERT starts with zero biases: merges must scale real ones
        for m in lm.model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return lm


def _trained(arch: str, int8: bool) -> dict[str, Any]:
    lm = _loaded(arch)
    if int8:
        torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                                                       selector=torchslim.Selector(include=(BLOCK_LINEARS[arch],))))
    held = next(lm.task.train_batches(8, seed=123))
    with torch.no_grad():
        loss_before = lm.task.loss(lm.model, held).item()
    base = {n: t.detach().clone() for n, t in tensors(lm.model).items()}
    torchslim.finetune_(lm.model, IA3Config(), task=lm.task,
                        train=torchslim.TrainConfig(steps=30, batch_size=4, lr=3e-2, progress=False))
    with torch.no_grad():
        loss_after = lm.task.loss(lm.model, held).item()
    return {"lm": lm, "base": base, "loss": (loss_before, loss_after), "inputs": lm.task.example_inputs(2, 32)}


@pytest.fixture(scope="module", params=ARCHS)
def trained(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _trained(request.param, int8=False)


def test_training_lowers_the_loss_and_changes_only_the_ia3_vectors(trained: dict[str, Any]) -> None:
    before, after = trained["loss"]
    assert after < before - 0.01
    model = trained["lm"].model
    now = tensors(model)
    vectors = {n for n in now if ".ia3_default." in n}
    assert vectors and all(n.endswith(".vector") for n in vectors)
    assert set(now) - vectors == set(trained["base"])
    changed = [n for n, t in trained["base"].items() if not torch.equal(t, now[n])]
    assert changed == []
    assert all(not torch.equal(now[n], torch.ones_like(now[n])) for n in vectors)


def test_merge_gives_the_unmerged_outputs_and_unmerge_restores_the_base(trained: dict[str, Any]) -> None:
    model, inputs = copy.deepcopy(trained["lm"].model), trained["inputs"]
    adapted = outputs(model, inputs)
    n_branches = len(branches(model, "default"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = merge_(model, "default", keep=True)
    assert report["layers"] == {"exact": n_branches}
    assert (outputs(model, inputs) - adapted).abs().max().item() <= 1e-5
    assert unmerge_(model, "default") == n_branches
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())   # weights and biases, bit for bit
    assert torch.equal(outputs(model, inputs), adapted)
    merge_(model, "default")
    assert branches(model) == [] and (outputs(model, inputs) - adapted).abs().max().item() <= 1e-5


def test_the_trained_model_round_trips_through_an_artifact(trained: dict[str, Any], tmp_path: Path) -> None:
    model, inputs = trained["lm"].model, trained["inputs"]
    torchslim.save(model, tmp_path / "ia3")
    loaded = torchslim.load(tmp_path / "ia3")
    found = branches(loaded, "default", "ia3")
    assert len(found) == len(branches(model, "default", "ia3")) and all(isinstance(b, IA3Branch) for _, b in found)
    assert torch.equal(outputs(loaded, inputs), outputs(model, inputs))


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_into_an_int8_base_requantizes_close_to_the_adaptedoutputs(arch: str) -> None:
    run = _trained(arch, int8=True)
    model, inputs = run["lm"].model, run["inputs"]
    before, after = run["loss"]
    assert after < before - 0.01
    now = tensors(model)
    assert [n for n, t in run["base"].items() if not torch.equal(t, now[n])] == []   # packed codes and scales too
    n_branches = len(branches(model, "default", "ia3"))
    adapted = outputs(model, inputs)
    torchslim.peft.set_adapter(model, None)
    effect = (outputs(model, inputs) - adapted).norm()
    torchslim.peft.set_adapter(model, "default")
    report = merge_(model)
    assert report["layers"] == {"requantized": n_branches} and n_branches >= 6
    assert report["update_error"]["max"] < 0.1
    error = (outputs(model, inputs) - adapted).norm()
    assert error / adapted.norm() < 5e-3 and error < 0.1 * effect


def _peft_trainable(model: nn.Module, **kwargs: Any) -> int:
    import peft

    return peft.get_peft_model(model, peft.IA3Config(**kwargs)).get_nb_trainable_parameters()[0]


def _ours(model: nn.Module, config: IA3Config) -> dict[str, Any]:
    return config.prepare(model, torchslim.ApplyContext()).records[0]


@pytest.mark.parametrize("build", [build_tiny_llama, build_tiny_bert], ids=ARCHS)
def test_default_targets_have_peft_trainable_parameter_count(build: Any) -> None:
    ours = _ours(build(0), IA3Config())
    assert ours["trainable_params"] == _peft_trainable(build(0)) > 0
    assert 0 < ours["input_scaled"] < ours["layers"]


def test_the_same_explicit_targets_have_peft_trainable_parameter_count() -> None:
    config = IA3Config(selector=torchslim.Selector(include=(r"re:.*\.(q_proj|up_proj|down_proj)",)),
                       feedforward=r"re:.*\.(up_proj|down_proj)")
    ours = _ours(build_tiny_llama(0), config)
    theirs = _peft_trainable(build_tiny_llama(0), target_modules=["q_proj", "up_proj", "down_proj"],
                             feedforward_modules=["up_proj", "down_proj"])
    assert ours["trainable_params"] == theirs == 2 * (64 + 64 + 128) and ours["input_scaled"] == 4


def test_a_selector_matching_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="IA3Config matched no layer"):
        _ours(build_tiny_llama(0), IA3Config(selector=torchslim.Selector(include=("re:.*\\.nothing_here",))))


def test_a_feedforward_rule_matching_none_of_the_selected_layers_is_an_error() -> None:
    with pytest.raises(ConfigError, match="feedforward matched none of the 4 selected layers"):
        _ours(build_tiny_llama(0), IA3Config(selector=torchslim.Selector(include=(r"re:.*\.(k|v)_proj",)),
                                             feedforward=r"re:.*\.gate_proj"))


def test_a_model_without_default_targets_needs_a_selector() -> None:
    with pytest.raises(ConfigError, match="no default layers for a Sequential: pass selector="):
        _ours(nn.Sequential(nn.Linear(4, 4)), IA3Config())
    with pytest.raises(ConfigError, match="bad regular expression"):
        IA3Config(feedforward="re:(")


@pytest.mark.parametrize("feedforward", [r"re:.*\.down_proj", torchslim.Selector(include=(r"re:.*\.up_proj",))])
def test_the_config_round_trips_through_its_short_form(feedforward: Any) -> None:
    import yaml

    from torchslim.core.config import config_from_dict

    config = IA3Config(adapter="task_a", merge=True, feedforward=feedforward)
    assert config_from_dict(yaml.safe_load(config.to_yaml())) == config


def _tiny_distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    return DistilBertModel(DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64)).eval()


def test_a_model_type_peft_has_no_row_for_uses_the_architecture_roles() -> None:
    model = _tiny_distilbert()
    ours = _ours(model, IA3Config())
    layers = sorted(n.rpartition(".")[0].removeprefix("transformer.layer.") for n, _ in branches(model))
    assert layers == ["0.attention.k_lin", "0.attention.v_lin", "0.ffn.lin2",
                      "1.attention.k_lin", "1.attention.v_lin", "1.ffn.lin2"]
    assert ours["input_scaled"] == 2 and ours["trainable_params"] == 2 * (32 + 32 + 64)


def _tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()


def _convs() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()


@pytest.mark.parametrize("kind", ["gpt2", "conv"])
def test_merge_is_exact_on_conv1d_and_convolution_layers(kind: str) -> None:
    if kind == "gpt2":      # Conv1D layers with biases: c_attn scales its output, mlp.c_proj its input
        model, config = _tiny_gpt2(), IA3Config()
        inputs = {"input_ids": torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))}
    else:                   # the first convolution scales its output channels, the second its input channels
        model, config = _convs(), IA3Config(selector=torchslim.Selector(include=(nn.Conv2d,)), feedforward="2")
        inputs = {"input": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))}
    record = _ours(model, config)
    assert 0 < record["input_scaled"] < record["layers"]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, b in branches(model):
            b.vector.copy_(1 + 0.3 * torch.randn(b.vector.shape, generator=g))
            bias = model.get_submodule(layer_name(name)).bias
            bias.copy_(0.1 * torch.randn(bias.shape, generator=g))
    adapted = outputs(model, inputs) if kind == "gpt2" else model(**inputs).detach()
    report = merge_(model)
    merged = outputs(model, inputs) if kind == "gpt2" else model(**inputs).detach()
    assert report["layers"] == {"exact": record["layers"]}
    assert (merged - adapted).abs().max().item() <= 1e-5 * max(1.0, adapted.abs().max().item())
