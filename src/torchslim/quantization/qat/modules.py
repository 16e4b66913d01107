"""Training-time modules of QAT: fake quantizers for weights and activations, and the linear and conv
layers that use them. A training tool only: :mod:`torchslim.quantization.qat.convert` turns every one of
them into the packed module post-training quantization produces, and an artifact refuses them.

* :class:`WeightFake`: a weight format (int 2-8 bits symmetric or with a float offset, ternary, binary)
  at a granularity (per tensor, channel or group), with learned step sizes (LSQ) and offsets (LSQ+).
* :class:`ActFake`: unsigned activations of ``bits`` bits as the static int8 kernels quantize them,
  with a learned step and zero point (``lsq``) or a learned clipping range (``pact``), or per-token
  dynamic ranges (``dynamic``, nothing learned).
* :class:`QATLinear` / :class:`QATConv2d`: ``nn.Linear`` / ``nn.Conv2d`` whose forward uses the fake
  weight (and fake input), optionally after a fixed per-input-channel ``input_scale`` (AWQ / SmoothQuant).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.formats import Binary, Format, Granularity, IntFormat, PerGroup, PerTensor, Ternary
from torchslim.quantization.kernels import act_qmax
from torchslim.quantization.primitives import QTensor, padded_cols, to_groups
from torchslim.quantization.qat import fake as FQ

_EPS = 1e-8


def check_trainable_format(fmt: Format) -> None:
    if not isinstance(fmt, (IntFormat, Ternary, Binary)):
        raise ConfigError(f"QAT trains integer, ternary and binary weights; {fmt.name} has no training form "
                          "(quantize it after training instead)")


class WeightFake(nn.Module):
    """Fake quantizer of a ``[rows, cols]`` weight (convs: flattened per output channel).

    Learned parameters are relative, so that one learning rate suits every layer and Adam's steps stay
    small against each scale: ``scale = scale0 * exp(scale_log)`` and ``offset = offset0 + offset_steps *
    scale``, both starting at 0 (the starting point is exactly the post-training scales and offsets)."""

    def __init__(self, fmt: Format, gran: Granularity, shape: tuple[int, int], scale: torch.Tensor,
                 offset: torch.Tensor | None, learn: bool = True) -> None:
        super().__init__()
        check_trainable_format(fmt)
        self.fmt, self.gran, self.shape = fmt, gran, tuple(shape)
        self.register_buffer("scale0", scale.detach().float().clone())
        self.scale_log = nn.Parameter(torch.zeros_like(self.scale0), requires_grad=learn)
        if offset is not None:
            self.register_buffer("offset0", offset.detach().float().clone())
            self.offset_steps = nn.Parameter(torch.zeros_like(self.offset0), requires_grad=learn)
        else:
            self.offset0 = self.offset_steps = None
        per_scale = shape[1] if not isinstance(gran, PerGroup) else gran.size
        if isinstance(gran, PerTensor):
            per_scale = shape[0] * shape[1]
        qmax = fmt.qmax if isinstance(fmt, IntFormat) else 1
        self.grad_factor = FQ.lsq_grad_factor(per_scale, qmax)

    @classmethod
    def from_qtensor(cls, qt: QTensor, gran: Granularity, learn: bool = True) -> WeightFake:
        rows = qt.shape[0]
        return cls(qt.fmt, gran, (rows, qt.shape.numel() // rows), qt.scale, qt.offset, learn)

    def _groups(self, w: torch.Tensor) -> torch.Tensor:
        return to_groups(w.reshape(self.shape), self.gran)

    def _params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(scale, offset)``, with LSQ's gradient scale on the learned parts."""
        s = torch.clamp(self.scale0 * torch.exp(FQ.grad_scale(self.scale_log, self.grad_factor)), min=_EPS)
        if self.offset0 is None:
            return s, None
        return s, self.offset0 + FQ.grad_scale(self.offset_steps, self.grad_factor) * s

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        g = self._groups(w)
        s, o = self._params()
        fmt = self.fmt
        if isinstance(fmt, IntFormat):
            y = FQ.fake_int(g, s, fmt.qmin if fmt.symmetric else 0, fmt.qmax, None if fmt.symmetric else o)
        elif isinstance(fmt, Ternary):
            y = FQ.fake_levels(g, FQ.ternary_codes(g, fmt.threshold), s)
        else:
            y = FQ.fake_levels(g, FQ.binary_codes(g), s)
        rows, cols = self.shape
        return y.reshape(rows, -1)[:, :cols].reshape(w.shape)

    @torch.no_grad()
    def to_qtensor(self, w: torch.Tensor) -> QTensor:
        """The packed form of ``w``: codes, scales and offsets that dequantize to exactly :meth:`forward`."""
        g = self._groups(w.detach().float())
        s, o = self._params()
        fmt, shape = self.fmt, torch.Size(self.shape)
        if isinstance(fmt, IntFormat):
            return QTensor(FQ.int_codes(g, s, fmt.qmin, fmt.qmax, o), s.clone(), None if o is None else o.clone(),
                           None, fmt, shape)
        if isinstance(fmt, Ternary):
            codes = (FQ.ternary_codes(g, fmt.threshold) + 1).to(torch.uint8)
            return QTensor(codes, s.clone(), None, torch.tensor([-1.0, 0.0, 1.0]), fmt, shape)
        return QTensor((g >= 0).to(torch.uint8), s.clone(), None, torch.tensor([-1.0, 1.0]), fmt, shape)

    def extra_repr(self) -> str:
        return f"{self.fmt.name} {type(self.gran).__name__}" + (f"({self.gran.size})" if isinstance(self.gran, PerGroup) else "")


