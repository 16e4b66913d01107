"""Runtimes other than torch, each behind one small adapter: an exported file as a model-like ``nn.Module`` that a
task evaluates and times exactly as it does the torch model (see :mod:`torchslim.runtime.backends.graph`).

=============  ===========  =============================  =============================================
runtime        reads        adapter                        install
=============  ===========  =============================  =============================================
onnxruntime    ``.onnx``    :class:`ort.OrtModel`          ``pip install onnxruntime`` (torchslim[onnx])
openvino       ``.onnx``    :class:`openvino_rt.OpenVinoModel`  ``pip install openvino``
llamacpp       ``.gguf``    :class:`llamacpp.LlamaCppModel`     ``pip install llama-cpp-python``
=============  ===========  =============================  =============================================

A runtime that is not installed is an optional extra: :func:`require` raises one line naming the command.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError


@dataclass(frozen=True)
class Backend:
    """One runtime: the Python package it needs, how to install it, the file kind it reads and its adapter."""

    name: str
    package: str            # the import name whose absence means "not installed"
    pip: str                # the PyPI package that installs it
    extra: str              # torchslim's optional-dependency extra holding it
    file_kind: str          # "onnx" or "gguf"
    adapter: str            # "module:Class" below torchslim.runtime.backends


BACKENDS = {b.name: b for b in (
    Backend("onnxruntime", "onnxruntime", "onnxruntime", "onnx", "onnx", "ort:OrtModel"),
    Backend("openvino", "openvino", "openvino", "openvino", "onnx", "openvino_rt:OpenVinoModel"),
    Backend("llamacpp", "llama_cpp", "llama-cpp-python", "llamacpp", "gguf", "llamacpp:LlamaCppModel"),
)}
RUNTIMES = ("torch", *BACKENDS)


def backend(name: str) -> Backend:
    """The backend called ``name``; a ConfigError naming the choices otherwise (``torch`` has no backend)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown runtime {name!r}: choose from {', '.join(RUNTIMES)}")
    return BACKENDS[name]


def available(name: str) -> bool:
    """Whether ``name``'s package can be imported here (``torch`` always can)."""
    return name == "torch" or importlib.util.find_spec(backend(name).package) is not None


def require(name: str) -> Backend:
    """``name``'s backend, or one line saying it is not installed and how to install it."""
    b = backend(name)
    if not available(name):
        raise TorchSlimError(f"runtime {name!r} is not installed: pip install {b.pip} "
                             f"(or pip install 'torchslim[{b.extra}]')")
    return b


def open_file(name: str, path: str | Path, threads: int | None = None, **options: Any) -> nn.Module:
    """The exported file ``path`` run by runtime ``name`` as a model-like module (keyword ``options`` go to the
    adapter: OpenVINO's ``config`` and ``compress_to_fp16``, llama.cpp's ``n_ctx``, ONNX Runtime's ``options``)."""
    b = require(name)
    path = Path(path)
    if path.is_dir() and b.file_kind == "onnx":           # an exported decoder folder: its whole-sequence graph
        path = path / "model.onnx"
    if not path.is_file():
        raise ConfigError(f"{path}: no such {b.file_kind.upper()} file for runtime {name!r}")
    if path.suffix.lower() != f".{b.file_kind}":
        raise ConfigError(f"{path}: runtime {name!r} reads .{b.file_kind} files")
    module, cls = b.adapter.split(":")
    adapter = getattr(importlib.import_module(f"torchslim.runtime.backends.{module}"), cls)
    return adapter(path, threads=threads, **options)


__all__ = ["BACKENDS", "RUNTIMES", "Backend", "available", "backend", "open_file", "require"]
