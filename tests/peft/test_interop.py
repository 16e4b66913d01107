"""Hugging Face peft's adapter format both ways: peft computes what torchslim computes, and back, within 1e-5."""
from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.errors import ArtifactError, ConfigError
from torchslim.core.resize import add_module
from torchslim.peft import (
    LoraBranch,
    LoraConfig,
    adapters,
    branches,
    from_peft,
    to_peft,
)
from torchslim.peft.interop import CONFIG, PICKLE, WEIGHTS
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig
from torchslim.zoo.tiny import build_tiny_llama

IDS = torch.randint(1, 250, (2, 12), generator=torch.Generator().manual_seed(1))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def randomize(params, seed: int) -> None:
    """Non-zero B (and a moved DoRA magnitude), so an adapter that is not applied fails the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params:
            if "lora_B" in name or name.endswith(".B"):
                p.normal_(0, 0.2, generator=g)
            elif "magnitude" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))


def peft_folder(tmp_path, dora: bool, **kw):
    """A peft LoRA adapter saved by peft itself, and the logits of the peft model."""
    pm = peft.get_peft_model(build_tiny_llama(0).eval(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                                        use_dora=dora, **kw))
    randomize(pm.named_parameters(), 5)
    pm.eval()
    pm.save_pretrained(tmp_path / "peft")
    return tmp_path / "peft", logits(pm)


@pytest.mark.parametrize("dora", [False, True])
def test_torchslim_adapter_loads_in_peft_with_the_same_outputs(tmp_path, dora) -> None:
    model = build_tiny_llama(0).eval()
    LoraConfig(r=4, alpha=8, dora=dora, rslora=dora).add_branches(model)
    randomize([(n + ".B", b.B) for n, b in branches(model)] + [(n + ".magnitude", b.magnitude) for n, b in
                                                             branches(model) if b.magnitude is not None], 3)
    want = logits(model)
    done = to_peft(model, tmp_path / "out")
    assert done["layers"] == 14 and done["peft_type"] == "LORA"
    pm = peft.PeftModel.from_pretrained(build_tiny_llama(0).eval(), tmp_path / "out")
    got = logits(pm)
    assert (got - want).abs().max() < 1e-5
    assert (logits(build_tiny_llama(0).eval()) - want).abs().max() > 1e-2        # the adapter matters
    # peft saving what it loaded writes the same config and the same tensors
    pm.save_pretrained(tmp_path / "resaved")
    ours = json.loads((tmp_path / "out" / CONFIG).read_text())
    theirs = json.loads((tmp_path / "resaved" / CONFIG).read_text())
    assert {k: v for k, v in ours.items() if k != "target_modules"} == \
        {k: v for k, v in theirs.items() if k != "target_modules"}
    assert sorted(ours["target_modules"]) == sorted(theirs["target_modules"]) == sorted(TARGETS) and ours["use_dora"] is dora
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "out" / WEIGHTS)), load_file(str(tmp_path / "resaved" / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dora", [False, True])
def test_peft_adapter_loads_in_torchslim_with_the_same_outputs(tmp_path, dora) -> None:
    folder, want = peft_folder(tmp_path, dora)
    model = build_tiny_llama(0).eval()
    names = from_peft(model, folder, adapter="hf")
    assert len(names) == 14 and adapters(model) == ["hf"] and all(b.dora is dora for _, b in branches(model))
    assert (logits(model) - want).abs().max() < 1e-5


def test_rank_and_alpha_patterns_round_trip(tmp_path) -> None:
    folder, want = peft_folder(tmp_path, False, rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 3})
    model = build_tiny_llama(0).eval()
    from_peft(model, folder)
    ranks = {n.rpartition(".")[0].rpartition(".")[2]: (b.r, b.alpha) for n, b in branches(model)}
    assert ranks["q_proj"] == (2, 8) and ranks["v_proj"] == (4, 3) and ranks["k_proj"] == (4, 8)
    assert (logits(model) - want).abs().max() < 1e-5
    to_peft(model, tmp_path / "again")
    pm = peft.PeftModel.from_pretrained(build_tiny_llama(0).eval(), tmp_path / "again")
    assert (logits(pm) - want).abs().max() < 1e-5


def test_peft_adapter_on_an_int8_base_is_the_branch_on_that_base(tmp_path) -> None:
    folder, dense_want = peft_folder(tmp_path, False)
    base = build_tiny_llama(0).eval()
    torchslim.quantize_(base, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    q_proj = base.model.layers[0].self_attn.q_proj
    assert not isinstance(q_proj, nn.Linear) and type(q_proj).__name__ != "Linear"
    by_hand = copy.deepcopy(base)
    plain = logits(base)
    from_peft(base, folder)
    # the same branches, built by hand from peft's tensors on the same int8 layers
    from safetensors.torch import load_file

    tensors = load_file(str(folder / WEIGHTS))
    for key in [k for k in tensors if k.endswith("lora_A.weight")]:
        lname = key[len("base_model.model."):-len(".lora_A.weight")]
        a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
        branch = LoraBranch(a.shape[1], b.shape[0], a.shape[0], 8.0)
        with torch.no_grad():
            branch.A.copy_(a)
            branch.B.copy_(b)
        add_module(by_hand, f"{lname}.lora_default", branch)
    got = logits(base)
    assert torch.equal(got, logits(by_hand))
    assert (got - plain).abs().max() > 1e-2                     # the adapter is applied
    # int8 rounding moves the result far less than the adapter does
    assert (got - dense_want).abs().max() < 0.05 * (plain - dense_want).abs().max()


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.d = nn.Conv1d(4, 6, 3, padding=1)
        self.lin = nn.Linear(5, 7)

    def forward(self, x, y, z):
        return self.c(x).sum() + self.d(y).square().sum() + self.lin(z).sum()


def test_conv_layers_both_ways_with_dora(tmp_path) -> None:
    torch.manual_seed(0)
    base = Convs()
    inputs = (torch.randn(2, 3, 9, 9), torch.randn(2, 4, 10), torch.randn(2, 5))
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c", "d", "lin"],
                                                                  use_dora=True))
    randomize(pm.named_parameters(), 7)
    pm.save_pretrained(tmp_path / "peft")
    want = pm(*inputs)
    model = copy.deepcopy(base)
    from_peft(model, tmp_path / "peft")
    assert torch.allclose(model(*inputs), want, rtol=1e-5, atol=1e-5)
    to_peft(model, tmp_path / "back")
    again = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back")
    assert torch.allclose(again(*inputs), want, rtol=1e-5, atol=1e-5)


def test_unsupported_peft_folders_are_refused_in_one_line(tmp_path) -> None:
    folder, _ = peft_folder(tmp_path, False)
    model = build_tiny_llama(0).eval()
    config = json.loads((folder / CONFIG).read_text())

    def refused(exc, match: str, **change) -> None:
        (folder / CONFIG).write_text(json.dumps({**config, **change}))
        with pytest.raises(exc, match=match) as e:
            from_peft(model, folder)
        assert "\n" not in str(e.value)

    refused(ConfigError, "bias='all' is not supported", bias="all")
    refused(ConfigError, "modules_to_save", modules_to_save=["lm_head"])
    refused(ConfigError, "'LOHA' is not supported", peft_type="LOHA")
    refused(ConfigError, "has rank 4 but the config says 8", r=8)
    (folder / CONFIG).write_text(json.dumps(config))
    (folder / WEIGHTS).rename(folder / PICKLE)
    with pytest.raises(ArtifactError, match="pickle"):
        from_peft(model, folder)
    assert adapters(model) == []


def test_gpt2_conv1d_layers_both_ways_with_dora(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)).eval()
    config = peft.LoraConfig(r=2, target_modules=["c_attn", "c_proj"], use_dora=True, fan_in_fan_out=True)
    pm = peft.get_peft_model(copy.deepcopy(base), config)
    randomize(pm.named_parameters(), 9)
    pm.save_pretrained(tmp_path / "peft")
    ids = IDS % 100
    want = pm(input_ids=ids).logits
    model = copy.deepcopy(base)
    assert len(from_peft(model, tmp_path / "peft")) == 6
    assert (model(input_ids=ids).logits - want).abs().max() < 1e-5
    to_peft(model, tmp_path / "back")
    assert json.loads((tmp_path / "back" / CONFIG).read_text())["fan_in_fan_out"] is True
    again = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back")
    assert (again(input_ids=ids).logits - want).abs().max() < 1e-5
