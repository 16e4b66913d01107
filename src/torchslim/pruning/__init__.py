"""Pruning: unstructured, N:M and structured (channels, neurons, heads, layers).

Layers: ``importance``/``masks``/``sparsegpt_math`` are pure math; ``sparse_linear`` and
``surgery`` are the representation (compressed storage, sparse kernels, smaller modules); the
rest is model flow. Importing this package registers the ``prune_`` handlers.
"""
from torchslim.pruning import structured, unstructured  # noqa: F401 - register handlers
from torchslim.pruning.config import Scope, SparseKernel, Storage, StructuredConfig, Target, UnstructuredConfig
from torchslim.pruning.importance import Importance

__all__ = ["Importance", "Scope", "SparseKernel", "Storage", "StructuredConfig", "Target", "UnstructuredConfig"]
