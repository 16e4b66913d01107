"""Adapter-only artifacts: a small folder that rebuilds the adapter on its own base (and refuses any other)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import torchslim
from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError
from torchslim.peft import (
    LoraConfig,
    adapters,
    branches,
    load_adapter,
    merge_,
    save_adapter,
    set_adapter,
)
from torchslim.peft.files import MANIFEST, WEIGHTS, state_fingerprint
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig
from torchslim.zoo.tiny import build_tiny_llama

IDS = torch.randint(1, 250, (2, 12), generator=torch.Generator().manual_seed(1))


def adapted(seed: int = 0, adapter: str = "default", base_seed: int = 0, **kw) -> torch.nn.Module:
    """tiny-llama with a LoRA adapter whose B (and DoRA magnitude) are random, so it changes the outputs."""
    model = build_tiny_llama(base_seed).eval()
    return add_random_lora(model, seed, adapter, **kw)


def add_random_lora(model, seed: int, adapter: str = "default", **kw):
    LoraConfig(r=4, alpha=8, adapter=adapter, **kw).add_branches(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, b in branches(model, adapter):
            b.B.normal_(0, 0.2, generator=g)
            if b.magnitude is not None:
                b.magnitude.mul_(1 + 0.1 * torch.randn(b.magnitude.shape, generator=g))
    return model


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("dora", [False, True])
def test_round_trip_rebuilds_the_adapter_exactly(tmp_path, dora) -> None:
    model = adapted(dora=dora, rslora=dora)
    want = logits(model)
    save_adapter(model, tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == [MANIFEST, WEIGHTS]
    manifest = json.loads((tmp_path / "ad" / MANIFEST).read_text())
    assert manifest["base"]["kind"] == "state_dict" and manifest["methods"] == ["lora"]
    assert len(manifest["branches"]) == len(branches(model)) == 14
    base = build_tiny_llama(0).eval()
    assert (logits(base) - want).abs().max() > 1e-2           # the adapter matters
    names = load_adapter(base, tmp_path / "ad")
    assert names == [n for n, _ in branches(model)]
    assert torch.equal(logits(base), want)
    weights = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    assert (tmp_path / "ad" / WEIGHTS).stat().st_size < 0.15 * weights
    assert torchslim.core.state.state_of(base).added.keys() >= set(names)   # an artifact save records them


def test_a_different_base_is_refused_in_one_line(tmp_path) -> None:
    model = adapted()
    save_adapter(model, tmp_path / "ad")
    other = build_tiny_llama(1).eval()
    with pytest.raises(ArtifactError) as e:
        load_adapter(other, tmp_path / "ad")
    msg = str(e.value)
    theirs = json.loads((tmp_path / "ad" / MANIFEST).read_text())["base"]["state_dict_sha256"]
    assert "\n" not in msg and theirs[:12] in msg and state_fingerprint(other)[:12] in msg, msg
    assert adapters(other) == []


def test_two_adapters_on_one_base_switch(tmp_path) -> None:
    a, b = adapted(seed=1), adapted(seed=2)
    want_a, want_b = logits(a), logits(b)
    save_adapter(a, tmp_path / "a")
    save_adapter(b, tmp_path / "b")
    base = build_tiny_llama(0).eval()
    plain = logits(base)
    load_adapter(base, tmp_path / "a")
    load_adapter(base, tmp_path / "b", adapter="second")
    assert adapters(base) == ["default", "second"]
    assert any(n.endswith("q_proj.lora_second") for n, _ in branches(base))
    set_adapter(base, "default")
    assert torch.equal(logits(base), want_a)
    set_adapter(base, "second")
    assert torch.equal(logits(base), want_b)
    set_adapter(base, None)
    assert torch.equal(logits(base), plain)
    with pytest.raises(ConfigError, match="already has an adapter 'second'"):
        load_adapter(base, tmp_path / "b", adapter="second")


def test_an_artifact_base_is_named_by_its_weights_sha(tmp_path) -> None:
    torchslim.save(build_tiny_llama(0), tmp_path / "base")
    model = add_random_lora(torchslim.load(tmp_path / "base"), 3)
    want = logits(model)
    save_adapter(model, tmp_path / "ad")
    base = json.loads((tmp_path / "ad" / MANIFEST).read_text())["base"]
    recorded = json.loads((tmp_path / "base" / "manifest.json").read_text())["weights"]["sha256"]
    assert base["kind"] == "artifact" and base["sha256"] == recorded
    again = torchslim.load(tmp_path / "base")
    load_adapter(again, tmp_path / "ad")
    assert torch.equal(logits(again), want)
    fresh = build_tiny_llama(0).eval()                         # the same base, not loaded from the artifact
    load_adapter(fresh, tmp_path / "ad")
    assert torch.equal(logits(fresh), want)


def test_a_base_changed_since_loading_is_no_longer_named_by_the_artifact(tmp_path) -> None:
    torchslim.save(build_tiny_llama(0), tmp_path / "base")
    model = torchslim.load(tmp_path / "base")
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    add_random_lora(model, 3)
    save_adapter(model, tmp_path / "ad")
    base = json.loads((tmp_path / "ad" / MANIFEST).read_text())["base"]
    assert base["kind"] == "state_dict" and base["sha256"] == state_fingerprint(model)
    with pytest.raises(ArtifactError, match="another base"):
        load_adapter(torchslim.load(tmp_path / "base"), tmp_path / "ad")     # the float base is not the int8 one


def test_a_base_with_a_merged_adapter_is_no_longer_named_by_the_artifact(tmp_path) -> None:
    torchslim.save(add_random_lora(build_tiny_llama(0), 1, adapter="first"), tmp_path / "base")
    model = torchslim.load(tmp_path / "base")
    merge_(model, "first")                                     # no history entry, the branches are gone
    add_random_lora(model, 3)
    save_adapter(model, tmp_path / "ad")
    assert json.loads((tmp_path / "ad" / MANIFEST).read_text())["base"]["kind"] == "state_dict"


def test_a_merged_adapter_is_not_saved_alone(tmp_path) -> None:
    model = adapted()
    merge_(model, keep=True)
    with pytest.raises(ConfigError, match="merged into the base"):
        save_adapter(model, tmp_path / "ad")


def test_tampered_or_foreign_folders_are_refused(tmp_path) -> None:
    save_adapter(adapted(), tmp_path / "ad")
    base = build_tiny_llama(0).eval()
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "ad", bad)
    with open(bad / WEIGHTS, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_adapter(base, bad)
    shutil.rmtree(bad)
    shutil.copytree(tmp_path / "ad", bad)
    m = json.loads((bad / MANIFEST).read_text())
    name = next(iter(m["branches"]))
    m["branches"][name] = {"kind": "Linear", "in_features": 4, "out_features": 4, "bias": False}
    (bad / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="not an adapter branch"):
        load_adapter(base, bad)
    (bad / MANIFEST).unlink()
    (bad / "adapter_config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="from_peft"):
        load_adapter(base, bad)
    assert adapters(base) == []


def test_save_refuses_what_it_cannot_write(tmp_path) -> None:
    model = adapted()
    with pytest.raises(ConfigError, match="no adapter 'other'"):
        save_adapter(model, tmp_path / "x", adapter="other")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(TorchSlimError, match="not an adapter folder"):
        save_adapter(model, tmp_path / "notes")
    save_adapter(model, tmp_path / "ad")
    save_adapter(model, tmp_path / "ad")                       # over its own folder
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
