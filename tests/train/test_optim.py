"""Optimizers against hand computations, parameter groups, schedules and config validation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.train import Lion, OptimizerKind, ScheduleKind, TrainConfig, build_optimizer, lr_factor
from torchslim.train.optim import set_lr

G1 = torch.tensor([0.5, -2.0, 0.0, 1e-3])
G2 = torch.tensor([-0.4, -1.0, 3.0, -2e-3])
P0 = torch.tensor([1.0, -1.0, 0.5, 2.0])


def _run(opt_cls, grads, **kw) -> torch.Tensor:
    p = nn.Parameter(P0.clone())
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_lion_matches_hand_computation() -> None:
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.5
    p, m = P0.clone(), torch.zeros(4)
    for g in (G1, G2):
        c = b1 * m + (1 - b1) * g
        p = p - lr * (torch.sign(c) + wd * p)
        m = b2 * m + (1 - b2) * g
    got = _run(Lion, (G1, G2), lr=lr, betas=(b1, b2), weight_decay=wd)
    torch.testing.assert_close(got, p, rtol=0, atol=1e-6)
    # Step 1 by eye: m=0 so c = 0.1 * g; sign(0) = 0 leaves that element to weight decay only.
    first = _run(Lion, (G1,), lr=lr, betas=(b1, b2), weight_decay=0.0)
    assert first.tolist() == pytest.approx([0.9, -0.9, 0.5, 1.9])


def test_sgd_momentum_matches_hand_computation() -> None:
    lr, mu = 0.1, 0.9
    buf = G1.clone()
    p = P0 - lr * buf
    buf = mu * buf + G2
    p = p - lr * buf
    torch.testing.assert_close(_run(torch.optim.SGD, (G1, G2), lr=lr, momentum=mu), p, rtol=0, atol=1e-7)


def test_adamw_matches_hand_computation() -> None:
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    p, m, v = P0.clone(), torch.zeros(4), torch.zeros(4)
    for t, g in enumerate((G1, G2), start=1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    got = _run(torch.optim.AdamW, (G1, G2), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    torch.testing.assert_close(got, p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("lion", Lion)])
def test_build_optimizer_kind_and_decay_groups(kind: str, cls: type) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    model[0].bias.requires_grad_(False)
    cfg = TrainConfig(optimizer=kind, lr=0.02, weight_decay=0.3, betas=(0.8, 0.95), momentum=0.5)
    opt = build_optimizer(model, cfg)
    assert type(opt) is cls
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.3 and [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2     # LayerNorm weight + bias
    assert all(g["lr"] == 0.02 and g["base_lr"] == 0.02 for g in opt.param_groups)
    if kind != "sgd":
        assert tuple(decay["betas"]) == (0.8, 0.95)
    else:
        assert decay["momentum"] == 0.5


def test_default_betas() -> None:
    assert TrainConfig(optimizer="lion").resolved_betas() == (0.9, 0.99)
    assert TrainConfig(optimizer="adamw").resolved_betas() == (0.9, 0.999)


def test_schedules() -> None:
    def lrs(schedule: str, **kw) -> list[float]:
        cfg = TrainConfig(steps=10, warmup_steps=2, schedule=schedule, **kw)
        return [lr_factor(s, cfg) for s in range(10)]

    assert lrs("constant") == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    # after warm-up, progress = (step - 2) / 8
    assert lrs("linear") == pytest.approx([0.5, 1, 1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert lrs("linear", min_lr_ratio=0.2)[6] == pytest.approx(0.6)
    cos = lrs("cosine")
    assert cos[2] == pytest.approx(1.0) and cos[6] == pytest.approx(0.5)
    assert cos[4] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs("cosine", min_lr_ratio=0.1)[6] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(cos[1:], cos[2:]))
    assert [lr_factor(s, TrainConfig(steps=4, schedule="cosine")) for s in range(4)][0] == 1.0    # no warm-up


def test_set_lr_updates_every_group() -> None:
    cfg = TrainConfig(steps=10, lr=0.5, warmup_steps=4, schedule="constant", weight_decay=0.1)
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    set_lr(opt, 1, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 0.25])


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 10, "grad_accum": 3}, "divisible"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"optimizer": "adam"}, "adamw, sgd, lion"),
        ({"schedule": "step"}, "constant, linear, cosine"),
        ({"warmup_steps": 10, "steps": 10}, "warmup"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"resume": True}, "checkpoint_dir"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)


def test_config_roundtrip_and_string_enums() -> None:
    cfg = TrainConfig(optimizer="lion", schedule="linear", betas=(0.9, 0.98), checkpoint_dir="/tmp/x")
    assert cfg.optimizer is OptimizerKind.LION and cfg.schedule is ScheduleKind.LINEAR
    back = TrainConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.betas == (0.9, 0.98)
    assert TrainConfig.from_dict({"steps": 5, "optimizer": "sgd"}).optimizer is OptimizerKind.SGD
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"stpes": 5})
