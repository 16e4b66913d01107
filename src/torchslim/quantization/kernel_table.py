"""Which kernel is fastest for a packed weight-only layer at a given number of rows, measured on this machine.

A packed kernel (``int4pack_mm``, ``int8pack_mm``) reads a quarter or half of the fp32 weight bytes and wins
at few rows (decode); at many rows (prefill, batches) the matmul is compute-bound and a dense bf16 matmul on
the dequantized weight can win. Where the crossover lies depends on the CPU (AVX2, AVX512-VNNI, AMX) and the
thread count, so it is measured once per machine and cached in ``$TORCHSLIM_CACHE/kernels-<key>.json``:
for each format, each candidate's median time at row counts 1..4096 on a representative layer, beside the
fp32 matmul of the same layer, so that reports can say "measured 3.1x fp32 at 1 row" rather than assume it.

Until a table exists for this machine (``torchslim kernels --measure``, the benchmarks and ``make demo``
measure it), layers use the documented default crossover (``LARGE_M``) and are reported "not measured".
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from torchslim.quantization import kernels as K
from torchslim.quantization.packing import from_unsigned, pack_bits, to_unsigned, unpack_bits
from torchslim.quantization.primitives import dequantize_groups

ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TABLE_VERSION = 2     # 2: the dense candidate unpacks and dequantizes as layers do (1 timed a lighter path)
PACKED = "packed"       # the format's packed kernel
DENSE_BF16 = "dequant_bf16"   # dequantize the weight, bf16 matmul


def format_key(bits: int, group: int | None) -> str:
    """``int4-g128`` / ``int8-channel``: the formats that have a packed kernel."""
    return f"int4-g{group}" if bits == 4 else "int8-channel"


FORMATS = ("int4-g32", "int4-g64", "int4-g128", "int4-g256", "int8-channel")


def machine_key() -> str:
    from torchslim.runtime.machine import machine_info

    info = machine_info()
    raw = json.dumps([info["cpu"], info["isa"], info["threads"], info["torch"], TABLE_VERSION])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def table_path() -> Path:
    """``$TORCHSLIM_KERNEL_TABLE`` if set, else ``$TORCHSLIM_CACHE/kernels-<machine key>.json``."""
    if os.environ.get("TORCHSLIM_KERNEL_TABLE"):
        return Path(os.environ["TORCHSLIM_KERNEL_TABLE"])
    root = Path(os.environ.get("TORCHSLIM_CACHE") or Path.home() / ".cache" / "torchslim")
    return root / f"kernels-{machine_key()}.json"


NOISY_SPREAD = 0.25     # (p90 - median) / median of a timing above which its row is flagged as too noisy to trust


def _interleaved(fns: dict[str, Any], reps: int) -> tuple[dict[str, float], float]:
    """Median seconds of each function, called round-robin after one warm-up (a busy machine slows all alike),
    and the largest spread, (p90 - median) / median, among them."""
    from torchslim.runtime.timing import measure_interleaved

    stats = measure_interleaved(fns, warmup=1, iters=reps)
    spread = max((st.p90_ms - st.median_ms) / max(st.median_ms, 1e-9) for st in stats.values())
    return {k: st.median_ms / 1e3 for k, st in stats.items()}, spread


def _candidates(fmt: str, n: int, k: int) -> dict[str, Any]:
    """Callables ``x -> y`` for the packed kernel and the dequantized bf16 matmul of one random layer, each doing
    what a packed layer does on every call (the dense one unpacks the stored codes and dequantizes them)."""
    g = torch.Generator().manual_seed(0)
    if fmt.startswith("int4"):
        group = int(fmt.split("-g")[1])
        codes = torch.randint(0, 16, (n, k), generator=g)
        scale, offset = torch.rand(n, k // group, generator=g) / 8, -torch.rand(n, k // group, generator=g)
        packed, sz = K.int4pack_prepare(codes, scale, offset)
        stored = pack_bits(codes, 4)

        def dense(x):
            vals = unpack_bits(stored, 4, n * k).float().reshape(n, k // group, group)
            return F.linear(x.to(torch.bfloat16), dequantize_groups(vals, scale, offset).reshape(n, k).to(torch.bfloat16))

        return {PACKED: lambda x: K.int4pack_mm(x, packed, group, sz), DENSE_BF16: dense}
    w8 = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    s = torch.rand(n, 1, generator=g) / 64
    s16 = s.reshape(-1).to(torch.bfloat16)
    stored = pack_bits(to_unsigned(w8, 8, True), 8)

    def dense8(x):
        vals = from_unsigned(unpack_bits(stored, 8, n * k), 8, True).float().reshape(n, 1, k)
        return F.linear(x.to(torch.bfloat16), dequantize_groups(vals, s, None).reshape(n, k).to(torch.bfloat16))

    return {PACKED: lambda x: K.int8pack_mm(x, w8, s16), DENSE_BF16: dense8}


def measure(rows: tuple[int, ...] = ROWS, n: int = 1536, k: int = 1024, reps: int = 7,
            formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """Median seconds of each candidate and of the fp32 matmul at every row count (an ``n x k`` layer), and each
    row count's largest timing spread (``spread``: see ``noisy_rows``). Progress lines on stderr per row count
    where progress shows as lines (never a bar: its refresh thread would compete with the timed calls)."""
    from torchslim.core.progress import Progress, mode
    from torchslim.runtime.machine import machine_info

    w32 = torch.randn(n, k)
    out: dict[str, Any] = {"version": TABLE_VERSION, "machine": machine_info(), "layer": [n, k], "rows": list(rows),
                           "fp32_s": {}, "spread": {}, "formats": {f: {PACKED: {}, DENSE_BF16: {}} for f in formats}}
    cands = {f: _candidates(f, n, k) for f in formats}
    with torch.inference_mode(), Progress("timing packed kernels", len(rows), unit="row counts",
                                          show=mode() == "lines") as progress:
        for m in rows:
            x = torch.randn(m, k)
            fns: dict[str, Any] = {"fp32": lambda: F.linear(x, w32)}
            fns.update({f"{f}|{c}": (lambda fn=fn: fn(x)) for f in formats for c, fn in cands[f].items()})
            got, out["spread"][str(m)] = _interleaved(fns, reps if m <= 256 else max(3, reps // 2))
            out["fp32_s"][str(m)] = got.pop("fp32")
            for key, sec in got.items():
                f, c = key.split("|")
                out["formats"][f][c][str(m)] = sec
            progress.update(1, note=f"({m} rows)")
    return out


def noisy_rows(table: dict[str, Any], limit: float = NOISY_SPREAD) -> list[int]:
    """Row counts whose timings spread too far to trust (another process was competing for the cores)."""
    return [int(r) for r, spread in (table.get("spread") or {}).items() if spread > limit]


def noisier(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether a fresh measurement is less trustworthy than the saved table ``old`` (more of its row counts too
    noisy): then the saved table is kept, so packed layers do not pick kernels from timings taken under load."""
    return bool(noisy_rows(new)) and old is not None and len(noisy_rows(old)) < len(noisy_rows(new))


