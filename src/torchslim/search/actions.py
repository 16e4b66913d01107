"""Candidate actions for a sensitivity scan, from short names (the edge's strings, parsed once) or config files.

============  ==========================================================================
name          action
============  ==========================================================================
``int8``      weight-only int8, symmetric, one scale per output channel (RTN); int actions also
              cover convolutions and untied embedding tables (rows quantized, read by lookup)
``int4g128``  weight-only int4, asymmetric, groups of 128 (``int3g64``, ``int2g32``, ...)
``int4``      weight-only int4, asymmetric, one scale per output channel
``sparse50``  unstructured magnitude pruning, 50% of the weights (any percentage 1-99)
``2:4``       N:M magnitude pruning (``4:8``, ...)
``svd20``     low-rank factorization by plain truncated SVD, 20% of the weights removed
``x.yaml``    any torchslim config file (its selector is replaced by the scanned layers)
============  ==========================================================================

Actions that need calibration data (GPTQ, Wanda, whitened SVD from a file) get the scan's task as calibration.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from torchslim.core.config import BaseConfig
from torchslim.core.errors import ConfigError
from torchslim.core.linear import LinearLike
from torchslim.core.select import Selector
from torchslim.lowrank import LowRankConfig, Method
from torchslim.pruning import UnstructuredConfig
from torchslim.quantization import IntFormat, PerChannel, PerGroup, WeightOnlyConfig

NAMES = ("int8", "int4g128", "int4", "sparse50", "2:4", "svd20", "x.yaml")
_INT = re.compile(r"int([2-8])(?:g(\d+))?")
_SPARSE = re.compile(r"sparse(\d{1,2})")
_NM = re.compile(r"(\d+):(\d+)")
_SVD = re.compile(r"svd(\d{1,2})")


@dataclass(frozen=True)
class Action:
    """One candidate change: its short ``name`` (a table column) and the ``config`` that makes it."""

    name: str
    config: BaseConfig


def parse_action(text: str) -> Action:
    """The action ``text`` names (see the module docstring); a ConfigError naming the choices otherwise."""
    t = text.strip()
    if t.endswith((".yaml", ".yml", ".json")):
        return Action(Path(t).stem, BaseConfig.load(t))
    if m := _INT.fullmatch(t):
        bits, group = int(m.group(1)), m.group(2)
        gran = PerGroup(int(group)) if group else PerChannel()
        return Action(t, WeightOnlyConfig(format=IntFormat(bits, symmetric=bits == 8), granularity=gran,
                                          selector=Selector(include=(LinearLike, nn.Conv2d, nn.Embedding))))
    if (m := _SPARSE.fullmatch(t)) and 0 < int(m.group(1)) < 100:
        return Action(t, UnstructuredConfig(sparsity=int(m.group(1)) / 100))
    if (m := _NM.fullmatch(t)) and 0 < int(m.group(1)) < int(m.group(2)):
        return Action(t, UnstructuredConfig(pattern=t))
    if (m := _SVD.fullmatch(t)) and 0 < int(m.group(1)) < 100:
        return Action(t, LowRankConfig(method=Method.SVD, ratio=int(m.group(1)) / 100, measure_speed=False))
    raise ConfigError(f"unknown action {text!r}; actions look like {', '.join(NAMES)}")


def parse_actions(text: str | list[str] | tuple[str, ...]) -> list[Action]:
    """Comma-separated names (or a list of them), each parsed once; duplicates are an error."""
    items = [s for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise ConfigError("no actions given; actions look like " + ", ".join(NAMES))
    actions = [parse_action(s) for s in items]
    names = [a.name for a in actions]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"action {dup!r} given twice")
    return actions
