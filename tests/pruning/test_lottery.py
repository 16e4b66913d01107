"""Iterative pruning and lottery tickets: per-round sparsity, rewinding, prune_ dispatch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.state import state_of
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.pruning.lottery import (
    IterativeConfig, LotteryConfig, LotteryTicket, iterative_prune, round_sparsity,
)
from torchslim.pruning.schedules import MASK
from torchslim.train import TrainConfig

from _pruning_helpers import blob_task  # noqa: E402


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 4))


def _train(steps: int = 6, **kw) -> TrainConfig:
    base = dict(steps=steps, batch_size=32, lr=1e-2, optimizer="adamw", schedule="constant", progress=False)
    return TrainConfig(**{**base, **kw})


_HIDDEN = Selector(include=("0", "2"))     # both hidden layers (global magnitude would empty the tiny head)


def test_round_sparsity_prunes_the_same_fraction_of_what_remains() -> None:
    s = [round_sparsity(0.875, k, 3) for k in range(4)]
    assert s == pytest.approx([0.0, 0.5, 0.75, 0.875])
    assert LotteryConfig(sparsity=0.875, rounds=3).per_round == pytest.approx(0.5)
    assert IterativeConfig(sparsity=0.5, rounds=1).round_sparsity(1) == pytest.approx(0.5)


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_iterative_reaches_each_round_target_and_the_final_sparsity(importance: str) -> None:
    model = _mlp()
    cfg = IterativeConfig(sparsity=0.8, rounds=3, importance=importance, score_steps=2, selector=_HIDDEN)
    hook, history = iterative_prune(model, cfg, blob_task(), _train(4))
    assert [h["round"] for h in history] == [0, 1, 2, 3]
    assert history[0]["sparsity"] == 0.0 and "top1" in history[0]
    for h in history[1:]:
        assert h["sparsity"] == pytest.approx(round_sparsity(0.8, h["round"], 3), abs=2e-3)
        assert "top1" in h and "loss" in h
    for name, m in hook.modules.items():
        assert int((m.weight == 0).sum()) == round(0.8 * m.weight.numel()), name
    assert [u["step"] for u in hook.history] == [2 if importance == "taylor" else 0] * 3


def test_iterative_score_steps_must_leave_training() -> None:
    cfg = IterativeConfig(sparsity=0.5, rounds=1, importance="movement", score_steps=4)
    with pytest.raises(ConfigError, match="below train.steps"):
        iterative_prune(_mlp(), cfg, blob_task(), _train(4))


def test_lottery_rewinds_survivors_to_the_early_weights() -> None:
    model = _mlp(1)
    cfg = LotteryConfig(sparsity=0.75, rounds=2, rewind_step=2, selector=_HIDDEN)
    ticket = LotteryTicket(model, cfg, blob_task(), _train(6))
    ticket.train(0)
    early = ticket.early
    assert early is not None and not any(k.endswith(MASK) for k in early)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(trained["0.weight"], early["0.weight"])        # rewind point != the end
    ticket.prune(1)
    ticket.rewind()
    for name, m in ticket.mask_hook.modules.items():
        mask = getattr(m, MASK)
        assert torch.equal(m.weight[mask], early[f"{name}.weight"][mask])  # survivors rewound
        assert torch.all(m.weight[~mask] == 0)
        assert torch.equal(m.bias, early[f"{name}.bias"])
    # the survivors are the largest trained weights (global magnitude over both layers)
    kept = torch.cat([trained[f"{n}.weight"][getattr(m, MASK)].abs() for n, m in ticket.mask_hook.modules.items()])
    dropped = torch.cat([trained[f"{n}.weight"][~getattr(m, MASK)].abs() for n, m in ticket.mask_hook.modules.items()])
    assert kept.min() >= dropped.max()
    assert ticket.mask_hook.sparsity() == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(model[4].weight, early["4.weight"])                # unpruned layers rewound too


def test_lottery_run_ends_at_the_target_with_history() -> None:
    model = _mlp(2)
    cfg = LotteryConfig(sparsity=0.75, rounds=2, rewind_step=1, selector=_HIDDEN)
    ticket = LotteryTicket(model, cfg, blob_task(), _train(5))
    history = ticket.run()
    assert [h["round"] for h in history] == [0, 1, 2]
    assert [h["sparsity"] for h in history] == pytest.approx([0.0, 0.5, 0.75], abs=1e-3)
    per_layer = ticket.mask_hook.layer_sparsity()
    assert per_layer["0"] != pytest.approx(per_layer["2"])                 # global scope
    for m in ticket.mask_hook.modules.values():                            # retraining kept pruned weights at zero
        assert torch.all(m.weight[~getattr(m, MASK)] == 0)


def test_lottery_config_errors() -> None:
    with pytest.raises(ConfigError, match="rewind_step"):
        LotteryTicket(_mlp(), LotteryConfig(rewind_step=6), blob_task(), _train(6))
    with pytest.raises(ConfigError, match="resume"):
        LotteryTicket(_mlp(), LotteryConfig(), blob_task(), _train(6, checkpoint_dir="/tmp/x", resume=True))
    with pytest.raises(ConfigError, match="rounds"):
        LotteryConfig(rounds=0)
    with pytest.raises(ConfigError, match="one-shot"):
        IterativeConfig(importance="sparsegpt")


def test_prune_dispatches_iterative_and_lottery() -> None:
    from torchslim.pruning.sparse_linear import SparseLinear

    for cfg in (IterativeConfig(sparsity=0.5, rounds=2, selector=_HIDDEN),
                LotteryConfig(sparsity=0.5, rounds=2, rewind_step=1, selector=_HIDDEN)):
        model = _mlp(3)
        x = torch.randn(3, 16)
        out = torchslim.prune_(model, cfg, task=blob_task(), train=_train(3))
        assert isinstance(out[0], SparseLinear) and isinstance(out[2], SparseLinear)
        assert type(out[4]) is nn.Linear
        entry = state_of(out).history[-1]
        assert entry.kind == "pruning" and entry.name == type(cfg).__name__ and entry.config == cfg.to_dict()
        records = entry.details["records"]
        assert [h["round"] for h in records] == [0, 1, 2]
        assert records[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert entry.touched["by_type"] == {"SparseLinear": 2} and "top1" in entry.metrics
        assert out(x).shape == (3, 4)
