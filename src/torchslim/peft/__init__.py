"""Parameter-efficient fine-tuning on any layer torchslim produces: each method adds small branches to the
layers it adapts (:mod:`torchslim.peft.branch`), trains them with the one Trainer, and merges them into the
base or keeps them, in the artifact or as an adapter of its own.

One folder per method: :mod:`torchslim.peft.lora` (LoRA, rsLoRA, DoRA; QLoRA over a packed base),
:mod:`torchslim.peft.prompt` (prompt tuning, prefix tuning)."""
from torchslim.peft.branch import Branch, adapters, branches
from torchslim.peft.config import AdapterConfig
from torchslim.peft.lora import LoraBranch, LoraConfig
from torchslim.peft.merge import delete_adapter, merge_, set_adapter, unmerge_
from torchslim.peft.prompt import (
    PrefixBranch,
    PrefixTuningConfig,
    PromptBranch,
    PromptTuningConfig,
)

__all__ = ["AdapterConfig", "Branch", "LoraBranch", "LoraConfig", "PrefixBranch", "PrefixTuningConfig", "PromptBranch",
           "PromptTuningConfig", "adapters", "branches", "delete_adapter", "merge_", "set_adapter", "unmerge_"]
