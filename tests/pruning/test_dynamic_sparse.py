"""Dynamic sparse training on the Trainer: exact budget at every step, RigL/SET growth, zero-started weights and
momentum, reporting, and the save/load round trip of the result."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.config import config_from_dict
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.pruning import dynamic_sparse_math as D
from torchslim.pruning.dynamic_sparse import DynamicSparseConfig, DynamicSparseHook, prepare_dynamic
from torchslim.pruning.schedules import MASK
from torchslim.pruning.sparse_linear import SparseLinear
from torchslim.train import LambdaHook, TrainConfig, Trainer
from torchslim.train.checkpoint import list_checkpoints

from _pruning_helpers import Crash as _Crash, blob_task  # noqa: E402


class ConvMLP(nn.Module):
    """A conv over a 4x4 view of the 16 inputs, then two linear layers: both kinds of layer DST handles."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = nn.Linear(128, 64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.view(-1, 1, 4, 4))).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def _model(seed: int = 0) -> ConvMLP:
    torch.manual_seed(seed)
    return ConvMLP()


def _train(steps: int = 12, **kw) -> TrainConfig:
    base = dict(steps=steps, batch_size=32, lr=1e-2, optimizer="adamw", schedule="constant", progress=False,
                eval_at_end=False)
    return TrainConfig(**{**base, **kw})


def _cfg(**kw) -> DynamicSparseConfig:
    return DynamicSparseConfig(**{"sparsity": 0.8, "update_every": 2, "end_fraction": 0.75, **kw})


def _counts_hold(hook: DynamicSparseHook) -> None:
    for name, m in hook.modules.items():
        mask = getattr(m, MASK)
        assert int(mask.sum()) == hook.counts[name], name
        assert torch.all(m.weight[~mask] == 0), name


def test_training_keeps_the_exact_budget_at_every_step_and_moves_the_masks() -> None:
    model = _model()
    hook = prepare_dynamic(model, _cfg())
    total = sum(m.weight.numel() for m in hook.modules.values())
    assert sum(hook.counts.values()) == round(0.2 * total)            # ERK over the selected layers, exact
    first = {n: m.clone() for n, m in hook.masks().items()}
    seen: list[int] = []

    def check(trainer: Trainer, step: int) -> None:
        _counts_hold(hook)
        for m in hook.modules.values():
            assert torch.all(trainer.optimizer.state[m.weight]["exp_avg"][~getattr(m, MASK)] == 0)
        seen.append(step)

    Trainer(model, blob_task(), _train(12), hooks=[hook, LambdaHook(on_step_end=check)]).fit()
    assert seen == list(range(1, 13))
    assert [h["step"] for h in hook.history] == [2, 4, 6, 8]          # every 2 steps, before 75% of 12
    assert all(h["grown"] > 0 for h in hook.history)
    assert hook.sparsity() == pytest.approx(1 - sum(hook.counts.values()) / total)
    assert any(not torch.equal(first[n], m) for n, m in hook.masks().items())


