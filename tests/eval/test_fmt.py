from __future__ import annotations

from torchslim.eval.fmt import fmt_bytes, fmt_count, fmt_metric, fmt_num, shape_key


def test_shape_key() -> None:
    assert shape_key(8, 128) == "8x128"
    assert shape_key(8, None) == "8"


def test_numbers_keep_three_significant_digits() -> None:
    assert [fmt_num(v) for v in (1234.5, 12.345, 1.2345, 0.012345)] == ["1,234", "12.3", "1.23", "0.0123"]
    assert fmt_metric(12.3456) == "12.35" and fmt_metric(123456.0) == "123,456"


def test_bytes_and_counts_pick_a_unit() -> None:
    assert fmt_bytes(512) == "512 B" and fmt_bytes(4_000_000) == "3.81 MiB" and fmt_bytes(3 * 2**30) == "3.00 GiB"
    assert fmt_count(90_500) == "90.5 k" and fmt_count(2e9, "FLOP") == "2.00 GFLOP" and fmt_count(12) == "12.0"
