"""torchslim: make trained PyTorch and Hugging Face models smaller and faster, measured."""
from torchslim.version import __version__

__all__ = ["__version__"]
