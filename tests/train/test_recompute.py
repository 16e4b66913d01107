"""Gradient checkpointing (``TrainConfig.gradient_checkpointing``): the same loss and gradients, less activation
memory saved for backward, adapters over a frozen (packed) base still get their gradients, the model is left as
found, and a model without blocks is warned about rather than silently trained without it."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchslim
from torchslim.quantization import IntFormat, PerGroup, QuantLinear, WeightOnlyConfig
from torchslim.train import LambdaHook, TrainConfig, Trainer
from torchslim.train.recompute import gradient_checkpointing
from torchslim.zoo.tiny import tiny_llama

from _train_helpers import mlp, toy_task


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), nn.Dropout(0.2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.drop(torch.relu(self.fc1(h))))


class _Stack(nn.Module):
    """Not a Hugging Face model; its blocks sit where the architecture table looks (``model.layers``)."""

    def __init__(self, dim: int = 8, depth: int = 3, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(_Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.model.layers:
            x = b(x)
        return self.head(x)


class _LoRA(nn.Module):
    """A frozen base layer plus a small trainable low-rank update."""

    def __init__(self, base: nn.Module, rank: int = 4) -> None:
        super().__init__()
        self.base = base
        self.a = nn.Linear(base.in_features, rank, bias=False)
        self.b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.b.weight, std=0.02)          # non-zero, so both factors get a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.b(self.a(x))


def _with_adapters(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    names = [n for n, _ in model.named_modules() if n.endswith(suffixes)]
    for n in names:
        model.set_submodule(n, _LoRA(model.get_submodule(n)))
    return names


def _loss_and_grads(model: nn.Module, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-5)
    assert a[1].keys() == b[1].keys() and a[1]
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=0, atol=1e-5, msg=k)


class _ActivationBytes:
    """Bytes autograd saves for backward (saved_tensors_hooks) plus, to be fair to checkpointing, the bytes of
    every block's inputs (which a checkpointed block keeps to recompute from)."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        self.saved = self.block_inputs = 0
        self.blocks = blocks

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.saved += t.numel() * t.element_size()
        return t

    def _inputs(self, _module, args, kwargs) -> None:
        for t in [*args, *kwargs.values()]:
            for x in t if isinstance(t, tuple) else (t,):
                if isinstance(x, torch.Tensor):
                    self.block_inputs += x.numel() * x.element_size()

    def measure(self, fn) -> torch.Tensor:
        handles = [b.register_forward_pre_hook(self._inputs, with_kwargs=True) for b in self.blocks]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                return fn()
        finally:
            for h in handles:
                h.remove()


def _llama(layers: int = 2):
    lm = tiny_llama(0, num_hidden_layers=layers)
    lm.model.train()
    batch = lm.task.example_inputs(2, 24)
    return lm.model, lambda: lm.task.loss(lm.model, batch)


def test_hugging_face_model_same_loss_and_gradients_and_left_as_found() -> None:
    model, loss_fn = _llama()
    plain = _loss_and_grads(model, loss_fn)
    with gradient_checkpointing(model) as how:
        assert how == "transformers" and model.is_activation_checkpointing
        checkpointed = _loss_and_grads(model, loss_fn)
    assert not model.is_activation_checkpointing
    _assert_same(plain, checkpointed)


def test_checkpointing_saves_less_activation_memory_for_backward() -> None:
    model, loss_fn = _llama(layers=4)
    blocks = list(model.model.layers)
    plain, ckpt = _ActivationBytes(blocks), _ActivationBytes(blocks)
    plain.measure(loss_fn).backward()
    with gradient_checkpointing(model):
        ckpt.measure(loss_fn).backward()
    assert ckpt.saved + ckpt.block_inputs < plain.saved / 4, (ckpt.saved, ckpt.block_inputs, plain.saved)


