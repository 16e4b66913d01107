"""Graph transforms that keep a model's outputs (up to rounding), shared by the technique families: BatchNorm
folding and the fx graph helpers (the int8 ReLU fusion built on them is quantization's: ``quantization.fuse_int8``).

Each finds module chains with torch.fx, then edits the model in place (same class, same forward,
same parameter names), recording merged-away modules so artifacts of the result load back.
"""
from torchslim.transforms.fold_bn import FoldedConv2d, fold_bn_, fold_conv_bn_weights, foldable_pairs
from torchslim.transforms.graph import FoldedAway, module_chains, single_consumer, trace

__all__ = ["FoldedAway", "FoldedConv2d", "fold_bn_", "fold_conv_bn_weights", "foldable_pairs", "module_chains",
           "single_consumer", "trace"]
