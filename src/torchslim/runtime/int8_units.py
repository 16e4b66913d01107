"""Which int8 weight-only layers run on the int8 dot-product units, decided by measuring them here.

The split-activation kernel (:mod:`torchslim.quantization.split_int8`) multiplies int8 weights by activations
split into two int8 passes, on the VNNI/AMX units, to about 2e-4 relative error (the bf16 kernel it replaces:
about 2e-3). Whether it is faster depends on the CPU and the layer's shape: measured on SmolLM2's 49152 x 576
head it ran 1.7-3.3x faster than ``_weight_int8pack_mm`` on an AMX Xeon, while some small layers run slower.
So each layer shape is timed at one row (decode), both kernels interleaved, and a layer switches only where the
split kernel is faster by ``min_gain``. The packed copy it needs costs one byte per weight in memory (not on disk).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger("torchslim")


@dataclass
class SplitReport:
    switched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    speedups: dict[str, float] = field(default_factory=dict)    # "K->N" shape: bf16 kernel time / split time
    max_rows: int = 0                                            # rows up to which switched layers use it

    def summary(self) -> str:
        n = len(self.switched) + len(self.kept)
        if not n:
            return "no int8 weight-only layers"
        shapes = ", ".join(f"{s} {r:.2f}x" for s, r in self.speedups.items())
        rows = f" at <= {self.max_rows} rows" if self.switched else ""
        return (f"{len(self.switched)} of {n} int8 layers run on the int8 units{rows} (split activations; "
                f"measured at 1 row, bf16 kernel time / split: {shapes})")


def _speedup(layer: nn.Module, reps: int) -> float:
    """The bf16 kernel's median time over the split kernel's on this layer at one row (both interleaved)."""
    from torchslim.runtime.timing import measure_interleaved

    x = torch.randn(1, layer.in_features, dtype=torch.bfloat16)
    fns = {k: (lambda fn=fn: fn(x)) for k, fn in layer.split_int8_candidates().items()}
    with torch.inference_mode():
        stats = measure_interleaved(fns, warmup=2, iters=reps)
    return stats["bf16"].median_ms / max(stats["split"].median_ms, 1e-9)


def use_int8_units(model: nn.Module, min_gain: float = 1.1, reps: int = 9) -> SplitReport:
    """Switch every int8 weight-only layer of ``model`` whose shape measures ``min_gain`` times faster with the
    split-activation kernel at one row (one timing per distinct shape); the others keep the bf16 kernel.
    Layers are found by what they offer (``can_split_int8``), so the runtime needs no quantization import."""
    report = SplitReport()
    for name, m in model.named_modules():
        if not (callable(getattr(m, "can_split_int8", None)) and m.can_split_int8()):
            continue
        shape = f"{m.in_features}->{m.out_features}"
        m.use_split_int8(True)                 # the packed copy the timing uses, kept if the kernel wins
        if shape not in report.speedups:
            report.speedups[shape] = _speedup(m, reps)
        fast = report.speedups[shape] >= min_gain
        if fast:
            report.switched.append(name)
            report.max_rows = max(report.max_rows, m.split_rows)
        else:
            m.use_split_int8(False)
            report.kept.append(name)
    return report