def _one_update(method: str, seed: int = 0, grads: dict[str, torch.Tensor] | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> tuple[DynamicSparseHook, dict[str, torch.Tensor]]:
    """Build a hook, give every weight a gradient, run the pre-step hook and the update of step 2 by hand."""
    model = _model()
    hook = prepare_dynamic(model, _cfg(method=method, seed=seed))
    hook.end_step, hook.step, hook._optimizer = 9, 1, optimizer
    before = {n: m.clone() for n, m in hook.masks().items()}
    g = torch.Generator().manual_seed(7)
    for name, m in hook.modules.items():
        m.weight.grad = grads[name].clone() if grads else torch.randn(m.weight.shape, generator=g)
    hook._before_step(None, (), {})
    hook.on_step_end(None, 2)                                          # type: ignore[arg-type]
    return hook, before


def test_rigl_grows_where_the_dense_gradient_is_largest() -> None:
    model = _model()
    names = [n for n, _ in prepare_dynamic(model, _cfg()).modules.items()]
    g = torch.Generator().manual_seed(11)
    grads = {n: torch.randn(model.get_submodule(n).weight.shape, generator=g) for n in names}
    hook, before = _one_update("rigl", grads=grads)
    frac = D.drop_fraction(2, 0.3, 9)
    for name, m in hook.modules.items():
        old, new = before[name], getattr(m, MASK)
        if bool(old.all()):
            assert torch.equal(new, old)                              # a dense layer has nothing to swap
            continue
        grown = new & ~old
        assert int(new.sum()) == int(old.sum())
        n = D.n_swapped(int(old.sum()), frac)
        stayed = old & new
        # no element outside the new mask (and not kept from before) has a larger |grad| than a grown one
        outside = ~new
        assert grown.any() and grads[name].abs()[grown].min() >= grads[name].abs()[outside].max()
        assert int((new & ~stayed).sum()) <= n
        assert torch.all(m.weight[grown] == 0)                        # grown weights start at zero


def test_set_regrowth_is_random_but_seeded() -> None:
    a, before = _one_update("set", seed=3)
    b, _ = _one_update("set", seed=3)
    c, _ = _one_update("set", seed=4)
    for name in a.modules:
        assert torch.equal(a.masks()[name], b.masks()[name])
    assert any(not torch.equal(a.masks()[n], c.masks()[n]) for n in a.modules)
    assert any(not torch.equal(a.masks()[n], before[n]) for n in a.modules)
    _counts_hold(a)


def test_dropped_and_grown_positions_lose_their_momentum() -> None:
    model = _model()
    hook = prepare_dynamic(model, _cfg(method="set"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for m in hook.modules.values():
        opt.state[m.weight]["momentum_buffer"] = torch.ones_like(m.weight)
    hook.end_step, hook.step, hook._optimizer = 9, 1, opt
    before = {n: m.clone() for n, m in hook.masks().items()}
    hook.on_step_end(None, 2)                                          # type: ignore[arg-type]
    changed = 0
    for name, m in hook.modules.items():
        buf, old, new = opt.state[m.weight]["momentum_buffer"], before[name], getattr(m, MASK)
        assert torch.all(buf[old & new] == 1) and torch.all(buf[~(old & new)] == 0)
        changed += int((old ^ new).sum())
    assert changed > 0


def test_uniform_and_magnitude_init() -> None:
    model = _model()
    big = {n: m.weight.detach().abs().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    hook = prepare_dynamic(model, _cfg(distribution="uniform", init="magnitude"))
    for name, m in hook.modules.items():
        n = m.weight.numel()
        assert hook.counts[name] == pytest.approx(0.2 * n, abs=1)
        kept = getattr(m, MASK)
        assert big[name][kept].min() >= big[name][~kept].max()      # the largest weights kept


def test_report_names_layers_and_densities_and_config_round_trips(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="torchslim.pruning"):
        hook = prepare_dynamic(_model(), _cfg(sparsity=0.9))
    s = hook.summary()
    assert s["layers"] == 3 and set(s["density"]) == {"conv", "fc1", "fc2"}
    assert "3 layers sparse" in caplog.text and "fc1 " in caplog.text
    cfg = _cfg(method="set", distribution="uniform")
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="matched no"):
        prepare_dynamic(_model(), _cfg(selector=Selector(include=("nothing",))))
    with pytest.raises(ConfigError, match="sparsity is 0"):
        DynamicSparseConfig(sparsity=0.0)
    with pytest.raises(ConfigError, match="end_fraction"):
        DynamicSparseConfig(end_fraction=0.0)


def test_no_update_in_training_is_a_visible_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = _model()
    hook = prepare_dynamic(model, _cfg(update_every=100))
    with caplog.at_level(logging.WARNING, logger="torchslim.pruning"):
        Trainer(model, blob_task(), _train(4), hooks=[hook]).fit()
    assert "static sparse training" in caplog.text and hook.history == []


def test_prune_verb_result_saves_and_loads_with_identical_outputs(tmp_path: Path) -> None:
    model = _model()
    task = blob_task()
    out = torchslim.prune_(model, _cfg(method="rigl", distribution="uniform"), task=task, train=_train(8))
    assert isinstance(out.fc1, SparseLinear) and isinstance(out.fc2, SparseLinear)
    assert not hasattr(out.conv, MASK)
    assert float((out.conv.weight != 0).float().mean()) < 0.25          # convs keep their zeros, densely stored
    records = torchslim.core.state.state_of(out).history[-1].details["records"]
    assert records[0]["layers"] == 3 and records[-1]["final_sparsity"] == pytest.approx(0.8, abs=0.01)
    x = task.example_inputs(16)["x"]
    torchslim.save(out, tmp_path / "a")
    back = torchslim.load(tmp_path / "a", model=ConvMLP())
    with torch.no_grad():
        assert torch.equal(back(x), out.eval()(x))
    total = sum(math.prod(m.weight.shape) for m in (out.conv, out.fc1, out.fc2))
    kept = int((back.conv.weight != 0).sum()) + sum(int(m.mask.sum()) for m in (back.fc1, back.fc2))
    assert kept <= round(0.2 * total)


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_resume_from_checkpoint_continues_exactly(tmp_path: Path, method: str) -> None:
    """Masks are buffers (in the checkpoint); the step and the update history are hook state."""
    cfg, kw = _cfg(method=method), dict(checkpoint_every=2, keep_checkpoints=1)
    full = _model(6)
    full_hook = prepare_dynamic(full, cfg)
    Trainer(full, blob_task(), _train(8), hooks=[full_hook, _Crash(-1)]).fit()
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        crashed = _model(6)
        Trainer(crashed, blob_task(), _train(8, checkpoint_dir=str(ck), **kw),
                hooks=[prepare_dynamic(crashed, cfg), _Crash(5)]).fit()
    assert [s for s, _ in list_checkpoints(ck)] == [4]
    resumed = _model(99)
    hook = prepare_dynamic(resumed, cfg)
    train = _train(8, checkpoint_dir=str(ck), resume=True, **kw)
    res = Trainer(resumed, blob_task(), train, hooks=[hook, _Crash(-1)]).fit()
    assert res.resumed_from == 4 and hook.history == full_hook.history
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_a_recipe_prune_stage_takes_the_config() -> None:
    from torchslim.recipes.stages import stage_from_dict

    stage = stage_from_dict({"prune": {"_type": "DynamicSparseConfig", "method": "set", "sparsity": 0.75}}, "stage 1")
    assert isinstance(stage.config, DynamicSparseConfig) and stage.config.sparsity == 0.75
