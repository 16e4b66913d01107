"""The runtime's measured choice of the split int8 kernel: it switches exactly the layers whose shape measured
faster, says so, and the fast decode path gives the same tokens with it."""
from __future__ import annotations

import copy
import math

import torch

import torchslim
from torchslim import WeightOnlyConfig
from torchslim.quantization import IntFormat, PerChannel
from torchslim.quantization.qlinear import QuantLinear
from torchslim.runtime import FastDecoder, prepare_fast
from torchslim.runtime.int8_units import use_int8_units
from torchslim.zoo.tiny import tiny_llama


def _int8_llama():
    lm = tiny_llama()
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    return lm.model


def _layers(model):
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def test_layers_switch_only_where_the_measurement_says_faster() -> None:
    model = _int8_llama()
    n = len(_layers(model))
    every = use_int8_units(model, min_gain=0.0, reps=3)
    assert len(every.switched) == n and not every.kept and all(m._split is not None for m in _layers(model))
    assert f"{n} of {n} int8 layers" in every.summary() and all(r > 0 for r in every.speedups.values())
    none = use_int8_units(model, min_gain=math.inf, reps=3)
    assert len(none.kept) == n and not none.switched and all(m._split is None for m in _layers(model))


def test_fast_decode_with_the_int8_units_gives_the_tokens_of_the_bf16_kernel() -> None:
    base = _int8_llama()
    with_units, without = copy.deepcopy(base), copy.deepcopy(base)
    prepare_fast(without, int8_units=False)
    prepare_fast(with_units)
    use_int8_units(with_units, min_gain=0.0, reps=3)        # every layer, whatever this machine measured
    assert all(m._split is not None for m in _layers(with_units))
    ids = torch.randint(1, 257, (1, 8), generator=torch.Generator().manual_seed(5))
    a, _ = FastDecoder(without, max_len=40).generate(ids, 24)
    b, _ = FastDecoder(with_units, max_len=40).generate(ids, 24)
    assert torch.equal(a, b)
