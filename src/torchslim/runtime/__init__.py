"""Running compressed models fast: the whole-model decode path for language models and the encoder path; exported
files in other runtimes (``backends``: ONNX Runtime, OpenVINO, llama.cpp)."""
from torchslim.runtime import backends
from torchslim.runtime.allocator import retain_freed_memory
from torchslim.runtime.decode import DecodeTiming, FastDecoder, prepare_fast
from torchslim.runtime.encoder import FastPathReport, prepare_fast_encoder
from torchslim.runtime.fuse import FuseReport, fuse_shared_inputs

__all__ = ["DecodeTiming", "backends", "FastDecoder", "FastPathReport", "FuseReport", "fuse_shared_inputs", "prepare_fast",
           "prepare_fast_encoder", "retain_freed_memory"]
