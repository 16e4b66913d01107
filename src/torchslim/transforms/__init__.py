"""Graph transforms that keep a model's outputs (up to rounding): BatchNorm folding, ReLU fusion.

Each finds module chains with torch.fx, then edits the model in place (same class, same forward,
same parameter names), recording merged-away modules so artifacts of the result load back.
"""
from torchslim.transforms.fold_bn import FoldedConv2d, fold_bn_, fold_conv_bn_weights, foldable_pairs
from torchslim.transforms.fuse import fuse_int8_relu_
from torchslim.transforms.graph import FoldedAway, module_chains, single_consumer, trace

__all__ = ["FoldedAway", "FoldedConv2d", "fold_bn_", "fold_conv_bn_weights", "foldable_pairs", "fuse_int8_relu_",
           "module_chains", "single_consumer", "trace"]
