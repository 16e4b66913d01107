"""Quantization-aware training: fake quantization (STE, LSQ/LSQ+, PACT) for training, converted to the packed
layers of post-training quantization (see :mod:`torchslim.quantization.qat.config`)."""
from torchslim.quantization.qat.config import ActQuant, QATConfig
from torchslim.quantization.qat.convert import from_float, from_packed, to_packed
from torchslim.quantization.qat.modules import ActFake, QATConv2d, QATLinear, WeightFake, is_qat

__all__ = ["ActFake", "ActQuant", "QATConfig", "QATConv2d", "QATLinear", "WeightFake", "from_float", "from_packed",
           "is_qat", "to_packed"]
