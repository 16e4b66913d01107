"""IA3: learned vectors that rescale layers' outputs (or feed-forward inputs), and their config."""
from torchslim.peft.ia3.branch import IA3Branch
from torchslim.peft.ia3.config import IA3Config

__all__ = ["IA3Branch", "IA3Config"]
