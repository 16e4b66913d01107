"""The bf16 GEMV: its arithmetic on every instruction set, and bf16 layers switched to it at decode."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.runtime import FastDecoder, prepare_fast
from torchslim.runtime.bf16_gemv import GemvLinear, bf16_matmul, restore, use_bf16_gemv
from torchslim.runtime.cpu_kernels import available
from torchslim.zoo.tiny import tiny_llama

pytestmark = pytest.mark.skipif(not available(), reason="no C++ compiler here: torchslim's kernels are not built")


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("n, k", [(70, 100), (64, 576), (5, 33)])
def test_every_instruction_set_gives_the_float32_product_rounded_once(rows, n, k) -> None:
    """Inputs that are small integers make every product and partial sum exact in float32: then each level equals
    the exact result rounded to bf16 once, whatever the order it sums in."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-4, 5, (rows, k), generator=g).to(torch.bfloat16)
    w = torch.randint(-4, 5, (n, k), generator=g).to(torch.bfloat16)
    b = torch.randint(-4, 5, (n,), generator=g).to(torch.bfloat16)
    want = (x.double() @ w.double().T + b.double()).to(torch.bfloat16)
    for level in (0, 1, 2):                          # a level above this CPU's runs the best it has
        got = bf16_matmul(x, w, b, level)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want), level
    assert torch.equal(bf16_matmul(x, w, None), (x.double() @ w.double().T).to(torch.bfloat16))


def test_general_inputs_match_torch_to_bf16_rounding() -> None:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 576, generator=g).to(torch.bfloat16), torch.randn(96, 576, generator=g).to(torch.bfloat16)
    got, want = bf16_matmul(x, w).float(), x.float() @ w.float().T
    assert ((got - want).norm() / want.norm()).item() < 4e-3


def _bf16_llama():
    model = tiny_llama().model.eval()
    prepare_fast(model, bf16_gemv=False)                 # bf16, fused q/k/v and gate/up, nothing switched yet
    return model


def test_layers_switch_by_measurement_keep_their_parameters_and_fall_back_above_the_rows() -> None:
    model = _bf16_llama()
    head = model.lm_head.weight
    report = use_bf16_gemv(model, min_gain=0.0)          # every shape "faster": all switch
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert report.switched and len(report.switched) == len(linears) and not report.kept
    assert all(type(m) is GemvLinear for m in linears)
    assert model.lm_head.weight is head                  # the tied head keeps its parameter
    layer = linears[0]
    x = torch.randn(3, layer.in_features).to(torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x).float(), nn.functional.linear(x, layer.weight, layer.bias).float(),
                                   rtol=2e-2, atol=2e-2)
        many = torch.randn(20, layer.in_features).to(torch.bfloat16)   # above the rows: torch's matmul, exactly
        assert torch.equal(layer(many), nn.functional.linear(many, layer.weight, layer.bias))
    assert restore(model) == len(linears) and all(type(m) is nn.Linear for m in linears)
    assert not use_bf16_gemv(model, min_gain=1e9).switched               # nothing measures a billion times faster


def test_decoding_on_the_gemv_gives_generate_s_tokens_eager_and_compiled() -> None:
    model = _bf16_llama()
    use_bf16_gemv(model, min_gain=0.0)
    ids = torch.tensor([[3, 4, 5]])
    with torch.inference_mode():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, min_new_tokens=10,
                              do_sample=False, pad_token_id=0)
        assert torch.equal(FastDecoder(copy.deepcopy(model), max_len=24).generate(ids, 10)[0], want)
        assert torch.equal(FastDecoder(model, max_len=24, compile=True).generate(ids, 10)[0], want)


def test_a_second_prepare_fast_still_fuses_the_switched_layers() -> None:
    """Preparing twice (e.g. once unfused to measure the artifact, then fused) fuses the layers the first switched."""
    model = tiny_llama().model.eval()
    prepare_fast(model, fuse=False)
    use_bf16_gemv(model, min_gain=0.0)
    attn = model.model.layers[0].self_attn
    assert type(attn.q_proj) is GemvLinear
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.inference_mode():
        before = model(ids).logits
        prepare_fast(model)
        assert attn.q_proj.owner is attn.k_proj.owner          # q/k/v now share one fused matmul
        torch.testing.assert_close(model(ids).logits.float(), before.float(), rtol=2e-2, atol=2e-2)
