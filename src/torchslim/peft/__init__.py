"""Parameter-efficient fine-tuning on any layer torchslim produces: each method adds small branches to the
layers it adapts (:mod:`torchslim.peft.branch`), trains them with the one Trainer, and merges them into the
base or keeps them, in the artifact or as an adapter of its own (:mod:`torchslim.peft.files`), in peft's
format both ways (:mod:`torchslim.peft.interop`).

One folder per method: :mod:`torchslim.peft.lora` (LoRA, rsLoRA, DoRA; QLoRA over a packed base),
:mod:`torchslim.peft.ia3`, :mod:`torchslim.peft.bottleneck` (Houlsby / Pfeiffer adapters),
:mod:`torchslim.peft.prompt` (prompt tuning, prefix tuning)."""
from torchslim.peft import interop_rows  # noqa: F401  (registers the IA3, prompt and prefix peft formats)
from torchslim.peft.bottleneck import BottleneckBranch, BottleneckConfig
from torchslim.peft.branch import Branch, adapters, branches
from torchslim.peft.config import AdapterConfig
from torchslim.peft.files import load_adapter, save_adapter
from torchslim.peft.ia3 import IA3Branch, IA3Config
from torchslim.peft.interop import from_peft, to_peft
from torchslim.peft.lora import LoraBranch, LoraConfig
from torchslim.peft.merge import delete_adapter, merge_, set_adapter, unmerge_
from torchslim.peft.prompt import PrefixBranch, PrefixTuningConfig, PromptBranch, PromptTuningConfig

__all__ = ["AdapterConfig", "BottleneckBranch", "BottleneckConfig", "Branch", "IA3Branch", "IA3Config", "LoraBranch",
           "LoraConfig", "PrefixBranch", "PrefixTuningConfig", "PromptBranch", "PromptTuningConfig", "adapters",
           "branches", "delete_adapter", "from_peft", "load_adapter", "merge_", "save_adapter", "set_adapter", "to_peft",
           "unmerge_"]
