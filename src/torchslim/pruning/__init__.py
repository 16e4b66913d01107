"""Pruning: unstructured, N:M and structured (channels, neurons, heads, layers), one-shot or on a
training schedule (gradual, iterative, lottery ticket), or sparse from scratch (dynamic sparse training: RigL, SET).

Layers: ``importance``/``masks``/``sparsegpt_math`` are pure math; ``sparse_linear`` and
``surgery`` are the representation (compressed storage, sparse kernels, smaller modules); the
rest is model flow. Importing this package registers the ``prune_`` handlers.
"""
from torchslim.pruning import sparse_linear, structured, unstructured  # noqa: F401 - register handlers, formats
from torchslim.pruning.config import Scope, SparseKernel, Storage, StructuredConfig, Target, UnstructuredConfig
from torchslim.pruning.dynamic_sparse import DynamicSparseConfig, DynamicSparseHook, prepare_dynamic
from torchslim.pruning.importance import Importance
from torchslim.pruning.lottery import IterativeConfig, LotteryConfig, iterative_prune, lottery_ticket
from torchslim.pruning.schedules import GradualConfig, GradualPruningHook, MaskHook, convert, cubic_sparsity, prepare

__all__ = ["DynamicSparseConfig", "DynamicSparseHook", "GradualConfig", "GradualPruningHook", "Importance",
           "IterativeConfig", "LotteryConfig", "MaskHook", "Scope", "SparseKernel", "Storage", "StructuredConfig", "Target", "UnstructuredConfig", "convert",
           "cubic_sparsity", "iterative_prune", "lottery_ticket", "prepare", "prepare_dynamic"]
