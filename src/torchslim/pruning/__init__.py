"""Pruning: unstructured, N:M and structured (channels, neurons, heads, layers).

Layers: ``importance``/``masks``/``sparsegpt_math`` are pure math; ``sparse_linear`` is the
representation (compressed storage, sparse kernels); the rest is model flow.
"""
from torchslim.pruning.config import Scope, SparseKernel, Storage, StructuredConfig, Target, UnstructuredConfig
from torchslim.pruning.importance import Importance

__all__ = ["Importance", "Scope", "SparseKernel", "Storage", "StructuredConfig", "Target", "UnstructuredConfig"]
