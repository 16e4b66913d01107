"""The encoder fast path: same embeddings (float and W8A8), eager attention switched to sdpa, compile opt-in."""
from __future__ import annotations

import copy

import pytest
import torch

import torchslim
from torchslim.quantization import W8A8Config
from torchslim.quantization.int8_linear import Int8DynamicLinear
from torchslim.runtime import prepare_fast_encoder, retain_freed_memory
from torchslim.zoo.tiny import tiny_bert


def _out(model, batch):
    with torch.inference_mode():
        return model(**batch).last_hidden_state


def test_fast_path_keeps_float_outputs_and_switches_eager_attention_to_sdpa() -> None:
    lm = tiny_bert(attn_implementation="eager")
    assert lm.model.config._attn_implementation == "eager"
    batch = lm.task.example_inputs(2, 18)
    ref = _out(lm.model, batch)
    report = prepare_fast_encoder(lm.model)
    assert report.attention == "sdpa (was eager)" and lm.model.config._attn_implementation == "sdpa"
    assert report.model is lm.model and not report.compiled
    assert len(report.fuse.fused) == lm.model.config.num_hidden_layers
    assert "fused 2 shared-input groups" in report.summary()
    torch.testing.assert_close(_out(lm.model, batch), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow          # torch.compile: 8-16 s on 2 cores
def test_compiled_w8a8_encoder_runs_the_int_mm_formulation() -> None:
    lm = tiny_bert()
    torchslim.quantize_(lm.model, W8A8Config())
    batch = lm.task.example_inputs(2, 24)
    eager = _out(lm.model, batch)
    fp32 = _out(tiny_bert().model, batch)
    report = prepare_fast_encoder(copy.deepcopy(lm.model), compile=True)
    assert report.compiled and report.model is not None and "torch.compile" in report.summary()
    got = _out(report.model, batch)

    class Rows(torch.nn.Module):               # the same layers run eagerly through the compiled formulation
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer._int_mm_rows(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    expected = copy.deepcopy(lm.model)
    for name, m in list(expected.named_modules()):
        if isinstance(m, Int8DynamicLinear):
            expected.set_submodule(name, Rows(m))
    torch.testing.assert_close(got, _out(expected, batch), atol=2e-4, rtol=1e-4)
    # both int8 forms are per-token: equally far from fp32
    assert (got - fp32).abs().max() < 2 * (eager - fp32).abs().max()


def test_int_mm_formulation_is_the_same_product_as_the_eager_kernel() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 20)
    q = Int8DynamicLinear.from_linear(lin, None)
    x = torch.randn(5, 48) * torch.linspace(0.1, 10, 5)[:, None]     # rows of very different ranges
    a, b = q(x), q._int_mm_rows(x)
    err = (a - lin(x)).abs().max()
    assert (a - b).abs().max() <= err and (b - lin(x)).abs().max() < 2 * err


def test_retaining_freed_memory_is_idempotent_on_glibc() -> None:
    first = retain_freed_memory()
    assert retain_freed_memory() is first
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True


@pytest.mark.slow          # torch.compile: 8-16 s on 2 cores
def test_compiled_w8a8_encoder_runs_with_gradients_enabled() -> None:
    lm = tiny_bert()
    torchslim.quantize_(lm.model, W8A8Config())
    batch = lm.task.example_inputs(2, 12)
    want = _out(lm.model, batch)
    report = prepare_fast_encoder(copy.deepcopy(lm.model), compile=True)
    got = report.model(**batch).last_hidden_state          # no inference_mode: autograd traces the graph
    assert (got.detach() - want).abs().max() < 1e-2                 # int8 rounding apart, as eager
