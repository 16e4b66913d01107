"""Running compressed models fast: the whole-model decode path for language models."""
from torchslim.runtime.decode import DecodeTiming, FastDecoder, prepare_fast

__all__ = ["DecodeTiming", "FastDecoder", "prepare_fast"]
