"""Typed evaluation results and their JSON form.

Every section is a plain dataclass; :meth:`Report.to_dict` / :meth:`Report.from_dict` round-trip
through JSON exactly (no tuples, no NaN: a missing figure is ``None``). Units are in the field names
(``_ms``, ``_bytes``, ``_j``, ``_per_s``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.core.codec import jsonable  # noqa: F401 - re-exported (eval.harness)
from torchslim.core.errors import TorchSlimError
from torchslim.core.io import atomic_file
from torchslim.eval.fmt import fmt_bytes, fmt_count, fmt_metric, fmt_num, shape_key
from torchslim.runtime.timing import LatencyStats

SCHEMA_VERSION = 1


@dataclass
class QualityResult:
    """The task's metrics on its evaluation split."""

    metrics: dict[str, float]
    primary: str                       # key of the primary metric in ``metrics``
    higher_is_better: bool


@dataclass
class SizeResult:
    """Storage and parameter figures (see :mod:`torchslim.eval.size` for definitions)."""

    artifact_bytes: int | None         # bytes on disk of the saved artifact folder
    artifact_note: str                 # how artifact_bytes was obtained, or why it is missing
    parameters: int                    # logical parameter count (packed weights counted unpacked)
    nonzero_parameters: int
    weight_elements: int               # logical elements of the weight tensors (matrices, kernels, tables)
    weight_bytes: int                  # real storage of those tensors (packed data + scales + zero points)
    bits_per_weight: float | None      # 8 * weight_bytes / weight_elements
    memory_bytes: int                  # in-memory bytes of all parameters and buffers


@dataclass
class ShapeSpeed:
    """Latency and throughput of one forward at one input shape."""

    batch: int
    seq_len: int | None
    latency: LatencyStats
    samples_per_s: float               # batch / median latency
    tokens_per_s: float | None         # batch * seq_len / median latency (sequence inputs only)


@dataclass
class DecodeResult:
    """Autoregressive generation speed, from ``task.decode``."""

    prompt_tokens: int
    new_tokens: int
    prefill_ms: float                  # prompt processing + first token
    decode_tokens_per_s: float         # steady-state tokens/s after the first token


@dataclass
class SpeedResult:
    shapes: list[ShapeSpeed]
    decode: DecodeResult | None = None
    decode_note: str = ""


@dataclass
class ComputeResult:
    """FLOPs of one forward at one shape, counted by ``torch.utils.flop_counter``."""

    batch: int
    seq_len: int | None
    flops: int | None
    macs: int | None                   # flops / 2 (every counted op is a multiply-accumulate)
    by_module: dict[str, int] = field(default_factory=dict)
    note: str = ""


@dataclass
class MemoryResult:
    """Process memory while the timed forwards ran."""

    rss_before_bytes: int
    peak_rss_bytes: int
    peak_rss_delta_bytes: int          # peak - before
    samples: int
    interval_ms: float
    cuda_max_allocated_bytes: int | None = None


@dataclass
class ShapeEnergy:
    batch: int
    seq_len: int | None
    forwards: int
    seconds: float
    joules: float
    joules_per_forward: float
    average_watts: float


@dataclass
class EnergyResult:
    """Energy read from a hardware counter, or why none could be read."""

    available: bool
    source: str | None = None          # "intel-rapl" | "nvml"
    domains: list[str] = field(default_factory=list)
    shapes: list[ShapeEnergy] = field(default_factory=list)
    reason: str | None = None          # set when not available
    note: str = ""


@dataclass
class Report:
    """Everything :func:`torchslim.eval.evaluate` measured about one model on one task."""

    model: str
    task: str
    device: str
    device_name: str
    threads: int
    torch_version: str
    torchslim_version: str
    timestamp: str
    settings: dict[str, Any] = field(default_factory=dict)
    quality: QualityResult | None = None
    size: SizeResult | None = None
    speed: SpeedResult | None = None
    compute: ComputeResult | None = None
    memory: MemoryResult | None = None
    energy: EnergyResult | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> list[tuple[str, str]]:
        """``(label, value)`` rows of the headline figures: what ``str(report)`` prints."""
        runtime = self.settings.get("runtime", "torch")
        rows = [("model", self.model), ("task", f"{self.task} on {self.device_name or self.device}, "
                                                f"{self.threads} threads"
                                                + ("" if runtime == "torch" else f", runtime {runtime}"))]
        q = self.quality
        if q is not None and q.primary in q.metrics:
            better = "higher" if q.higher_is_better else "lower"
            rows.append((f"{q.primary} ({better} is better)", fmt_metric(q.metrics[q.primary])))
        if self.size is not None:
            if self.size.artifact_bytes is not None:
                rows.append(("size on disk", fmt_bytes(self.size.artifact_bytes)))
            rows.append(("parameters", fmt_count(self.size.parameters)))
        for s in (self.speed.shapes if self.speed is not None else []):
            rows.append((f"latency median @ {shape_key(s.batch, s.seq_len)}", f"{fmt_num(s.latency.median_ms)} ms"))
        if self.speed is not None and self.speed.decode is not None:
            rows.append(("decode", f"{fmt_num(self.speed.decode.decode_tokens_per_s)} tokens/s"))
        return rows

    def __str__(self) -> str:
        rows = self.summary()
        width = max(len(label) for label, _ in rows)
        lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
        missing = [name for name, section in (("quality", "quality"), ("size", "size"), ("speed", "speed"),
                                              ("flops", "compute"), ("memory", "memory"), ("energy", "energy"))
                   if getattr(self, section) is None]
        if missing:
            lines.append(f"not measured: {', '.join(missing)} (torchslim.evaluate(..., what='all') measures all)")
        lines.append("every figure: report.to_json()")
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = [f"model={self.model!r}", f"task={self.task!r}"]
        q = self.quality
        if q is not None and q.primary in q.metrics:
            parts.append(f"{q.primary}={float(fmt_metric(q.metrics[q.primary]).replace(',', ''))!r}")
        if self.size is not None and self.size.artifact_bytes is not None:
            parts.append(f"size={fmt_bytes(self.size.artifact_bytes)!r}")
        if self.speed is not None and self.speed.shapes:
            latency = {shape_key(s.batch, s.seq_len): float(fmt_num(s.latency.median_ms).replace(",", ""))
                       for s in self.speed.shapes}
            parts.append(f"latency_ms={latency!r}")
        return f"Report({', '.join(parts)})"

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        if not isinstance(data, dict):
            raise TorchSlimError(f"an evaluation report must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema", SCHEMA_VERSION)
        if not isinstance(schema, int):
            raise TorchSlimError(f"report field 'schema' must be an integer, got {schema!r}")
        if schema > SCHEMA_VERSION:
            raise TorchSlimError(f"report schema {schema} is newer than this torchslim reads ({SCHEMA_VERSION})")
        return _build(cls, data, "report")

    @classmethod
    def from_json(cls, text: str) -> Report:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TorchSlimError(f"not a JSON evaluation report: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (atomically)."""
        path = Path(path)
        with atomic_file(path) as f:
            f.write(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise TorchSlimError(f"cannot read report {path}: {e.strerror}") from None
        return cls.from_json(text)


def _build(cls: type, data: Any, where: str) -> Any:
    """A report dataclass from JSON; unknown keys (written by newer minor versions) are ignored."""
    from torchslim.core.codec import decode_dataclass
    from torchslim.core.errors import ConfigError

    try:
        return decode_dataclass(cls, data, where, lenient=True)
    except ConfigError as e:
        raise TorchSlimError(f"report field {e}") from None

