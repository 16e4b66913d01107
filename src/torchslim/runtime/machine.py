"""What machine a measurement ran on: CPU model, the instruction-set features kernels depend on, threads.

Every benchmark table and run report records this line: timings from an AVX2-only CPU and from
an AVX512-VNNI or AMX one are not comparable, and kernel choices differ between them.
"""
from __future__ import annotations

import contextlib
import os
import platform

import torch

# Features that decide which CPU kernels are fast (int8 dot products, bf16, AMX tiles).
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if name and flags:
                    break
    return name, flags


def cpu_features() -> list[str]:
    """The kernel-relevant ISA features this CPU reports, in a fixed order."""
    _, flags = _cpuinfo()
    return [f for f in ISA_FLAGS if f in flags]


def machine_info() -> dict[str, object]:
    name, _ = _cpuinfo()
    return {"cpu": name, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "isa": cpu_features(),
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def machine_line(info: dict[str, object] | None = None) -> str:
    """One line for tables: ``AMD EPYC, 2 cores, 2 threads, ISA avx2 ... avx512_vnni, torch 2.13.0+cpu``."""
    i = info or machine_info()
    return (f"{i['cpu']}, {i['cores']} cores, {i['threads']} threads, ISA {' '.join(i['isa']) or 'baseline'} "
            f"(torch uses {i['torch_cpu_capability']}), torch {i['torch']}")