def save(table: dict[str, Any], path: Path | None = None) -> Path:
    from torchslim.core.io import atomic_file

    path = path or table_path()
    with atomic_file(path) as f:
        json.dump(table, f, indent=1)
    load.cache_clear()
    return path


@lru_cache(maxsize=4)
def load(path: Path | None = None) -> dict[str, Any] | None:
    """This machine's table, or None (not measured, or unreadable: then defaults apply)."""
    path = path or table_path()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) and table.get("version") == TABLE_VERSION else None


def may_measure() -> bool:
    """Whether commands may measure the table on their own (``TORCHSLIM_MEASURE_KERNELS=0`` forbids it)."""
    return os.environ.get("TORCHSLIM_MEASURE_KERNELS", "1") != "0"


def ensure(**kwargs: Any) -> dict[str, Any]:
    """This machine's table, measured now (a few seconds) if there is none yet."""
    table = load()
    if table is None:
        table = measure(**kwargs)
        save(table)
    return table


def crossover(fmt: str, table: dict[str, Any] | None = None) -> int:
    """Rows above which layers switch from the packed kernel to the dequantized bf16 matmul (``LARGE_M`` if not
    measured): the cut that loses least, summed over the measured row counts, against the faster of the two."""
    table = table if table is not None else load()
    per = (table or {}).get("formats", {}).get(fmt)
    if not per:
        return K.LARGE_M
    rows = [int(r) for r in table["rows"]]
    best = {m: min(per[PACKED][str(m)], per[DENSE_BF16][str(m)]) for m in rows}

    def cost(cut: int) -> float:   # summed slowdown against the best kernel at each row count
        return sum(per[PACKED if m <= cut else DENSE_BF16][str(m)] / best[m] for m in rows)

    return min([0, *rows], key=lambda cut: (cost(cut), -cut))


