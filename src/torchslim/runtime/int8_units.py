"""Which packed layers run on the integer dot-product units at decode, decided by measuring them here.

Two kernels multiply packed weights on the integer units (VNNI/AMX/AVX2) instead of converting them to bf16:

* int8 weight-only layers: the split-activation kernel (:mod:`torchslim.quantization.split_int8`), activations
  split into two int8 passes, to about 2e-4 relative error (the bf16 kernel it replaces: about 2e-3). Measured on
  SmolLM2's 49152 x 576 head it ran 1.7-3.3x faster than ``_weight_int8pack_mm`` on an AMX Xeon.
* int4 layers: the fused int4 x int8 kernel (:mod:`torchslim.quantization.fused_int4`), activations quantized per
  block of 32 in two int8 parts (about 15 bits; measured 1.0-1.3x ``_weight_int4pack_mm`` at one row on an AMX
  Xeon, and 18x the dequantized path of symmetric int4, which torch has no kernel for).

Whether a kernel is faster depends on the CPU and the layer's shape, so each layer shape is timed at one row
(decode), both kernels interleaved, and a layer switches only where the new kernel is faster by ``min_gain``.
Layers are found by what they offer (duck typing), so the runtime imports no quantization code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

log = logging.getLogger("torchslim")


@dataclass(frozen=True)
class Units:
    """How a layer offers one integer kernel: its method names, and the words a report uses."""

    can: str
    use: str
    candidates: str
    name: str              # the new kernel's key among the candidates (the old one is "bf16")
    rows: str              # the layer attribute bounding the rows it is used at
    kind: str              # "int8", "int4"
    words: str             # "int8 layers run on the int8 units (split activations)"


INT8 = Units("can_split_int8", "use_split_int8", "split_int8_candidates", "split", "split_rows", "int8",
             "int8 layers run on the int8 units (split activations)")
INT4 = Units("can_fuse_int4", "use_fused_int4", "fused_int4_candidates", "fused", "fused_rows", "int4",
             "int4 layers run on the integer units (activations in two int8 parts per block of 32)")


@dataclass
class SplitReport:
    switched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    speedups: dict[str, float] = field(default_factory=dict)    # "K->N" shape: bf16 kernel time / new kernel's
    max_rows: int = 0                                            # rows up to which switched layers use it
    words: str = INT8.words
    kind: str = "int8"

    def summary(self) -> str:
        n = len(self.switched) + len(self.kept)
        if not n:
            return f"no {self.kind} layers the integer kernel can run"
        shapes = ", ".join(f"{s} {r:.2f}x" for s, r in self.speedups.items())
        rows = f" at <= {self.max_rows} rows" if self.switched else ""
        return (f"{len(self.switched)} of {n} {self.words}{rows} (measured at 1 row, bf16 kernel time / "
                f"integer kernel's: {shapes})")


def _speedup(layer: nn.Module, candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]], new: str,
             reps: int) -> float:
    """The bf16 kernel's median time over the ``new`` kernel's on this layer at one row (both interleaved)."""
    from torchslim.runtime.timing import measure_interleaved

    x = torch.randn(1, layer.in_features, dtype=torch.bfloat16)
    fns = {k: (lambda fn=fn: fn(x)) for k, fn in candidates.items()}
    with torch.inference_mode():
        stats = measure_interleaved(fns, warmup=2, iters=reps)
    return stats["bf16"].median_ms / max(stats[new].median_ms, 1e-9)


def switch_measured(model: nn.Module, report: SplitReport, can: Callable[[nn.Module], bool],
                    use: Callable[[nn.Module, bool], None],
                    candidates: Callable[[nn.Module], dict[str, Callable[[torch.Tensor], torch.Tensor]]],
                    new: str, rows: Callable[[nn.Module], int], min_gain: float, reps: int) -> SplitReport:
    """Switch every layer ``can`` accepts whose shape measures ``min_gain`` times faster with the ``new`` kernel
    at one row (one timing per distinct shape, ``candidates(layer)`` giving ``"bf16"`` and ``new``); the others are
    switched back and keep their kernel. ``use(layer, on)`` switches; ``rows(layer)`` bounds the rows it serves."""
    for name, m in model.named_modules():
        if not can(m):
            continue
        shape = f"{m.in_features}->{m.out_features}"
        use(m, True)                            # e.g. the packed copy the timing uses, kept if the kernel wins
        if shape not in report.speedups:
            report.speedups[shape] = _speedup(m, candidates(m), new, reps)
        if report.speedups[shape] >= min_gain:
            report.switched.append(name)
            report.max_rows = max(report.max_rows, rows(m))
        else:
            use(m, False)
            report.kept.append(name)
    return report


def use_units(model: nn.Module, units: Units, min_gain: float = 1.1, reps: int = 9) -> SplitReport:
    """Switch every layer of ``model`` that offers ``units`` and whose shape measures ``min_gain`` times faster
    with it at one row (one timing per distinct shape); the others keep their kernel."""
    def can(m: nn.Module) -> bool:
        offered = getattr(m, units.can, None)
        return callable(offered) and offered()

    return switch_measured(model, SplitReport(words=units.words, kind=units.kind), can,
                           lambda m, on: getattr(m, units.use)(on), lambda m: getattr(m, units.candidates)(),
                           units.name, lambda m: getattr(m, units.rows), min_gain, reps)


def use_int8_units(model: nn.Module, min_gain: float = 1.1, reps: int = 9) -> SplitReport:
    """Int8 weight-only layers on the split-activation kernel where it measures ``min_gain`` times faster."""
    return use_units(model, INT8, min_gain, reps)


def use_int4_units(model: nn.Module, min_gain: float = 1.1, reps: int = 9) -> SplitReport:
    """Int4 layers on the fused int4 x int8 kernel where it measures ``min_gain`` times faster."""
    return use_units(model, INT4, min_gain, reps)
