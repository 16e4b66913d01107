"""Bottleneck adapters (Houlsby and Pfeiffer placements): branch and config."""
from torchslim.peft.bottleneck.branch import BottleneckBranch
from torchslim.peft.bottleneck.config import BottleneckConfig

__all__ = ["BottleneckBranch", "BottleneckConfig"]
