"""peft's IA3, prompt-tuning and prefix-tuning formats both ways: a torchslim adapter loads in peft, and an
adapter peft trained and saved loads in torchslim, with the same outputs within 1e-5 (unpadded input: on
left-padded input peft's prompt tuning counts the pads as positions); what torchslim cannot read is refused in
one line."""
from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file

from torchslim.core.errors import ConfigError
from torchslim.peft import (
    BottleneckConfig,
    IA3Config,
    PrefixTuningConfig,
    PromptTuningConfig,
    adapters,
    branches,
    from_peft,
    set_adapter,
    to_peft,
)
from torchslim.peft.interop import CONFIG, WEIGHTS
from torchslim.zoo.tiny import build_tiny_bert, build_tiny_llama

IDS = torch.randint(1, 250, (2, 12), generator=torch.Generator().manual_seed(1))
BUILD = {"llama": build_tiny_llama, "bert": build_tiny_bert}
TASK = {"llama": "CAUSAL_LM", "bert": "FEATURE_EXTRACTION"}
CASES = {   # name: (model, torchslim config, peft config)
    "ia3-llama": ("llama", lambda: IA3Config(), lambda: peft.IA3Config()),
    "ia3-bert": ("bert", lambda: IA3Config(), lambda: peft.IA3Config()),
    "prompt": ("llama", lambda: PromptTuningConfig(n_virtual=5),
               lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
    "prefix": ("llama", lambda: PrefixTuningConfig(n_virtual=5),
               lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
    "prefix-mlp": ("llama", lambda: PrefixTuningConfig(n_virtual=5, projection=16),
                   lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=True,
                                                   encoder_hidden_size=16)),
    "prompt-bert": ("bert", lambda: PromptTuningConfig(n_virtual=5),
                    lambda: peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=5)),
    "prefix-bert": ("bert", lambda: PrefixTuningConfig(n_virtual=5),
                    lambda: peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=5)),
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def outputs(model) -> torch.Tensor:
    """Logits (hidden states for BERT) of the text positions, unpadded input."""
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=torch.ones_like(IDS))
    t = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return t[:, t.shape[1] - IDS.shape[1]:]          # peft's prompt tuning returns the virtual positions too


def shake(params, seed: int) -> None:
    """Move every adapter tensor (IA3 vectors away from ones, on both sides), so a wrong layout fails."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def ours(name: str):
    arch, make, _ = CASES[name]
    model = BUILD[arch](0)
    torch.manual_seed(0)
    make().add_branches(model)
    shake([p for _, b in branches(model) for p in b.parameters()], 3)
    return model


def theirs(name: str, tmp_path):
    """An adapter made and saved by peft with non-trivial weights, and the peft model's outputs."""
    arch, _, make = CASES[name]
    torch.manual_seed(0)
    pm = peft.get_peft_model(BUILD[arch](0), make())
    shake([p for p in pm.parameters() if p.requires_grad], 5)
    pm.eval()
    pm.save_pretrained(tmp_path / "peft")
    return tmp_path / "peft", outputs(pm)


@pytest.mark.parametrize("name", sorted(CASES))
def test_torchslim_adapter_loads_in_peft_with_the_same_outputs(tmp_path, name) -> None:
    arch = CASES[name][0]
    model = ours(name)
    want = outputs(model)
    assert (outputs(BUILD[arch](0)) - want).abs().max() > 1e-2          # the adapter matters
    done = to_peft(model, tmp_path / "out")
    pm = peft.PeftModel.from_pretrained(BUILD[arch](0), tmp_path / "out").eval()
    assert (outputs(pm) - want).abs().max() < 1e-5
    # peft saving what it loaded writes the same config and tensors
    pm.save_pretrained(tmp_path / "resaved")
    mine, peft_own = (json.loads((tmp_path / d / CONFIG).read_text()) for d in ("out", "resaved"))
    for config in (mine, peft_own):
        for k in ("target_modules", "feedforward_modules"):
            if isinstance(config.get(k), list):
                config[k] = sorted(config[k])
    assert mine == peft_own
    a, b = load_file(str(tmp_path / "out" / WEIGHTS)), load_file(str(tmp_path / "resaved" / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if name.startswith("ia3"):
        assert done["layers"] == {"llama": 6, "bert": 8}[arch]
        # what torchslim picks by default is peft's default adapter: same layers, same input-scaled ones
        defaults = peft.get_peft_model(BUILD[arch](0), peft.IA3Config()).peft_config["default"]
        assert set(mine["target_modules"]) == set(defaults.target_modules)
        assert set(mine["feedforward_modules"]) == set(defaults.feedforward_modules)
    else:
        assert done["layers"] == 0 and mine["task_type"] == TASK[arch]


@pytest.mark.parametrize("name", sorted(CASES))
def test_peft_adapter_loads_in_torchslim_with_the_same_outputs(tmp_path, name) -> None:
    folder, want = theirs(name, tmp_path)
    model = BUILD[CASES[name][0]](0)
    names = from_peft(model, folder, adapter="hf")
    assert adapters(model) == ["hf"] and len(names) == len(branches(model))
    assert (outputs(model) - want).abs().max() < 1e-5
    found = [b for _, b in branches(model)]
    if name.startswith("ia3"):
        assert sum(b.feedforward for b in found) == (2 if name == "ia3-llama" else 4)     # input scaling read
        assert all(not torch.allclose(b.vector, torch.ones_like(b.vector)) for b in found)
    else:
        assert names == [f"torchslim_{found[0].method}_hf"]
    if name == "prefix-mlp":          # peft saves the projected prefix, not the MLP: the branch learns it directly
        assert found[0].mlp is None
    set_adapter(model, None)          # switched off, the base again
    assert torch.equal(outputs(model), outputs(BUILD[CASES[name][0]](0)))


def refused(folder, match: str, model=None, **change) -> None:
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**config, **change}))
    model = model if model is not None else build_tiny_llama(0)
    with pytest.raises(ConfigError, match=match) as e:
        from_peft(model, folder)
    assert "\n" not in str(e.value)
    (folder / CONFIG).write_text(json.dumps(config))


def test_what_torchslim_cannot_read_or_write_is_refused_in_one_line(tmp_path) -> None:
    pm = peft.get_peft_model(build_tiny_llama(0), peft.LoHaConfig(target_modules=["q_proj"]))
    pm.save_pretrained(tmp_path / "loha")
    refused(tmp_path / "loha", "peft adapter type 'LOHA' is not supported")
    ia3, _ = theirs("ia3-llama", tmp_path / "a")
    refused(ia3, r"down_proj.ia3_l has shape \[1, 128\]; .* is output-scaled and needs \[64, 1\]",
            feedforward_modules=[])
    refused(ia3, "modules_to_save", modules_to_save=["lm_head"])
    prompt, _ = theirs("prompt", tmp_path / "p")
    refused(prompt, "task type 'SEQ_2_SEQ_LM' is not supported", task_type="SEQ_2_SEQ_LM")
    refused(prompt, "token_dim is 32; this model's embeddings are 64 wide", token_dim=32)
    busy = build_tiny_llama(0)
    PromptTuningConfig(n_virtual=3, adapter="mine").add_branches(busy)
    refused(prompt, "active prompt adapter 'mine'", model=busy)
    prefix, _ = theirs("prefix", tmp_path / "x")
    refused(prefix, r"num_layers, num_attention_heads, token_dim are \[3, 2, 32\]", num_layers=3)
    model = build_tiny_llama(0)
    BottleneckConfig().add_branches(model)
    with pytest.raises(ConfigError, match="no peft format for bottleneck adapters"):
        to_peft(model, tmp_path / "b")
