"""Gradual pruning on the Trainer: cubic schedule, masks held at zero, gradient scores, convert, resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.state import state_of
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.pruning.importance import Importance
from torchslim.pruning.schedules import (
    MASK, SCORE, GradualConfig, MaskHook, convert, cubic_sparsity, prepare, select_prunable,
)
from torchslim.train import LambdaHook, TrainConfig, Trainer
from torchslim.train.checkpoint import list_checkpoints

from _pruning_helpers import Crash as _Crash, blob_task  # noqa: E402


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


def _train(steps: int = 10, **kw) -> TrainConfig:
    base = dict(steps=steps, batch_size=32, lr=1e-2, optimizer="adamw", schedule="constant", progress=False)
    return TrainConfig(**{**base, **kw})


def _all_layers() -> Selector:
    return Selector(include=(nn.Linear,))


# -- schedule ---------------------------------------------------------------------------------
def test_cubic_schedule_values_and_clamps() -> None:
    assert cubic_sparsity(0, 0.1, 0.9, 10, 50) == pytest.approx(0.1)       # before start: initial
    assert cubic_sparsity(10, 0.1, 0.9, 10, 50) == pytest.approx(0.1)
    assert cubic_sparsity(50, 0.1, 0.9, 10, 50) == pytest.approx(0.9)
    assert cubic_sparsity(500, 0.1, 0.9, 10, 50) == pytest.approx(0.9)     # after end: final
    assert cubic_sparsity(30, 0.0, 0.8, 10, 50) == pytest.approx(0.8 - 0.8 * 0.5**3)
    vals = [cubic_sparsity(t, 0.0, 0.8, 0, 40) for t in range(41)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert vals[10] - vals[0] > vals[40] - vals[30]                       # fast early, slow late
    assert cubic_sparsity(5, 0.0, 0.5, 5, 5) == 0.5                        # start == end
    with pytest.raises(ConfigError, match="before start"):
        cubic_sparsity(0, 0.0, 0.5, 10, 5)


# -- gradual hook -----------------------------------------------------------------------------
def test_gradual_reaches_target_and_pruned_weights_stay_zero() -> None:
    model = _mlp()
    cfg = GradualConfig(sparsity=0.75, frequency=3, end_step=9, selector=_all_layers())
    hook = prepare(model, cfg)
    checked: list[int] = []

    def check(trainer: Trainer, step: int) -> None:
        for m in hook.modules.values():
            mask = getattr(m, MASK)
            assert torch.all(m.weight[~mask] == 0)
            assert torch.all(trainer.optimizer.state[m.weight]["exp_avg"][~mask] == 0)
        checked.append(step)

    Trainer(model, blob_task(), _train(12), hooks=[hook, LambdaHook(on_step_end=check)]).fit()
    assert checked == list(range(1, 13))
    assert [h["step"] for h in hook.history] == [3, 6, 9]
    assert [h["target"] for h in hook.history] == pytest.approx([cubic_sparsity(s, 0, 0.75, 0, 9) for s in (3, 6, 9)])
    for name, m in hook.modules.items():
        n = m.weight.numel()
        assert int((m.weight == 0).sum()) == round(0.75 * n), name     # exact per-layer count
        assert hook.layer_sparsity()[name] == pytest.approx(round(0.75 * n) / n)


def test_end_step_defaults_to_the_last_step_and_must_fit_in_training() -> None:
    model = _mlp()
    hook = prepare(model, GradualConfig(sparsity=0.5, frequency=4, selector=_all_layers()))
    Trainer(model, blob_task(), _train(6), hooks=[hook]).fit()
    assert [h["step"] for h in hook.history] == [4, 6]
    assert hook.sparsity() == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ConfigError, match="after the last training step"):
        other = _mlp()
        Trainer(other, blob_task(), _train(4), hooks=[prepare(other, GradualConfig(end_step=8))]).fit()


@pytest.mark.parametrize("importance", [Importance.MOVEMENT, Importance.TAYLOR])
def test_gradient_scores_use_pre_step_weights_and_final_gradients(importance: Importance) -> None:
    """One SGD step: the score equals -W*g (movement) or |W*g| (Taylor) with W before the step."""
    model = _mlp(1)
    hook = MaskHook(select_prunable(model, _all_layers()), importance)
    before = {n: m.weight.detach().clone() for n, m in hook.modules.items()}
    Trainer(model, blob_task(), _train(1, optimizer="sgd", momentum=0.0, grad_accum=2), hooks=[hook]).fit()
    for n, m in hook.modules.items():
        wg = before[n] * m.weight.grad                     # the engine leaves the last step's gradients
        expected = -wg if importance is Importance.MOVEMENT else wg.abs()
        torch.testing.assert_close(getattr(m, SCORE), expected)
        assert getattr(m, SCORE).abs().sum() > 0
    assert hook.score_steps == (1 if importance is Importance.TAYLOR else 0)


def _final_masks(importance: str, **kw) -> tuple[dict[str, torch.Tensor], MaskHook]:
    model = _mlp(2)
    cfg = GradualConfig(sparsity=0.6, start_step=2, end_step=6, frequency=2, importance=importance,
                        selector=_all_layers(), **kw)
    hook = prepare(model, cfg)
    Trainer(model, blob_task(), _train(8), hooks=[hook]).fit()
    return {n: m.clone() for n, m in hook.masks().items()}, hook


def test_movement_and_taylor_choose_different_masks_than_magnitude() -> None:
    magnitude, _ = _final_masks("magnitude")
    for imp in ("movement", "taylor"):
        masks, hook = _final_masks(imp)
        for m in hook.modules.values():
            assert getattr(m, SCORE).abs().sum() > 0, imp      # accumulated over steps 7-8
        assert hook.score_steps == (2 if imp == "taylor" else 0)
        assert hook.sparsity() == pytest.approx(0.6, abs=1e-3)
        assert any(not torch.equal(masks[n], magnitude[n]) for n in masks), imp


def test_global_scope_gives_different_layer_sparsities_with_exact_total() -> None:
    masks, hook = _final_masks("magnitude", scope="global")
    per_layer = hook.layer_sparsity()
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total)


def test_nm_pattern_gives_exact_n_of_m_at_the_end() -> None:
    model = _mlp(3)
    hook = prepare(model, GradualConfig(pattern="2:4", frequency=2, selector=Selector(include=("0", "2"))))
    Trainer(model, blob_task(), _train(6), hooks=[hook]).fit()
    assert hook.gradual.sparsity == 0.5
    for m in hook.modules.values():
        groups = (m.weight != 0).reshape(-1, 4).sum(1)
        assert torch.all(groups == 2)
    with pytest.raises(ConfigError, match="N:M"):
        conv_only = Selector(include=(nn.Conv2d,))
        prepare(nn.Sequential(nn.Conv2d(1, 4, 3)), GradualConfig(pattern="2:4", selector=conv_only))


def test_conv_layers_are_pruned_and_stay_dense_after_convert() -> None:
    from torchslim.zoo.digits_cnn import build_digits_cnn, digits_task

    torch.manual_seed(0)
    model = build_digits_cnn({"channels": [8, 16]})
    cfg = GradualConfig(sparsity=0.5, frequency=2, selector=Selector(include=(nn.Conv2d,)))
    hook = prepare(model, cfg)
    Trainer(model, digits_task(), _train(4, batch_size=16), hooks=[hook]).fit()
    convs = dict(hook.modules)
    assert len(convs) == 6
    out = convert(model, hook)
    for name, m in convs.items():
        assert type(out.get_submodule(name)) is nn.Conv2d
        assert (m.weight == 0).sum().item() == round(0.5 * m.weight.numel()), name
    assert not any(k.endswith((MASK, SCORE)) for k in out.state_dict())


# -- convert and prune_ -----------------------------------------------------------------------
def test_convert_gives_sparse_linear_with_the_masked_outputs() -> None:
    from torchslim.pruning.sparse_linear import SparseLinear

    model = _mlp(4)
    hook = prepare(model, GradualConfig(sparsity=0.7, frequency=2, importance="movement", start_step=1,
                                        selector=_all_layers()))
    Trainer(model, blob_task(), _train(6), hooks=[hook]).fit()
    x = torch.randn(5, 16)
    model.eval()
    with torch.no_grad():
        masked = model(x)
        out = convert(model, hook)
        sparse = out(x)
    assert all(isinstance(out[i], SparseLinear) for i in (0, 2, 4))
    torch.testing.assert_close(sparse, masked, rtol=1e-5, atol=1e-5)
    assert not any(k.endswith((MASK, SCORE)) for k in out.state_dict())


def test_prune_dispatches_gradual_config_and_records_history() -> None:
    from torchslim.pruning.sparse_linear import SparseLinear

    model = _mlp(5)
    out = torchslim.prune_(model, GradualConfig(sparsity=0.5, frequency=2), task=blob_task(), train=_train(4))
    assert out is model
    assert [type(m) for m in model] == [SparseLinear, nn.ReLU, SparseLinear, nn.ReLU, SparseLinear]
    entry = state_of(model).history[-1]
    assert entry.details["records"][-1]["final_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert "top1" in entry.metrics and entry.details["steps"] == 4
    assert set(entry.details["final_loss_terms"]) == {"task"}
    model2 = _mlp(5)
    torchslim.prune_(model2, GradualConfig(sparsity=0.5, frequency=2), calibration=blob_task(), train=_train(4))
    assert isinstance(model2[0], SparseLinear)


def test_handler_and_config_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="task="):
        torchslim.prune_(_mlp(), GradualConfig(), train=_train(2))
    with pytest.raises(ConfigError, match="unexpected argument 'lr'"):
        torchslim.prune_(_mlp(), GradualConfig(), task=blob_task(), lr=0.1)
    with pytest.raises(ConfigError, match="one-shot"):
        GradualConfig(importance="wanda")
    with pytest.raises(ConfigError, match="exceeds"):
        GradualConfig(sparsity=0.3, initial_sparsity=0.5)
    with pytest.raises(ConfigError, match="start_step >= 1"):
        GradualConfig(importance="taylor", initial_sparsity=0.1)
    with pytest.raises(ConfigError, match="matched no"):
        prepare(nn.Sequential(nn.ReLU()), GradualConfig())
    cfg = GradualConfig(sparsity=0.6, importance="movement", scope="global", end_step=20)
    again = GradualConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.importance is Importance.MOVEMENT


# -- resume -----------------------------------------------------------------------------------
def test_resume_from_checkpoint_continues_exactly(tmp_path: Path) -> None:
    """Masks and movement scores are buffers (in the checkpoint); step counters are hook state."""
    cfg = GradualConfig(sparsity=0.7, start_step=1, frequency=2, importance="movement", selector=_all_layers())
    kw = dict(checkpoint_every=2, keep_checkpoints=1)
    full = _mlp(6)
    full_hook = prepare(full, cfg)
    Trainer(full, blob_task(), _train(7), hooks=[full_hook, _Crash(-1)]).fit()

    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        crashed = _mlp(6)
        hooks = [prepare(crashed, cfg), _Crash(5)]
        Trainer(crashed, blob_task(), _train(7, checkpoint_dir=str(ck), **kw), hooks=hooks).fit()
    assert [s for s, _ in list_checkpoints(ck)] == [4]
    resumed = _mlp(99)
    hook = prepare(resumed, cfg)
    train = _train(7, checkpoint_dir=str(ck), resume=True, **kw)
    res = Trainer(resumed, blob_task(), train, hooks=[hook, _Crash(-1)]).fit()
    assert res.resumed_from == 4
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert hook.history == full_hook.history
