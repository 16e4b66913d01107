from __future__ import annotations

import pathlib
import sys
import types
from pathlib import Path

import pytest
import torch

from torchslim.eval.energy import (POWERCAP_ENV, NvmlCounter, RaplCounter, open_energy_counter, open_rapl,
                                   rapl_delta_uj)


def _zone(root: Path, name: str, label: str, energy: int, max_range: int = 1_000_000_000) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{energy}\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    return z


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 999_000_000)
    _zone(root, "intel-rapl:0:0", "core", 123)               # part of package 0: not added again
    _zone(root, "intel-rapl:1", "package-1", 5_000_000)
    _zone(root, "intel-rapl:2", "psys", 77)                  # whole platform: would double count
    return root


def test_wrap_around_arithmetic() -> None:
    assert rapl_delta_uj(100, 350, 1000) == 250
    assert rapl_delta_uj(999_000_000, 1_000_000, 1_000_000_000) == 2_000_000


def test_rapl_sums_packages_and_handles_wrap(powercap: Path) -> None:
    counter = open_rapl(powercap)
    assert isinstance(counter, RaplCounter)
    assert counter.domains == ["package-0", "package-1"]
    start = counter.read()
    assert start == [999_000_000, 5_000_000]
    (powercap / "intel-rapl:0" / "energy_uj").write_text("1000000\n")     # wrapped past 1e9
    (powercap / "intel-rapl:1" / "energy_uj").write_text("6500000\n")
    assert counter.joules_between(start, counter.read()) == pytest.approx(2.0 + 1.5)


def test_psys_used_only_without_packages(tmp_path: Path) -> None:
    _zone(tmp_path, "intel-rapl:0", "psys", 10)
    counter = open_rapl(tmp_path)
    assert isinstance(counter, RaplCounter) and counter.domains == ["psys"]


def test_env_override(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POWERCAP_ENV, str(powercap))
    counter, reason = open_energy_counter("cpu")
    assert reason is None and counter.source == "intel-rapl"


def test_unavailable_carries_a_reason(tmp_path: Path) -> None:
    counter, reason = open_energy_counter("cpu", tmp_path / "nothing")
    assert counter is None and reason.startswith("no readable RAPL counter") and "does not exist" in reason
    (tmp_path / "empty").mkdir()
    assert "no intel-rapl:N zone" in open_rapl(tmp_path / "empty")
    assert open_energy_counter("meta")[1] == "no energy counter for device type 'meta'"


def test_permission_denied_reason(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pathlib.Path.read_text

    def read_text(self: Path, *a, **k) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    reason = open_rapl(powercap)
    assert isinstance(reason, str) and "not readable by this user" in reason and "energy_uj" in reason


def test_this_machine_reports_real_state() -> None:
    """Whatever this machine has, the result is either a working counter or a reason, never a guess."""
    counter, reason = open_energy_counter("cpu")
    if counter is None:
        assert reason
    else:
        a = counter.read()
        assert counter.joules_between(a, counter.read()) >= 0


def test_nvml_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)             # import pynvml -> ImportError
    counter, reason = open_energy_counter("cuda:0")
    assert counter is None and "pynvml is not installed" in reason


def test_nvml_counter_with_fake_module(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([1000, 1000, 3500])
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: "h",
        nvmlDeviceGetHandleByIndex=lambda i: "h",
        nvmlDeviceGetName=lambda h: b"Fake GPU",
        nvmlDeviceGetTotalEnergyConsumption=lambda h: next(readings),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="abc"))
    counter, reason = open_energy_counter(torch.device("cuda", 0))
    assert reason is None and isinstance(counter, NvmlCounter) and counter.domains == ["Fake GPU"]
    start = counter.read()
    assert counter.joules_between(start, counter.read()) == 2.5


def test_nvml_error_becomes_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=boom))
    counter, reason = open_energy_counter("cuda:0")
    assert counter is None and "NVML failed" in reason and "Driver Not Loaded" in reason
