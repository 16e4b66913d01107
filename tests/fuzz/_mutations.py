"""Seeded mutations of JSON-like documents: the values a hostile but fair user (or a damaged file) brings."""
from __future__ import annotations

import copy
import random
from typing import Any

BAD_VALUES: list[Any] = [None, True, False, -1, 0, 1, 2**70, -(2**63), 10**12, 1e308, -0.5, 3.5, "", "x", "../../etc",
                         "/etc/passwd", "x" * 20000, [], [1, "a"], {}, {"_type": "Nope"}, {"_type": 5},
                         {"kind": "Linear", "in_features": 10**7, "out_features": 10**7, "bias": True}]


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``doc`` (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


def _parent(doc: Any, path: tuple) -> tuple[Any, Any]:
    for key in path[:-1]:
        doc = doc[key]
    return doc, path[-1]


def mutate(doc: Any, rng: random.Random, skip: tuple[str, ...] = ()) -> tuple[Any, tuple, str]:
    """A copy of ``doc`` with one random change; returns ``(doc, path, what)``."""
    doc = copy.deepcopy(doc)
    choices = [p for p in paths(doc) if not any(str(k) in skip for k in p)]
    path = rng.choice(choices)
    parent, key = _parent(doc, path)
    op = rng.random()
    if op < 0.7:
        parent[key] = copy.deepcopy(rng.choice(BAD_VALUES))
        what = "value"
    elif op < 0.85 and isinstance(parent, dict):
        del parent[key]
        what = "delete"
    elif isinstance(parent, dict):
        parent[f"{key}_extra" if isinstance(key, str) else "extra"] = 1
        what = "add"
    else:
        parent[key] = [parent[key]]
        what = "wrap"
    return doc, path, what
