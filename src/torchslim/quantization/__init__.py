"""Quantization techniques. Importing this package registers their handlers and module formats."""
from torchslim.quantization.awq import AWQConfig
from torchslim.quantization.cast import CastConfig, CastEmbedding, CastLinear
from torchslim.quantization.formats import (NF4, Binary, Codebook, IntFormat, PerChannel, PerGroup, PerTensor,
                                            Ternary)
from torchslim.quantization.gptq import GPTQConfig
from torchslim.quantization.fuse_int8 import fuse_int8_relu_
from torchslim.quantization.int8_conv import Int8StaticConv2d, convert_conv
from torchslim.quantization.int8_linear import Int8DynamicLinear, Int8StaticLinear
from torchslim.quantization.qconv import QuantConv2d, quantize_conv_weight_only
from torchslim.quantization.qembedding import PackedEmbedding, tie_packed_head_
from torchslim.quantization.qat import ActQuant, QATConfig
from torchslim.quantization.kernels import Kernel
from torchslim.quantization.kv_cache import (KVCacheConfig, QuantizedKVCache, apply_kv_cache, cache_nbytes,
                                             kv_cache_config, remove_kv_cache)
from torchslim.quantization.observers import KL, MSE, MinMax, Percentile, compare_observers
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.sparse_quant import SparseQuantLinear
from torchslim.quantization.w8a8 import ActMode, W8A8Config
from torchslim.quantization.weight_only import WeightOnlyConfig, plan

__all__ = [
    "SparseQuantLinear",
    "fuse_int8_relu_",
    # configs
    "AWQConfig", "CastConfig", "GPTQConfig", "KVCacheConfig", "W8A8Config", "WeightOnlyConfig", "ActMode",
    "QATConfig", "ActQuant",
    # formats, granularities, observers, kernels
    "IntFormat", "NF4", "Binary", "Ternary", "Codebook", "PerTensor", "PerChannel", "PerGroup",
    "MinMax", "Percentile", "MSE", "KL", "Kernel",
    # modules
    "CastEmbedding", "CastLinear", "Int8DynamicLinear", "Int8StaticConv2d", "Int8StaticLinear", "QuantConv2d",
    "QuantLinear", "convert_conv", "quantize_conv_weight_only",
    # tools
    "compare_observers", "plan", "QuantizedKVCache", "apply_kv_cache", "cache_nbytes", "kv_cache_config",
    "remove_kv_cache",
]
