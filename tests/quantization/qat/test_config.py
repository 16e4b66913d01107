"""QATConfig end to end: prepare -> train -> convert on small models; continuing a post-training result; static
activations on convs; distillation loss; resume after a crash is exact; bad settings are refused."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim
from torchslim import DistillConfig, TrainConfig
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.state import state_of
from torchslim.quantization import (NF4, Int8StaticConv2d, Int8StaticLinear, IntFormat, PerChannel, PerGroup,
                                    QuantLinear, WeightOnlyConfig)
from torchslim.quantization.qat import ActQuant, QATConfig, is_qat
from torchslim.tasks.classification import ClassificationTask
from torchslim.train import TrainHook
from torchslim.train.transform import fit


def blobs(dim: int = 16, classes: int = 4, seed: int = 0, image: bool = False) -> ClassificationTask:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 1.5

    def split(n: int):
        y = torch.randint(0, classes, (n,), generator=g)
        x = centers[y] + torch.randn(n, dim, generator=g)
        return (x.reshape(n, 1, 4, dim // 4) if image else x), y

    (tx, ty), (ex, ey) = split(512), split(256)
    return ClassificationTask(tx, ty, ex, ey)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def trained(task: ClassificationTask, seed: int = 0) -> nn.Sequential:
    m = mlp(seed)
    torchslim.finetune_(m, torchslim.FinetuneConfig(), task=task,
                        train=TrainConfig(steps=60, batch_size=64, lr=3e-3, progress=False))
    return m


def _train(steps: int = 12, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "batch_size": 32, "lr": 2e-3, "progress": False, **kw})


def test_qat_trains_then_converts_to_packed_layers_matching_the_fake_model() -> None:
    task = blobs()
    model = trained(task)
    cfg = QATConfig(format=IntFormat(2), granularity=PerChannel(), train=_train(40))
    ctx = ApplyContext(task=task)
    prepared = cfg.prepare(model, ctx)
    assert sum(is_qat(m) for m in model.modules()) == 3
    before = [m.weight.detach().clone() for m in model.modules() if is_qat(m)]
    fit(model, cfg, prepared, ctx)
    assert any(not torch.equal(b, m.weight) for b, m in zip(before, (m for m in model.modules() if is_qat(m))))
    x = task.example_inputs(32)["x"]
    model.eval()
    with torch.no_grad():
        fake = model(x)
    out = cfg.convert(model, prepared)
    assert not any(is_qat(m) for m in out.modules())
    assert all(isinstance(out[i], QuantLinear) and out[i].fmt == IntFormat(2) for i in (0, 2, 4))
    with torch.no_grad():
        torch.testing.assert_close(out(x), fake, rtol=1e-4, atol=1e-4)


def test_qat_recovers_accuracy_that_post_training_int2_loses() -> None:
    task = blobs(seed=1)
    model = trained(task, 1)
    ptq = copy.deepcopy(model)
    torchslim.quantize_(ptq, WeightOnlyConfig(format=IntFormat(2), granularity=PerChannel()))
    torchslim.quantize_(model, QATConfig(format=IntFormat(2), granularity=PerChannel(), train=_train(80)), task=task)
    entry = state_of(model).history[-1]
    assert entry.name == "QATConfig" and entry.details["steps"] == 80
    assert task.evaluate(model)["top1"] >= task.evaluate(ptq)["top1"]
    assert task.evaluate(model)["top1"] > 85


def test_qat_continues_the_post_training_layers_in_their_own_format() -> None:
    task = blobs()
    model = trained(task)
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(16)))
    ptq_codes = model[2].codes().clone()
    torchslim.quantize_(model, QATConfig(format=IntFormat(8), train=_train(3, lr=1e-6)), task=task)
    assert isinstance(model[2], QuantLinear) and model[2].fmt == IntFormat(4, symmetric=False)
    assert model[2].gran == PerGroup(16)
    assert (model[2].codes() != ptq_codes).float().mean() < 0.02       # tiny lr: still (almost) the PTQ codes


def test_static_activation_qat_folds_batchnorm_and_gives_int8_convs() -> None:
    task = blobs(image=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16, 4))
    torchslim.finetune_(model, torchslim.FinetuneConfig(), task=task, train=_train(30, lr=3e-3))
    model.eval()
    torchslim.quantize_(model, QATConfig(format=IntFormat(8), granularity=PerChannel(),
                                         activations=ActQuant(bits=8, method="pact"), train=_train(10)), task=task)
    assert isinstance(model[0], Int8StaticConv2d) and isinstance(model[4], Int8StaticLinear)
    assert type(model[1]).__name__ == "FoldedAway"
    assert task.evaluate(model)["top1"] > 70


def test_qat_with_a_distillation_loss_logs_its_terms_and_needs_a_teacher() -> None:
    task = blobs()
    teacher = trained(task)
    student = copy.deepcopy(teacher)
    cfg = QATConfig(format=IntFormat(2), granularity=PerChannel(), distill=DistillConfig(task_weight=1.0),
                    train=_train(5))
    assert cfg.needs_teacher()
    with pytest.raises(ConfigError, match="teacher"):
        torchslim.quantize_(copy.deepcopy(teacher), cfg, task=task)
    torchslim.quantize_(student, cfg, task=task, teacher=teacher)
    terms = state_of(student).history[-1].details["final_loss_terms"]
    assert set(terms) == {"task", "kd_output"}


class _Crash(TrainHook):
    def on_step_end(self, trainer, step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt("simulated crash")


def test_qat_resumed_after_a_crash_equals_the_uninterrupted_run(tmp_path) -> None:
    task = blobs()
    base = trained(task)
    kw = dict(format=IntFormat(4), granularity=PerChannel(), activations=ActQuant(bits=8))

    def run(model, train, hooks=()):
        return torchslim.quantize_(model, QATConfig(**kw, train=train), task=task, hooks=list(hooks))

    full = run(copy.deepcopy(base), _train(6, lr=1e-2))
    ck = str(tmp_path / "ck")
    with pytest.raises(KeyboardInterrupt):
        run(copy.deepcopy(base), _train(6, lr=1e-2, checkpoint_dir=ck, checkpoint_every=1), [_Crash()])
    resumed = run(copy.deepcopy(base), _train(6, lr=1e-2, checkpoint_dir=ck, checkpoint_every=1, resume=True))
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("make,match", [
    (lambda: QATConfig(format=IntFormat(4, symmetric=False), activations=ActQuant()), "symmetric integers per channel"),
    (lambda: QATConfig(format=NF4()), "no training form"),
    (lambda: QATConfig(activations=ActQuant(bits=4, mode="dynamic")), "8-bit"),
])
def test_settings_qat_cannot_train_or_convert_are_refused(make, match) -> None:
    with pytest.raises(ConfigError, match=match):
        torchslim.quantize_(mlp(), make(), task=blobs(), train=_train(1))
