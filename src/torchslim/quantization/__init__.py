"""Quantization techniques. Importing this package registers their handlers and module formats."""
from torchslim.quantization.cast import CastConfig, CastLinear

__all__ = ["CastConfig", "CastLinear"]
