"""Channel pruning: physically smaller modules, exact equivalence with masking, artifacts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.artifact.format import load, read_manifest, save
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.pruning.channels import (accumulate_grads, choose_channels, count_params, group_scores,
                                        prune_channels_)
from torchslim.pruning.config import Scope, StructuredConfig, Target
from torchslim.pruning.depgraph import channel_groups
from torchslim.pruning.importance import Importance
from torchslim.tasks.classification import ClassificationTask
from torchslim.zoo.digits_cnn import build_digits_cnn

from _pruning_helpers import IMAGES, CatAddNet, CatNet, DepthwiseNet, SqueezeExcite, TokenMixer, mlp  # noqa: E402
from torchslim.core.state import state_of

DIGITS = {"x": torch.randn(4, 1, 8, 8)}


def config(**kw) -> StructuredConfig:
    return StructuredConfig(targets=(Target.CHANNELS,), **kw)


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so norms are not identities."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def masked_reference(model: nn.Module, inputs: dict, cfg: StructuredConfig) -> nn.Module:
    """The dense model with the channels pruning would remove cut off where they are read.

    Zeroing the consumers' input columns (conv input channels, linear columns) of the removed
    channels is exactly what removing them does: their values only flow, channel-wise
    (norms, activations, adds, pooling), to other removed channels or into those columns.
    """
    ref = copy.deepcopy(model)
    groups = channel_groups(ref, inputs)
    keeps = choose_channels(groups, [group_scores(ref, g, cfg.importance) for g in groups], cfg)
    with torch.no_grad():
        for group, keep in zip(groups, keeps):
            drop = torch.ones(group.size, dtype=torch.bool)
            drop[keep] = False
            for m in group.members:
                if m.kind == "in":
                    ref.get_submodule(m.module).weight[:, m.positions[drop[m.channels]]] = 0
    return ref


def run(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs.values())


CASES = {
    "digits-cnn": (lambda: build_digits_cnn(), DIGITS),
    "cat": (CatNet, IMAGES),
    "cat+add": (CatAddNet, IMAGES),
    "depthwise": (DepthwiseNet, IMAGES),
    "mlp": (mlp, {"input": torch.randn(5, 10)}),
    "gate": (SqueezeExcite, IMAGES),
    "transpose": (TokenMixer, {"x": torch.randn(2, 5, 6)}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("scope", [Scope.LAYER, Scope.GLOBAL])
def test_pruned_model_equals_masked_dense_model(case: str, scope: Scope) -> None:
    build, inputs = CASES[case]
    torch.manual_seed(0)
    model = randomized(build()).double()
    inputs = {k: v.double() for k, v in inputs.items()}
    cfg = config(ratio=0.4, scope=scope, importance=Importance.MAGNITUDE)
    reference = masked_reference(model, inputs, cfg)
    dense = run(model, inputs)
    before = count_params(model)
    summary = prune_channels_(model, cfg, inputs)
    assert summary["params_before"] == before and summary["params_after"] == count_params(model) < before
    pruned = run(model, inputs)
    torch.testing.assert_close(pruned, run(reference, inputs), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(pruned, dense)      # the masking really removed something


def test_layer_scope_keeps_the_ratio_in_every_group_and_rounds() -> None:
    model = build_digits_cnn()
    summary = prune_channels_(model, config(ratio=0.3), DIGITS)
    assert [(g["size"], g["kept"]) for g in summary["groups"]] == [(32, 22), (32, 22), (64, 45), (64, 45)]
    assert model.stem[0].out_channels == 22 and model.head.in_features == 45 and model.head.out_features == 10
    model = build_digits_cnn()
    summary = prune_channels_(model, config(ratio=0.3, round_to=8), DIGITS)
    assert [g["kept"] for g in summary["groups"]] == [24, 24, 48, 48]
    assert model.stages[1][0].conv1.weight.shape == (48, 24, 3, 3)


def test_global_scope_gives_different_per_group_ratios() -> None:
    torch.manual_seed(0)
    model = randomized(build_digits_cnn())
    with torch.no_grad():   # make one stage clearly more important than the other
        model.stages[1][0].conv1.weight.mul_(5)
    summary = prune_channels_(model, config(ratio=0.5, scope=Scope.GLOBAL), DIGITS)
    kept = {g["producers"][0]: g["kept"] / g["size"] for g in summary["groups"]}
    assert len(set(kept.values())) > 1
    total = sum(g["size"] for g in summary["groups"])
    assert sum(g["size"] - g["kept"] for g in summary["groups"]) == round(0.5 * total)
    assert all(0 < k < 1 for k in kept.values())   # normalized per group: none wiped out


def test_selector_limits_prunable_groups() -> None:
    model = build_digits_cnn()
    cfg = config(ratio=0.5, selector=Selector(include=("re:stages\\.1\\..*",)))
    summary = prune_channels_(model, cfg, DIGITS)
    prunable = {tuple(g["producers"]): g["prunable"] for g in summary["groups"]}
    assert prunable == {("stem.0", "stages.0.0.conv2"): False, ("stages.0.0.conv1",): False,
                        ("stages.1.0.conv1",): True, ("stages.1.0.conv2", "stages.1.0.shortcut.0"): True}
    assert model.stem[0].out_channels == 32 and model.head.in_features == 32
    only_shortcut = config(ratio=0.5, selector=Selector(include=("stages.1.0.shortcut.0",)))
    with pytest.raises(ConfigError, match="selector"):
        prune_channels_(build_digits_cnn(), only_shortcut, DIGITS)


def test_pruned_modules_are_plain_recorded_and_keep_their_state() -> None:
    model = build_digits_cnn().train()
    model.stem[1].weight.requires_grad_(False)
    prune_channels_(model, config(ratio=0.5), DIGITS)
    assert type(model.stem[0]) is nn.Conv2d and type(model.stem[1]) is nn.BatchNorm2d
    assert model.stem[1].training and not model.stem[1].weight.requires_grad and model.stem[0].weight.requires_grad
    recorded = state_of(model).resized["modules"]
    assert recorded["head"] == {"kind": "Linear", "in_features": 32, "out_features": 10, "bias": True}
    assert recorded["stem.1"]["num_features"] == 16 and "stages.0.0.conv1" in recorded


def test_depthwise_and_layernorm_shrink() -> None:
    model = randomized(DepthwiseNet())
    prune_channels_(model, config(ratio=0.5), IMAGES)
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (4, 8, 4)
    assert model.pw.weight.shape == (12, 8, 1, 1) and model.fc.in_features == 12
    ln = nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.ReLU(), nn.Linear(12, 2))
    prune_channels_(ln, config(ratio=0.25), {"x": torch.randn(3, 5, 6)})
    assert ln[1].normalized_shape == (9,) and ln[1].weight.shape == (9,) and ln[3].in_features == 9
    assert run(ln, {"x": torch.randn(3, 5, 6)}).shape == (3, 5, 2)


def test_artifact_round_trip(tmp_path) -> None:
    arch = {"channels": [16, 32], "blocks": 2}
    torch.manual_seed(0)
    model = randomized(build_digits_cnn(arch))
    prune_channels_(model, config(ratio=0.4, round_to=4), DIGITS)
    expected = run(model, DIGITS)
    path = save(model, tmp_path / "pruned", source={"kind": "zoo", "name": "digits-cnn", "arch": arch})
    assert read_manifest(path)["resized"]["modules"]["head"]["in_features"] == model.head.in_features
    loaded = load(path, model=build_digits_cnn(arch))
    assert loaded.stages[1][1].conv2.weight.shape == model.stages[1][1].conv2.weight.shape
    assert torch.equal(run(loaded, DIGITS), expected)


def labelled_task() -> ClassificationTask:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    return ClassificationTask(x[:48], y[:48], x[48:], y[48:])


def test_taylor_importance_uses_accumulated_gradients() -> None:
    torch.manual_seed(0)
    model, task = build_digits_cnn().train(), labelled_task()
    stats = model.stem[1].running_mean.clone()
    grads = accumulate_grads(model, task, n_samples=16, batch_size=8)
    assert model.training and torch.equal(model.stem[1].running_mean, stats)   # eval mode inside
    assert all(p.grad is None for p in model.parameters())
    assert set(grads) == {n for n, _ in model.named_parameters()} and grads["head.weight"].abs().sum() > 0
    group = channel_groups(model, DIGITS)[0]
    taylor = group_scores(model, group, Importance.TAYLOR, grads)
    assert taylor.shape == (32,) and not torch.allclose(taylor, group_scores(model, group, Importance.MAGNITUDE))
    summary = prune_channels_(model, config(ratio=0.5, importance=Importance.TAYLOR), DIGITS, grads)
    assert summary["params_after"] < summary["params_before"]
    with pytest.raises(ConfigError, match="labelled"):
        accumulate_grads(build_digits_cnn(), task, task.calibration_batches(4, 2))


def test_taylor_gradients_report_progress(monkeypatch, capsys) -> None:
    # a real model takes minutes here (one backward pass per batch): it must not sit silent in a log
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "lines")
    accumulate_grads(build_digits_cnn(), labelled_task(), n_samples=16, batch_size=8)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "Taylor importance" in ln]
    assert lines and lines[0].startswith("[torchslim] ") and "2/2" in lines[-1]


def test_importance_errors_and_random() -> None:
    with pytest.raises(ConfigError, match="gradients"):
        prune_channels_(build_digits_cnn(), config(importance=Importance.TAYLOR), DIGITS)
    with pytest.raises(ConfigError, match="wanda"):
        prune_channels_(build_digits_cnn(), config(importance=Importance.WANDA), DIGITS)
    with pytest.raises(ConfigError, match="channels"):
        prune_channels_(build_digits_cnn(), StructuredConfig(targets=(Target.HEADS,)), DIGITS)
    a, b = build_digits_cnn(), build_digits_cnn()
    b.load_state_dict(a.state_dict())
    prune_channels_(a, config(ratio=0.5, importance=Importance.RANDOM), DIGITS)
    prune_channels_(b, config(ratio=0.5, importance=Importance.RANDOM), DIGITS)
    assert torch.equal(a.stem[0].weight, b.stem[0].weight)   # seeded: reproducible