class ActFake(nn.Module):
    """Fake quantizer of a layer's input. ``method``: ``lsq`` (learned step and zero point), ``pact``
    (learned clipping range) or ``dynamic`` (per-token range, nothing learned). Until :meth:`set_range`
    (or a calibration pass calling :meth:`observe`) it passes inputs through unchanged.

    Learned parameters are relative to the starting point ``(a0, b0)``: ``lsq``: step ``a0 * exp(a)``, zero
    point ``b0 + b`` (in steps); ``pact``: clipping range ``[a0 * exp(a), b0 * exp(b)]``."""

    def __init__(self, bits: int, method: str, features: int) -> None:
        super().__init__()
        if method not in ("lsq", "pact", "dynamic"):
            raise ConfigError(f"activation QAT method must be lsq, pact or dynamic, got {method!r}")
        self.bits, self.method = bits, method
        self.qmax = min(2**bits - 1, act_qmax())
        self.grad_factor = FQ.lsq_grad_factor(features, self.qmax)
        self.register_buffer("a0", torch.ones(()))     # lsq: step;        pact: lower clip
        self.register_buffer("b0", torch.zeros(()))    # lsq: zero point;  pact: upper clip
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.observing = False
        self._lo, self._hi = float("inf"), float("-inf")
        if method == "dynamic":
            self.a.requires_grad_(False)
            self.b.requires_grad_(False)

    @torch.no_grad()
    def _start(self, a0: float, b0: float) -> None:
        self.a0.fill_(a0)
        self.b0.fill_(b0)
        self.a.zero_()
        self.b.zero_()
        self.ready.fill_(True)

    def set_range(self, lo: float, hi: float) -> None:
        """Start from the range ``[lo, hi]`` (widened to contain 0)."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        self._start(*((lo, hi) if self.method == "pact" else FQ.pact_qparams(lo, hi, self.qmax)))

    def set_qparams(self, scale: float, zero: int) -> None:
        """Start from a static kernel's ``(scale, zero point)``."""
        if self.method == "pact":
            self._start(-zero * scale, (self.qmax - zero) * scale)
        else:
            self._start(scale, zero)

    def observe(self, x: torch.Tensor) -> None:
        self._lo, self._hi = min(self._lo, float(x.min())), max(self._hi, float(x.max()))

    def finish_observing(self) -> None:
        self.observing = False
        if self._hi >= self._lo:
            self.set_range(self._lo, self._hi)

    def _values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """lsq: ``(step, zero point)``; pact: ``(lo, hi)``."""
        if self.method == "pact":
            return self.a0 * torch.exp(self.a), self.b0 * torch.exp(self.b)
        step = self.a0 * torch.exp(FQ.grad_scale(self.a, self.grad_factor))
        return torch.clamp(step, min=_EPS), self.b0 + FQ.grad_scale(self.b, self.grad_factor)

    def qparams(self) -> tuple[float, int]:
        """``(scale, zero point)`` of the static kernel this quantizer becomes."""
        with torch.no_grad():
            u, v = (float(t) for t in self._values())
        if self.method == "pact":
            return FQ.pact_qparams(u, v, self.qmax)
        return u, int(min(self.qmax, max(0, round(v))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x.detach())
            return x
        if self.method == "dynamic":
            return _fake_per_token(x, self.qmax)
        if not bool(self.ready):
            return x
        u, v = self._values()
        if self.method == "pact":
            return FQ.pact_act(x, u, v, self.qmax)
        return FQ.fake_act(x, u, v, self.qmax)

    def extra_repr(self) -> str:
        return f"{self.bits}-bit {self.method}"


def _fake_per_token(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-token (row) asymmetric quantization over each row's own range, straight through."""
    rows = x.reshape(-1, x.shape[-1])
    lo = torch.clamp(rows.detach().amin(-1, keepdim=True), max=0.0)
    hi = torch.clamp(rows.detach().amax(-1, keepdim=True), min=0.0)
    scale = torch.clamp(hi - lo, min=_EPS) / qmax
    return FQ.fake_act(rows, scale, torch.round(-lo / scale), qmax).reshape(x.shape)


class _QATMixin:
    """What QAT layers share: the fake quantizers, a fixed input scale, and the packed kind to become."""

    torchslim_training_only = True
    wq: WeightFake
    aq: ActFake | None
    input_scale: torch.Tensor | None

    def _setup(self, wq: WeightFake, aq: ActFake | None, input_scale: torch.Tensor | None, target: str,
               meta: dict[str, Any] | None) -> None:
        self.wq, self.aq, self.target, self.meta = wq, aq, target, dict(meta or {})
        if input_scale is not None:
            self.register_buffer("input_scale", input_scale.detach().float().clone())
        else:
            self.input_scale = None

    def _input(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.input_scale is not None:
            shape = [1] * x.dim()
            shape[channel_dim] = -1
            x = x * self.input_scale.reshape(shape).to(x.dtype)
        return self.aq(x) if self.aq is not None else x

    def fake_weight(self) -> torch.Tensor:
        return self.wq(self.weight)


class QATLinear(_QATMixin, nn.Linear):
    """A linear layer trained through fake quantization; ``target``: ``weight_only`` (becomes a
    ``QuantLinear``), ``static`` (``Int8StaticLinear``) or ``dynamic`` (``Int8DynamicLinear``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, wq: WeightFake, aq: ActFake | None = None,
                 input_scale: torch.Tensor | None = None, target: str = "weight_only",
                 meta: dict[str, Any] | None = None) -> None:
        out_f, in_f = weight.shape
        nn.Linear.__init__(self, in_f, out_f, bias is not None, device=weight.device)
        with torch.no_grad():
            self.weight.copy_(weight.float())
            if bias is not None:
                self.bias.copy_(bias.float())
        self._setup(wq, aq, input_scale, target, meta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input(x, -1), self.fake_weight().to(x.dtype),
                        self.bias.to(x.dtype) if self.bias is not None else None)


class QATConv2d(_QATMixin, nn.Conv2d):
    """A Conv2d trained through fake quantization; ``target``: ``weight_only`` (``QuantConv2d``) or
    ``static`` (``Int8StaticConv2d``). ``meta["fused_relu"]``: a ReLU the packed conv applied (kept)."""

    def __init__(self, geometry: Any, weight: torch.Tensor, bias: torch.Tensor | None, wq: WeightFake,
                 aq: ActFake | None = None, target: str = "weight_only", meta: dict[str, Any] | None = None) -> None:
        g = geometry
        nn.Conv2d.__init__(self, g.in_channels, g.out_channels, g.kernel_size, g.stride, g.padding, g.dilation,
                           g.groups, bias is not None, device=weight.device)
        self.geometry = geometry
        with torch.no_grad():
            self.weight.copy_(weight.float())
            if bias is not None:
                self.bias.copy_(bias.float())
        self._setup(wq, aq, None, target, meta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(self._input(x, 1), self.fake_weight().to(x.dtype),
                               self.bias.to(x.dtype) if self.bias is not None else None)
        return torch.relu(y) if self.meta.get("fused_relu") else y


def is_qat(module: nn.Module) -> bool:
    return isinstance(module, _QATMixin)


def groups_shape(rows: int, cols: int, gran: Granularity) -> tuple[int, int]:
    """``(rows, n_groups)`` of the scales of a ``[rows, cols]`` weight at ``gran``."""
    if isinstance(gran, PerTensor):
        return 1, 1
    return rows, (padded_cols(cols, gran) // gran.size if isinstance(gran, PerGroup) else 1)
