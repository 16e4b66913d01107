"""Models larger than memory: layer-wise onloading for the calibrated post-training methods, and perplexity of an
artifact by block streaming (see docs/scale.md)."""
from torchslim.scale.onload import compress_onloaded
from torchslim.scale.stream_eval import stream_perplexity

__all__ = ["compress_onloaded", "stream_perplexity"]
