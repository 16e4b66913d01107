"""Energy from hardware counters: Intel/AMD RAPL through Linux powercap on CPU, NVML on CUDA.

No counter, no number: where nothing is readable the result says so with the reason
(:class:`~torchslim.eval.report.EnergyResult` ``available=False``). Figures are never estimated.

RAPL: the top-level package zones ``<root>/intel-rapl:N`` (``root`` defaults to
``/sys/class/powercap``; override with the ``powercap_root`` argument or the
``TORCHSLIM_POWERCAP_ROOT`` environment variable) are read from ``energy_uj`` and summed; a
counter that wrapped is corrected with ``max_energy_range_uj``. Sub-zones (``intel-rapl:N:M``,
core/uncore/dram) are parts of their package and not added again; a ``psys`` zone (whole
platform, includes the packages) is used only when no package zone exists. The counter measures
the whole package: idle power and any other load on the machine are included.

NVML: ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules, Volta and newer) of the model's GPU.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

POWERCAP_ENV = "TORCHSLIM_POWERCAP_ROOT"
DEFAULT_POWERCAP = "/sys/class/powercap"
_ZONE = re.compile(r"^intel-rapl:\d+$")


class EnergyCounter(Protocol):
    source: str
    domains: list[str]

    def read(self) -> list[int]:
        """Raw counter values, one per domain."""

    def joules_between(self, start: list[int], end: list[int]) -> float:
        """Energy in joules between two :meth:`read` results."""


def rapl_delta_uj(start: int, end: int, max_range_uj: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 after ``max_range_uj``."""
    return end - start if end >= start else end + max_range_uj - start


@dataclass
class RaplCounter:
    """Sum of RAPL zones; ``zones`` are folders holding ``energy_uj``."""

    zones: list[Path]
    max_range_uj: list[int]
    domains: list[str] = field(default_factory=list)
    source: str = "intel-rapl"

    def read(self) -> list[int]:
        return [int((z / "energy_uj").read_text().strip()) for z in self.zones]

    def joules_between(self, start: list[int], end: list[int]) -> float:
        return sum(rapl_delta_uj(a, b, m) for a, b, m in zip(start, end, self.max_range_uj)) / 1e6


def powercap_root(root: str | os.PathLike | None = None) -> Path:
    """The powercap folder: ``root``, else ``$TORCHSLIM_POWERCAP_ROOT``, else ``/sys/class/powercap``."""
    return Path(root or os.environ.get(POWERCAP_ENV) or DEFAULT_POWERCAP)


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return zone.name


def open_rapl(root: str | os.PathLike | None = None) -> RaplCounter | str:
    """A counter over the RAPL package zones under ``root``, or the reason none is readable."""
    base = powercap_root(root)
    if not base.is_dir():
        return f"no readable RAPL counter: {base} does not exist (no powercap/RAPL on this machine)"
    zones = sorted(p for p in base.iterdir() if _ZONE.match(p.name) and p.is_dir())
    if not zones:
        return f"no readable RAPL counter: no intel-rapl:N zone under {base}"
    names = [_zone_name(z) for z in zones]
    chosen = [(z, n) for z, n in zip(zones, names) if n != "psys"] or list(zip(zones, names))
    counter = RaplCounter(zones=[z for z, _ in chosen], max_range_uj=[], domains=[n for _, n in chosen])
    try:
        counter.max_range_uj = [int((z / "max_energy_range_uj").read_text().strip()) for z in counter.zones]
        counter.read()
    except PermissionError as e:
        return (f"no readable RAPL counter: {e.filename} is not readable by this user "
                "(energy_uj is root-only on most kernels since the CVE-2020-8694 fix)")
    except (OSError, ValueError) as e:
        return f"no readable RAPL counter under {base}: {type(e).__name__}: {e}"
    return counter


@dataclass
class NvmlCounter:
    """Total GPU energy through NVML (millijoules since the driver loaded)."""

    handle: object
    domains: list[str]
    source: str = "nvml"

    def read(self) -> list[int]:
        import pynvml

        return [int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))]

    def joules_between(self, start: list[int], end: list[int]) -> float:
        return (end[0] - start[0]) / 1e3


def _nvml_handle(pynvml: object, device: torch.device) -> object:
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - older torch/driver: fall back to the index
        return pynvml.nvmlDeviceGetHandleByIndex(index)


def open_nvml(device: torch.device) -> NvmlCounter | str:
    """A counter for the CUDA ``device`` through NVML, or the reason none is readable."""
    try:
        import pynvml
    except ImportError:
        return "no readable GPU energy counter: pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        handle = _nvml_handle(pynvml, device)
        name = pynvml.nvmlDeviceGetName(handle)
        counter = NvmlCounter(handle=handle, domains=[name.decode() if isinstance(name, bytes) else str(name)])
        counter.read()
    except Exception as e:  # noqa: BLE001 - pynvml.NVMLError and friends
        return f"no readable GPU energy counter: NVML failed: {type(e).__name__}: {e}"
    return counter


def open_energy_counter(device: torch.device | str,
                        root: str | os.PathLike | None = None) -> tuple[EnergyCounter | None, str | None]:
    """``(counter, None)`` for the model's device, or ``(None, reason)`` when none is readable."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return None, f"no energy counter for device type '{device.type}'"
    opened = open_nvml(device) if device.type == "cuda" else open_rapl(root)
    return (None, opened) if isinstance(opened, str) else (opened, None)


def counter_note(counter: EnergyCounter) -> str:
    if counter.source == "nvml":
        return "GPU board energy from NVML; host CPU energy not included"
    return ("CPU package energy from RAPL (" + ", ".join(counter.domains) + "); includes idle power "
            "and any other load on the machine")
