"""A one-line warning when a stage makes quality collapse (pure: metrics in, text out).

A stage collapses quality when a lower-is-better metric (perplexity) rises more than
:data:`PERPLEXITY_FACTOR`-fold, or a higher-is-better one (accuracy) ends within
:data:`CHANCE_POINTS` points of chance having started above that band. The recipe runner calls
:func:`collapse_warning` with each stage's metrics before and after it.
"""
from __future__ import annotations

import math
from typing import Any

from torchslim.eval.fmt import fmt_metric

PERPLEXITY_FACTOR = 10.0   # lower-is-better metric: after / before above this is a collapse
CHANCE_POINTS = 2.0        # higher-is-better metric: within this many points of chance is a collapse
GENERIC_HINT = "a milder setting (a lower ratio, more bits, larger groups kept in float) or a recovery stage after it"


def _value(metrics: dict[str, Any], metric: str) -> float | None:
    v = metrics.get(metric) if isinstance(metrics, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _fmt(v: float) -> str:
    return fmt_metric(v) if math.isfinite(v) else str(v)


def collapse_warning(before: dict, after: dict, metric: str, higher_is_better: bool, stage: str,
                     chance: float | None = None, *, hint: str | None = None) -> str | None:
    """One line naming ``stage`` and a setting to try when ``metric`` collapsed from ``before`` to ``after``; else None.

    Lower is better (perplexity): ``after`` more than tenfold ``before`` (or not finite). Higher is better
    (accuracy): ``after`` within 2 points of ``chance`` (in the metric's units: 2 for a percentage, 0.02 when
    ``chance`` and ``before`` are fractions) while ``before`` was above that band; without ``chance`` a
    higher-is-better metric is not judged. ``hint`` is the setting to suggest (default: a generic one). A
    metric missing from either dict gives None.
    """
    b, a = _value(before, metric), _value(after, metric)
    if b is None or a is None or not math.isfinite(b):
        return None
    if not math.isfinite(a):
        why = f"{metric} {_fmt(b)} -> {_fmt(a)}"
    elif higher_is_better:
        if chance is None:
            return None
        band = CHANCE_POINTS / 100 if chance <= 1 and b <= 1 else CHANCE_POINTS
        if b <= chance + band or a > chance + band:
            return None
        why = f"{metric} {_fmt(b)} -> {_fmt(a)}, near chance ({_fmt(chance)})"
    else:
        if b <= 0 or a <= PERPLEXITY_FACTOR * b:
            return None
        why = f"{metric} {_fmt(b)} -> {_fmt(a)}, {a / b:.0f}x worse"
    return f"stage '{stage}' collapsed quality ({why}): try {hint or GENERIC_HINT}"
