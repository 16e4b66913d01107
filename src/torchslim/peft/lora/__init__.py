"""LoRA, rsLoRA and DoRA branches and their config."""
from torchslim.peft.lora.branch import LoraBranch
from torchslim.peft.lora.config import LoraConfig

__all__ = ["LoraBranch", "LoraConfig"]
