"""The per-layer table that ``info``, ``eval``, ``quantize`` and ``prune`` print.

Layer names share long prefixes (``model.layers.12.self_attn.``) and differ in their tails, so a name too long
for its column loses its start, never its end: ``…layers.12.self_attn.q_proj`` stays distinguishable where
rich's default right-hand ellipsis printed ``model.layers.1…`` for every layer. The other columns wrap at
spaces and keep their longest word whole. Layers that differ only in their block number and are stored and run
alike share one row (``model.layers.{0..29}.mlp.up_proj``): SmolLM2's 211 layers made a 430-line table.
"""
from __future__ import annotations

import re

from rich.markup import escape

_MIN_NAME = 20
_BLOCK_NUMBER = re.compile(r"(?<=\.)\d+(?=\.|$)")      # a dotted name's numeric part: layers.12.mlp
_BORDERS = 16          # five columns: six rules and a space either side of each cell


def elide_left(name: str, width: int) -> str:
    """``name`` if it fits in ``width`` characters, else ``…`` and its last ``width - 1`` characters."""
    if width < 2:
        raise ValueError(f"width must be at least 2, got {width}")
    return name if len(name) <= width else "…" + name[len(name) - width + 1:]


def _longest_word(cells: list[str], header: str) -> int:
    return max([len(header)] + [len(w) for c in cells for w in c.split()])


def _recorded_speed(info: dict) -> str | None:
    """``0.63x@1 1.20x@256 (at conversion)``: the speed against dense a layer measured when it was made (low-rank
    pairs record it), or None."""
    rows = (info.get("speed") or {}).get("rows") if isinstance(info.get("speed"), dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    try:
        return " ".join(f"{float(r['speedup']):.2f}x@{int(r['rows'])}" for r in rows) + " (at conversion)"
    except (KeyError, TypeError, ValueError):
        return None


def _row(info: dict) -> list[str]:
    from torchslim.quantization import kernel_table

    storage = str(info.get("storage", info.get("format", "")))
    if isinstance(info.get("sparsity"), (int, float)):
        storage += f", {info['sparsity']:.0%} sparse"
    key = kernel_table.key_for_layer(info)       # measured on this machine now, not where it was saved
    speed = kernel_table.short(key) if key else (_recorded_speed(info) or (
        "slower than fp32" if info.get("slower_than_fp32") else "not measured"))
    return [str(info.get("name", "")), str(info.get("technique", "")), storage, str(info.get("kernel", "")), speed]


def _spans(indices: list[int]) -> str:
    """``0..5,7,9..29``: sorted block numbers with consecutive runs written as ranges."""
    out, start = [], None
    xs = sorted(set(indices))
    for i, x in enumerate(xs):
        start = x if start is None else start
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(str(x) if x == start else f"{start}..{x}")
            start = None
    return ",".join(out)


def group_rows(rows: list[list[str]]) -> list[list[str]]:
    """Rows whose names differ in one number only (``layers.3`` / ``layers.4``) and whose other cells are equal,
    merged into one row named ``layers.{3..4}``, in the order of their first layer; other rows as they are."""
    groups: dict[tuple, list[tuple[int | None, list[str]]]] = {}
    for row in rows:
        numbers = _BLOCK_NUMBER.findall(row[0])
        one = len(numbers) == 1
        key = (_BLOCK_NUMBER.sub("#", row[0]) if one else row[0], *row[1:])
        groups.setdefault(key, []).append((int(numbers[0]) if one else None, row))
    out = []
    for (pattern, *rest), members in groups.items():
        if len(members) == 1:
            out.append(members[0][1])
        else:
            out.append([pattern.replace("#", "{" + _spans([i for i, _ in members]) + "}"), *rest])
    return out


def _fit(widths: list[int], room: int) -> list[int]:
    """Narrow the widest columns (their longest word then folds) until they fit in ``room``, 4 wide at least."""
    widths = list(widths)
    while sum(widths) > room and max(widths) > 4:
        widths[widths.index(max(widths))] -= 1
    return widths


def layers_table(layers: list[dict], console_width: int, group: bool = True):
    """A rich table of compressed layers: name, technique, storage, kernel and measured speed against fp32
    (``group``: layers alike in every block share a row, see :func:`group_rows`)."""
    from rich.table import Table

    rows = [_row(info) for info in layers]
    rows = group_rows(rows) if group else rows
    headers = ("layer", "technique", "storage", "kernel", "speed")
    full = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    tight = sum(full) + _BORDERS > console_width
    # on a narrow line the other columns wrap at spaces to their longest word and the name takes what is left
    words = [_longest_word([r[i] for r in rows], h) for i, h in enumerate(headers)] if tight else full
    # a shared row keeps its block numbers in sight (from its ``{`` on) where the other columns still keep
    # their longest word whole
    room = console_width - _BORDERS - sum(words[1:])
    tails = [len(r[0]) - r[0].index("{") + 1 for r in rows if "{" in r[0]]
    least = max([_MIN_NAME] + [t for t in tails if t <= room])
    name_width = max(min(full[0], room), min(full[0], least))
    if tight:
        words[1:] = _fit(words[1:], console_width - _BORDERS - name_width)
    table = Table(title="compressed layers (speed: measured against fp32 on this machine at 1 row / the most rows, and the slowest row count between where slower than fp32)")
    table.add_column(headers[0], no_wrap=True, width=name_width)
    for header, word in zip(headers[1:], words[1:]):
        table.add_column(header, width=word if tight else None, overflow="fold")
    for name, *rest in rows:
        table.add_row(*(escape(c) for c in [elide_left(name, name_width), *rest]))
    return table
