"""The per-machine kernel table: measured, cached, and read by packed layers and reports."""
from __future__ import annotations

import torch
from torch import nn

import torchslim
from torchslim import WeightOnlyConfig
from torchslim.quantization import IntFormat, PerGroup
from torchslim.quantization import kernel_table as kt


def _table(packed: dict[int, float], dense: dict[int, float], fp32: dict[int, float]) -> dict:
    rows = sorted(packed)
    return {"version": kt.TABLE_VERSION, "rows": rows, "layer": [8, 8],
            "fp32_s": {str(r): fp32[r] for r in rows},
            "formats": {"int4-g32": {kt.PACKED: {str(r): packed[r] for r in rows},
                                     kt.DENSE_BF16: {str(r): dense[r] for r in rows}}}}


def test_crossover_is_the_cut_that_loses_least_and_speeds_are_against_fp32() -> None:
    t = _table({1: 1.0, 8: 2.0, 64: 9.0, 512: 80.0}, {1: 5.0, 8: 5.0, 64: 6.0, 512: 40.0},
               {1: 3.0, 8: 4.0, 64: 12.0, 512: 90.0})
    assert kt.crossover("int4-g32", t) == 8
    speeds = kt.speed_vs_fp32("int4-g32", t)
    assert speeds[1] == (kt.PACKED, 3.0) and speeds[512] == (kt.DENSE_BF16, 90.0 / 40.0)
    assert "3.00x fp32 at 1 row (faster" in kt.describe("int4-g32", t)
    slow = _table({1: 6.0}, {1: 9.0}, {1: 3.0})
    assert "0.50x fp32 at 1 row (slower" in kt.describe("int4-g32", slow)


def test_the_short_form_shows_a_slow_middle_row_count() -> None:
    # SmolLM2 int4 showed "3.40x@1 5.34x@4096" while a 1x128 prefill (128 rows) ran at 0.57x fp32
    fast_ends = _table({1: 1.0, 8: 2.0, 64: 9.0, 512: 80.0}, {1: 5.0, 8: 5.0, 64: 6.0, 512: 40.0},
                       {1: 3.0, 8: 4.0, 64: 12.0, 512: 90.0})
    assert kt.short("int4-g32", fast_ends) == "3.00x@1 2.25x@512"
    slow_middle = _table({1: 1.0, 8: 2.0, 64: 20.0, 512: 80.0}, {1: 5.0, 8: 5.0, 64: 24.0, 512: 40.0},
                         {1: 3.0, 8: 4.0, 64: 12.0, 512: 90.0})
    assert kt.short("int4-g32", slow_middle) == "3.00x@1 0.60x@64 2.25x@512"


def test_one_noisy_row_count_does_not_move_the_cut_to_the_end() -> None:
    t = _table({1: 1.0, 8: 2.0, 64: 9.0, 512: 80.0, 2048: 300.0}, {1: 5.0, 8: 5.0, 64: 6.0, 512: 81.0, 2048: 200.0},
               {r: 1.0 for r in (1, 8, 64, 512, 2048)})
    assert kt.crossover("int4-g32", t) == 8


def test_rows_whose_timings_spread_are_flagged_noisy() -> None:
    t = {**_table({1: 1.0, 8: 1.0}, {1: 1.0, 8: 1.0}, {1: 1.0, 8: 1.0}), "spread": {"1": 0.05, "8": 3.2}}
    assert kt.noisy_rows(t) == [8]
    assert kt.noisy_rows(_table({1: 1.0}, {1: 1.0}, {1: 1.0})) == []      # a table measured before spreads were kept


def test_without_a_table_the_default_applies_and_reports_say_not_measured(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHSLIM_KERNEL_TABLE", raising=False)
    kt.load.cache_clear()
    assert kt.load() is None
    assert kt.crossover("int4-g128") == kt.K.LARGE_M
    assert kt.short("int4-g128") == "not measured"
    assert "not measured" in kt.describe("int8-channel")


def test_measured_table_is_cached_per_machine_and_read_by_packed_layers(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "lines")
    monkeypatch.delenv("TORCHSLIM_KERNEL_TABLE", raising=False)
    kt.load.cache_clear()
    table = kt.measure(rows=(1, 4, 64), n=64, k=256, reps=3, formats=("int4-g32", "int8-channel"))
    assert set(table["formats"]) == {"int4-g32", "int8-channel"}
    assert set(table["spread"]) == {"1", "4", "64"} and all(v >= 0 for v in table["spread"].values())
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "timing packed kernels" in ln]
    assert lines and lines[-1].startswith("[torchslim] timing packed kernels 3/3 row counts (64 rows)")
    assert all(v > 0 for v in table["formats"]["int4-g32"][kt.PACKED].values())
    kt.save(table)
    assert kt.table_path().is_file() and kt.load()["layer"] == [64, 256]
    forced = {**table, "formats": {"int4-g32": {kt.PACKED: {"1": 9.0, "4": 9.0, "64": 9.0},
                                                kt.DENSE_BF16: {"1": 1.0, "4": 1.0, "64": 1.0}}}}
    kt.save(forced)                                    # dense wins everywhere: packed layers never use the kernel
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    layer = model[0]
    assert layer.table_key() == "int4-g32" and layer.rows_cut() == 0
    info = layer.torchslim_layer_info()
    assert kt.key_for_layer(info) == "int4-g32" and "@1" in info["measured_speed"]
    x = torch.randn(1, 64)
    torch.testing.assert_close(model(x), x @ layer.dequantize().T + layer.bias, rtol=2e-2, atol=2e-2)
    kt.load.cache_clear()


def test_the_table_path_can_be_named_and_commands_can_be_told_not_to_measure(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHSLIM_KERNEL_TABLE", str(tmp_path / "t.json"))
    assert kt.table_path() == tmp_path / "t.json"
    monkeypatch.setenv("TORCHSLIM_MEASURE_KERNELS", "0")
    assert not kt.may_measure()
    monkeypatch.setenv("TORCHSLIM_MEASURE_KERNELS", "1")
    assert kt.may_measure()


def test_a_noisier_measurement_does_not_replace_the_saved_table() -> None:
    base = _table({1: 1.0, 8: 1.0, 64: 1.0}, {1: 1.0, 8: 1.0, 64: 1.0}, {1: 1.0, 8: 1.0, 64: 1.0})
    quiet = {**base, "spread": {"1": 0.05, "8": 0.3, "64": 0.1}}
    loaded = {**base, "spread": {"1": 0.9, "8": 0.8, "64": 0.1}}
    assert kt.noisier(loaded, quiet)                 # 2 noisy row counts against 1: keep the saved table
    assert not kt.noisier(quiet, loaded)             # better than what is saved: replace it
    assert not kt.noisier(loaded, None)              # nothing saved yet: a noisy table beats none (and says so)
    assert not kt.noisier({**base, "spread": {"1": 0.01}}, quiet)
