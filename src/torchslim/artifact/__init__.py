"""Artifacts: safetensors weights + a JSON manifest. Loading never unpickles anything."""
from torchslim.artifact.format import FORMAT_NAME, FORMAT_VERSION, load, read_manifest, save

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load", "read_manifest", "save"]
