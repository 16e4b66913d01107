"""digits-cnn: trained on first load with the Trainer to >= 97% top-1, cached as safetensors + JSON."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.zoo import get_entry, list_entries, load_model
from torchslim.zoo.digits_cnn import DigitsCNNArch, build_digits_cnn, cache_dir_for, digits_task, load_digits_cnn


def test_first_load_trains_to_97_percent(digits_first_load: dict[str, Any]) -> None:
    loaded = digits_first_load["loaded"]
    metrics = loaded.task.evaluate(loaded.model)
    assert metrics["top1"] >= 97.0, metrics
    assert loaded.name == "digits-cnn" and loaded.task.metric == "top1"
    arch = DigitsCNNArch().to_dict()
    assert loaded.source == {"kind": "zoo", "name": "digits-cnn", "arch": arch, "kwargs": {"arch": arch}}
    meta = json.loads((Path(loaded.extra["cache_path"]) / "config.json").read_text())
    assert meta["metrics"]["top1"] == pytest.approx(metrics["top1"])
    assert meta["train_config"]["_type"] == "TrainConfig"
    assert meta["train_seconds"] < 60
    assert not loaded.model.training


def test_cache_is_safetensors_and_json_and_reloads_identically(digits_first_load: dict[str, Any]) -> None:
    first, root = digits_first_load["loaded"], digits_first_load["root"]
    folder = Path(first.extra["cache_path"])
    assert folder == cache_dir_for(DigitsCNNArch(), root)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    t0 = time.perf_counter()
    again = load_digits_cnn(cache_dir=root)
    assert time.perf_counter() - t0 < 5.0                       # read, not retrained
    for (k, a), (_, b) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_env_var_selects_the_cache(digits_first_load: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSLIM_CACHE", str(digits_first_load["root"]))
    loaded = load_model("digits-cnn")
    assert Path(loaded.extra["cache_path"]).parent.parent == digits_first_load["root"]


def test_source_arch_rebuilds_the_skeleton(digits_first_load: dict[str, Any]) -> None:
    loaded = digits_first_load["loaded"]
    assert get_entry("digits-cnn").skeleton is not None
    skeleton = get_entry("digits-cnn").skeleton(loaded.source)
    assert type(skeleton) is type(build_digits_cnn(loaded.source["arch"]))
    skeleton.load_state_dict(loaded.model.state_dict())
    skeleton.eval()
    x = loaded.task.example_inputs(8)["x"]
    torch.testing.assert_close(skeleton(x=x), loaded.model(**loaded.task.example_inputs(8)))


def test_architecture_is_a_residual_cnn() -> None:
    model = build_digits_cnn({"channels": [8, 16, 24], "blocks": 2})
    kinds = {type(m) for m in model.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear} <= kinds
    assert model(x=torch.rand(5, 1, 8, 8)).shape == (5, 10)
    small = sum(p.numel() for p in build_digits_cnn({"channels": [8]}).parameters())
    default = sum(p.numel() for p in build_digits_cnn(None).parameters())
    assert small < default
    with pytest.raises(ConfigError, match="unknown arch key"):
        build_digits_cnn({"width": 3})
    with pytest.raises(ConfigError):
        build_digits_cnn({"channels": []})


def test_data_split_is_deterministic_and_scaled() -> None:
    a, b = digits_task(), digits_task()
    assert (len(a.train_y), len(a.eval_y)) == (1437, 360)
    assert torch.equal(a.eval_x, b.eval_x) and torch.equal(a.train_y, b.train_y)
    assert a.train_x.shape[1:] == (1, 8, 8)
    assert 0.0 <= float(a.train_x.min()) and float(a.train_x.max()) <= 1.0
    assert torch.bincount(a.eval_y).min() >= 35                 # stratified: ~36 per class


def test_registered_in_the_zoo() -> None:
    entry = get_entry("digits-cnn")
    assert entry.kind == "image-classification" and not entry.test_only
    assert "digits-cnn" in [e.name for e in list_entries(include_test=False)]


def test_corrupt_cache_is_retrained(tmp_path: Path) -> None:
    arch = {"channels": [8, 16]}                                 # small: quick to retrain
    first = load_digits_cnn(arch, cache_dir=tmp_path)
    weights = Path(first.extra["cache_path"]) / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    again = load_digits_cnn(arch, cache_dir=tmp_path)
    for (k, a), (_, b) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k                              # deterministic training
    assert weights.read_bytes() != b"not a safetensors file"


def test_artifact_round_trip_rebuilds_model_and_task(
    digits_first_load: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchslim

    monkeypatch.setenv("TORCHSLIM_CACHE", str(digits_first_load["root"]))   # the task reload reads this cache
    loaded = load_model("digits-cnn")
    torchslim.save(loaded.model, tmp_path / "art", source=loaded.source)
    again = torchslim.load_model(str(tmp_path / "art"))
    x = loaded.task.example_inputs(16)["x"]
    torch.testing.assert_close(again.model(x=x), loaded.model(x=x))
    assert again.task is not None and again.task.evaluate(again.model) == loaded.task.evaluate(loaded.model)