def speed_vs_fp32(fmt: str, table: dict[str, Any] | None = None) -> dict[int, tuple[str, float]] | None:
    """At each measured row count: the kernel the layer runs and its measured speed-up over fp32 (None if this
    machine has no table)."""
    table = table if table is not None else load()
    per = (table or {}).get("formats", {}).get(fmt)
    if not per:
        return None
    cut = crossover(fmt, table)
    out = {}
    for r in table["rows"]:
        kernel = PACKED if int(r) <= cut else DENSE_BF16
        out[int(r)] = (kernel, table["fp32_s"][str(r)] / per[kernel][str(r)])
    return out


def describe(fmt: str, table: dict[str, Any] | None = None) -> str:
    """One line for reports: measured speed against fp32 at 1 row and at many, or 'not measured'."""
    speeds = speed_vs_fp32(fmt, table)
    if speeds is None:
        return "speed not measured on this machine (run `torchslim kernels --measure`)"
    rows = sorted(speeds)
    many = rows[-1]
    k1, s1 = speeds[1] if 1 in speeds else speeds[rows[0]]
    kn, sn = speeds[many]
    verdict = lambda s: "faster" if s > 1.05 else ("slower" if s < 0.95 else "as fast")  # noqa: E731
    return (f"measured here: {s1:.2f}x fp32 at 1 row ({verdict(s1)}, {k1}); {sn:.2f}x at {many} rows "
            f"({verdict(sn)}, {kn}); packed kernel up to {crossover(fmt, table)} rows")


def short(fmt: str, table: dict[str, Any] | None = None) -> str:
    """``3.1x@1 2.0x@4096`` (measured speed against fp32 at 1 row and the most rows) or ``not measured``; a row
    count between them where the layer is slower than fp32 shows too (``3.4x@1 0.57x@128 5.3x@4096``): the ends
    alone hid that a 1x128 prefill ran slower than fp32."""
    speeds = speed_vs_fp32(fmt, table)
    if speeds is None:
        return "not measured"
    rows = sorted(speeds)
    parts = [rows[0]]
    slowest = min(rows[1:-1], key=lambda r: speeds[r][1], default=None)
    if slowest is not None and speeds[slowest][1] < min(1.0, speeds[rows[0]][1], speeds[rows[-1]][1]):
        parts.append(slowest)
    parts.append(rows[-1])
    return " ".join(f"{speeds[r][1]:.2f}x@{r}" for r in parts)


def key_for_layer(info: dict[str, Any]) -> str | None:
    """The table row of a packed layer from its artifact record (``kernel`` and ``granularity``)."""
    kernel = info.get("kernel")
    if kernel == K.Kernel.INT8PACK_MM.value:
        return format_key(8, None)
    if kernel == K.Kernel.INT4PACK_MM.value:
        gran = info.get("granularity") or {}
        size = gran.get("size", (gran.get("_data") or {}).get("size"))
        return format_key(4, size) if isinstance(size, int) else None
    return None
