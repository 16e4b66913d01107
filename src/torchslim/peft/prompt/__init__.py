"""Prompt tuning and prefix tuning: learned virtual positions before the text, through hooks on the model."""
from torchslim.peft.prompt.branch import PrefixBranch, PromptBranch
from torchslim.peft.prompt.config import PrefixTuningConfig, PromptTuningConfig

__all__ = ["PrefixBranch", "PrefixTuningConfig", "PromptBranch", "PromptTuningConfig"]
