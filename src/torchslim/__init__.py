"""torchslim: make trained PyTorch and Hugging Face models smaller and faster, with measured results.

Verbs change a model in place, one per technique family::

    import torch
    import torchslim
    loaded = torchslim.load_model("smollm2-135m")
    torchslim.quantize_(loaded.model, torchslim.CastConfig(dtype=torch.bfloat16))
    report = torchslim.evaluate(loaded.model, loaded.task)
    torchslim.save(loaded.model, "out/smollm2-bf16")
"""
from torchslim.version import __version__

# verbs
from torchslim.api import convert_attention_, distill_, early_exit_, evaluate, factorize_, finetune_, prune_, quantize_
from torchslim.core.registry import apply_

# building blocks
from torchslim.core.config import BaseConfig
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError
from torchslim.core.select import Selector

# artifacts and models
from torchslim.artifact import load, save
from torchslim.models import load_model
import torchslim.zoo.hf  # noqa: F401,E402 - registers the transformers skeleton builder
import torchslim.runtime  # noqa: F401,E402 - torchslim.runtime.prepare_fast / prepare_fast_encoder

# techniques (importing registers their handlers)
from torchslim.quantization import (ActQuant, AWQConfig, CastConfig, GPTQConfig, KVCacheConfig, QATConfig, W8A8Config,
                                    WeightOnlyConfig)
from torchslim.pruning import DynamicSparseConfig, GradualConfig, IterativeConfig, LotteryConfig, StructuredConfig, UnstructuredConfig
from torchslim.train import FinetuneConfig, TrainConfig
from torchslim.distill import BlackBoxDistillConfig, DistillConfig, ReconstructConfig
from torchslim.peft import BottleneckConfig, IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig
from torchslim.lowrank import LowRankConfig
from torchslim.attention import AttentionConfig
from torchslim.early_exit import EarlyExitConfig

__all__ = [
    "__version__",
    "apply_", "convert_attention_", "distill_", "early_exit_", "factorize_", "finetune_", "prune_", "quantize_",
    "ApplyContext", "BaseConfig", "Selector", "TrainConfig", "FinetuneConfig", "ArtifactError", "ConfigError", "TorchSlimError",
    "evaluate", "load", "load_model", "save",
    "AWQConfig", "CastConfig", "GPTQConfig", "KVCacheConfig", "W8A8Config", "WeightOnlyConfig", "QATConfig", "ActQuant",
    "DistillConfig", "BlackBoxDistillConfig", "ReconstructConfig", "LoraConfig", "IA3Config", "BottleneckConfig",
    "PromptTuningConfig", "PrefixTuningConfig",
    "DynamicSparseConfig", "GradualConfig", "IterativeConfig", "LotteryConfig", "StructuredConfig", "UnstructuredConfig",
    "LowRankConfig", "AttentionConfig", "EarlyExitConfig",
]
