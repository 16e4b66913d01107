"""Low-rank factorization: a linear layer ``[out, in]`` becomes two, ``in -> r -> out``, by plain truncated SVD,
activation-aware SVD (ASVD) or whitened SVD (SVD-LLM), with ranks per layer by energy kept or across layers by a
parameter or FLOP budget.

Layers: ``math``/``ranks`` are pure math; ``module`` is the representation (:class:`LowRankLinear`, whose two
factors are plain ``nn.Linear`` children that quantizers, adapters and trainers reach); ``select``, ``speed`` and
``factorize`` are the model flow. Importing this package registers the ``factorize_`` handler.
"""
from torchslim.lowrank import factorize  # noqa: F401 - registers the handler and planner
from torchslim.lowrank.config import Allocation, Budget, LowRankConfig, Method
from torchslim.lowrank.math import Factors, asvd_factors, svd_factors, whitened_factors
from torchslim.lowrank.module import LowRankLinear

__all__ = ["Allocation", "Budget", "Factors", "LowRankConfig", "LowRankLinear", "Method", "asvd_factors",
           "svd_factors", "whitened_factors"]
