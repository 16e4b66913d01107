"""Early exit: classifiers on intermediate blocks that let confident inputs stop computing.

Layers: ``math`` is pure math (pooling, entropy, the DeeBERT and PABEE rules, the distillation loss); ``module``
the representation (:class:`ExitHead`, added with ``core.resize.add_module`` so artifacts rebuild it); ``policy``
the exit policies; ``config`` the model flow (:class:`EarlyExitConfig`, a training config: add heads, train them by
distillation from the final layer); ``runtime`` runs a model with exits (:class:`ExitRuntime`: batch 1, and
batches with per-row exits and compaction). Importing this package registers the ``early_exit_`` handler.
"""
from torchslim.early_exit.config import EarlyExitConfig, block_chain
from torchslim.early_exit.module import ExitHead, exit_heads
from torchslim.early_exit.policy import EntropyPolicy, ExitPolicy, LearnedPolicy, PatiencePolicy
from torchslim.early_exit.runtime import ExitOutput, ExitRuntime

__all__ = ["EarlyExitConfig", "EntropyPolicy", "ExitHead", "ExitOutput", "ExitPolicy", "ExitRuntime",
           "LearnedPolicy", "PatiencePolicy", "block_chain", "exit_heads"]
