"""Number formatting shared by the report tables (:mod:`torchslim.eval.render`) and ``str(report)``."""
from __future__ import annotations


def shape_key(batch: int, seq_len: int | None) -> str:
    """``"8x128"`` for batch 8 of 128 tokens, ``"8"`` for non-sequence inputs."""
    return f"{batch}" if seq_len is None else f"{batch}x{seq_len}"


def fmt_num(v: float) -> str:
    """3 significant digits without exponent for ordinary magnitudes."""
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:#.3g}"


def fmt_metric(v: float) -> str:
    """Quality metrics: 4 significant digits, large counts in full."""
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{fmt_num(n / scale)} {unit}"
    return f"{int(n)} B"


def fmt_count(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{fmt_num(n / scale)} {suffix}{unit}".rstrip()
    return f"{fmt_num(n)} {unit}".rstrip()