def test_adapters_over_a_frozen_int4_base_get_the_same_gradients_when_checkpointed() -> None:
    """QLoRA: packed int4 base, every base parameter frozen (the blocks' inputs do not require grad), adapters
    on q/v; non-reentrant checkpointing still reaches them, and nothing saved is a dense base weight."""
    model, loss_fn = _llama()
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    names = _with_adapters(model, ("q_proj", "v_proj"))
    assert len(names) == 4 and all(isinstance(model.get_submodule(n).base, QuantLinear) for n in names)
    weights = {(m.out_features, m.in_features) for m in model.modules() if isinstance(m, QuantLinear)}
    shapes: list[tuple[tuple[int, ...], torch.dtype]] = []

    def record(t: torch.Tensor) -> torch.Tensor:
        shapes.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        plain = _loss_and_grads(model, loss_fn)
    with gradient_checkpointing(model):
        checkpointed = _loss_and_grads(model, loss_fn)
    _assert_same(plain, checkpointed)
    assert {k.rsplit(".", 2)[-2] for k in plain[1]} == {"a", "b"}                     # only adapters train
    assert all(g.abs().sum() > 0 for g in checkpointed[1].values())
    assert not [s for s, d in shapes if s in weights and d.is_floating_point]


def _fit(model: nn.Module, task, seen: list, look=lambda m: None, **cfg) -> list[float]:
    """Train 3 steps; ``seen`` gets ``look(model)`` after every step."""
    hook = LambdaHook(on_step_end=lambda tr, s: seen.append(look(tr.model)))
    config = TrainConfig(**{"steps": 3, "batch_size": 2, "lr": 1e-3, "eval_at_end": False, "progress": False,
                            "seed": 5, **cfg})
    return Trainer(model, task, config, hooks=[hook]).fit().losses


def test_trainer_honours_the_option_on_a_hugging_face_model() -> None:
    runs = {}
    for on in (False, True):
        lm = tiny_llama(0)
        during: list = []
        losses = _fit(lm.model, lm.task, during, lambda m: m.is_activation_checkpointing, gradient_checkpointing=on)
        runs[on] = (losses, {k: v.clone() for k, v in lm.model.state_dict().items()})
        assert during == [on] * 3 and not lm.model.is_activation_checkpointing          # on during fit only
    assert runs[True][0] == pytest.approx(runs[False][0], abs=1e-5)
    for k, v in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], v, rtol=0, atol=1e-5, msg=k)


def test_other_models_checkpoint_the_blocks_the_architecture_table_finds() -> None:
    """Dropout inside the blocks: the recomputation replays the same masks, so training is identical."""
    runs = {}
    for on in (False, True):
        model, during = _Stack(), []
        runs[on] = _fit(model, toy_task(), during, lambda m: ["forward" in b.__dict__ for b in m.model.layers],
                        gradient_checkpointing=on, batch_size=16)
        assert during == [[on] * 3] * 3                                                 # every block, every step
        assert not any("forward" in b.__dict__ for b in model.model.layers)             # restored after fit
    assert runs[True] == pytest.approx(runs[False], abs=1e-5)
    model = _Stack()
    with gradient_checkpointing(model) as how:
        assert how == "3 blocks" and all("forward" in b.__dict__ for b in model.model.layers)


def test_adapters_in_a_non_hugging_face_model_train_through_checkpointed_blocks() -> None:
    model, x = _Stack(), torch.randn(16, 8)
    _with_adapters(model, ("fc1",))
    model.eval()                                          # no dropout: compare two separate forwards
    plain = _loss_and_grads(model, lambda: model(x).square().mean())
    blocks = list(model.model.layers)
    a, b = _ActivationBytes(blocks), _ActivationBytes(blocks)
    a.measure(lambda: model(x).square().mean())
    with gradient_checkpointing(model):
        checkpointed = _loss_and_grads(model, lambda: model(x).square().mean())
        b.measure(lambda: model(x).square().mean())
    _assert_same(plain, checkpointed)
    assert len(checkpointed[1]) == 6 and b.saved + b.block_inputs < a.saved


def test_a_model_without_blocks_is_warned_about_once_and_trains_as_without() -> None:
    with pytest.warns(UserWarning, match="no transformer blocks of MLP") as caught:
        warned = _fit(mlp(0), toy_task(), [], gradient_checkpointing=True, batch_size=16)
    assert sum("no transformer blocks" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = _fit(mlp(0), toy_task(), [], batch_size=16)
    assert warned == plain


def test_the_option_does_not_change_the_math_so_resume_ignores_it() -> None:
    saved = TrainConfig(gradient_checkpointing=False).to_dict()
    assert "gradient_checkpointing" not in TrainConfig.RESUME_FIELDS
    assert TrainConfig(gradient_checkpointing=True).resume_differences(saved) == []
