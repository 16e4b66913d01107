"""ClassificationTask: metrics, call convention, deterministic sharded training stream, calibration split."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.tasks.classification import ClassificationTask, as_logits


def _task(n_train: int = 50, n_eval: int = 20, classes: int = 4) -> ClassificationTask:
    """Inputs are one-hot labels plus a unique id feature, so samples are recognizable."""
    def split(n: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        x = torch.cat([F.one_hot(y, classes).float(), (torch.arange(n) + offset).float().unsqueeze(1)], dim=1)
        return x, y

    (tx, ty), (ex, ey) = split(n_train, 0), split(n_eval, 1000)
    return ClassificationTask(tx, ty, ex, ey, eval_batch_size=7)


class Oracle(nn.Module):
    """Logits = scale * one-hot part of the input (always right)."""

    def __init__(self, classes: int = 4, scale: float = 3.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, : self.classes]


def test_evaluate_top1_and_loss() -> None:
    task = _task()
    metrics = task.evaluate(Oracle())
    expected = F.cross_entropy(3.0 * F.one_hot(task.eval_y, 4).float(), task.eval_y).item()
    assert metrics["top1"] == 100.0
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert task.metric == "top1" and task.higher_is_better and task.num_classes == 4

    class Zero(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), 4) + torch.tensor([1.0, 0, 0, 0])

    zero = task.evaluate(Zero())
    assert zero["top1"] == pytest.approx(100.0 * (task.eval_y == 0).float().mean().item())


def test_evaluate_restores_training_mode() -> None:
    model = Oracle().train()
    _task().evaluate(model)
    assert model.training


def test_example_inputs_call_convention() -> None:
    task = _task()
    inputs = task.example_inputs(3)
    assert list(inputs) == ["x"] and inputs["x"].shape == (3, 5)
    assert Oracle()(**inputs).shape == (3, 4)                      # model(**inputs)
    assert task.forward(Oracle(), inputs).shape == (3, 4)
    assert task.example_inputs(120)["x"].shape == (120, 5)         # repeats a small split
    seq = nn.Sequential(nn.Linear(5, 4))                            # forward(input): called positionally
    assert task.forward(seq, inputs).shape == (3, 4)
    assert task.evaluate(seq)["top1"] >= 0.0


def test_loss_is_cross_entropy() -> None:
    task = _task()
    batch = next(task.train_batches(8))
    assert torch.allclose(task.loss(Oracle(), batch), F.cross_entropy(3.0 * batch["x"][:, :4], batch["y"]))


def test_outputs_with_logits_attribute_or_tuple() -> None:
    t = torch.ones(2, 3)
    assert as_logits((t, None)) is t
    assert as_logits(type("Out", (), {"logits": t})()) is t
    with pytest.raises(TorchSlimError):
        as_logits({"a": t})


def _ids(batch: dict) -> list[int]:
    return batch["x"][:, -1].long().tolist()


def test_train_stream_is_deterministic_endless_and_epoch_complete() -> None:
    task = _task(n_train=50)
    a = [_ids(b) for b in itertools.islice(task.train_batches(16, seed=3), 10)]
    b = [_ids(b) for b in itertools.islice(task.train_batches(16, seed=3), 10)]
    c = [_ids(b) for b in itertools.islice(task.train_batches(16, seed=4), 10)]
    assert a == b and a != c
    flat = [i for batch in a for i in batch]
    assert sorted(flat[:50]) == list(range(50)) and sorted(flat[50:100]) == list(range(50))   # whole epochs
    assert all(i < 1000 for i in flat)                                                        # never eval data
    first = next(task.train_batches(4))
    assert first["y"].dtype == torch.long and torch.equal(first["y"], first["x"][:, :4].argmax(1))


def test_shards_and_accumulation_reproduce_the_global_batch() -> None:
    """Rank r of N with batch B == slice r of 1 process with N*B; two batches of B == one of 2B."""
    task = _task(n_train=50)
    single = [_ids(b) for b in itertools.islice(task.train_batches(12, seed=1), 9)]      # crosses epochs
    r0 = [_ids(b) for b in itertools.islice(task.train_batches(6, seed=1, rank=0, world_size=2), 9)]
    r1 = [_ids(b) for b in itertools.islice(task.train_batches(6, seed=1, rank=1, world_size=2), 9)]
    assert [x + y for x, y in zip(r0, r1)] == single
    small = [_ids(b) for b in itertools.islice(task.train_batches(6, seed=1), 18)]
    assert [small[2 * i] + small[2 * i + 1] for i in range(9)] == single


def test_calibration_batches_come_from_the_training_split() -> None:
    task = _task(n_train=50)
    batches = task.calibration_batches(n_samples=10, batch_size=4)
    assert [len(b["x"]) for b in batches] == [4, 4, 2] and all(list(b) == ["x"] for b in batches)
    ids = [i for b in batches for i in _ids(b)]
    assert len(set(ids)) == 10 and all(0 <= i < 50 for i in ids)
    assert ids == [i for b in task.calibration_batches(10, 4) for i in _ids(b)]           # deterministic
    assert sum(len(b["x"]) for b in task.calibration_batches(500, 64)) == 50              # capped


def test_inputs_follow_model_dtype() -> None:
    task = _task()
    model = Oracle().to(torch.float64)
    assert task.evaluate(model)["top1"] == 100.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"train_y": torch.zeros(3, dtype=torch.long)},
        {"train_y": torch.zeros(50)},
        {"eval_x": torch.zeros(20, 7)},
        {"train_y": -torch.ones(50, dtype=torch.long)},
    ],
)
def test_bad_data_is_a_config_error(kwargs: dict) -> None:
    base = _task()
    args = {"train_x": base.train_x, "train_y": base.train_y, "eval_x": base.eval_x, "eval_y": base.eval_y}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        ClassificationTask(**args)


def test_bad_sharding_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _task().train_batches(4, rank=2, world_size=2)
    with pytest.raises(ConfigError):
        _task().example_inputs(0)


def test_loss_from_output_matches_loss():
    import torch
    from torch import nn

    from torchslim.tasks.classification import ClassificationTask

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    task, model = ClassificationTask(x, y, x, y), nn.Linear(4, 3)
    batch = {"x": x[:8], "y": y[:8]}
    torch.testing.assert_close(task.loss_from_output(model(batch["x"]), batch), task.loss(model, batch))
