from __future__ import annotations

import io
import json

import pytest

from torchslim.core.errors import TorchSlimError
from torchslim.eval import compare, format_table, render_table, to_markdown
from torchslim.eval.report import (ComputeResult, DecodeResult, EnergyResult, LatencyStats, MemoryResult,
                                   QualityResult, Report, ShapeEnergy, ShapeSpeed, SizeResult, SpeedResult, jsonable)


def _latency(median: float) -> LatencyStats:
    return LatencyStats(iters=10, median_ms=median, p90_ms=median * 1.5, mean_ms=median, min_ms=median / 2,
                        max_ms=median * 2, std_ms=1.0)


def make_report(name: str, *, acc: float, disk: int, params: int, bpw: float, lat: float, flops: int,
                rss: int, joules: float | None) -> Report:
    energy = (EnergyResult(available=True, source="intel-rapl", domains=["package-0"],
                           shapes=[ShapeEnergy(1, 128, 10, 1.0, joules * 10, joules, joules * 10)])
              if joules is not None else EnergyResult(available=False, reason="no readable RAPL counter: test"))
    return Report(
        model=name, task="causal-lm", device="cpu", device_name="Test CPU", threads=2, torch_version="2.13.0",
        torchslim_version="0.1.0", timestamp="2026-01-01T00:00:00+00:00",
        settings={"shapes": [[1, 128]], "warmup": 3, "iters": 10, "decode_tokens": 32, "artifact_dir": None},
        quality=QualityResult(metrics={"perplexity": acc, "accuracy": 0.5}, primary="perplexity", higher_is_better=False),
        size=SizeResult(artifact_bytes=disk, artifact_note="test", parameters=params, nonzero_parameters=params // 2,
                        weight_elements=params, weight_bytes=int(params * bpw / 8), bits_per_weight=bpw,
                        memory_bytes=disk),
        speed=SpeedResult(shapes=[ShapeSpeed(1, 128, _latency(lat), 1000 / lat, 128_000 / lat)],
                          decode=DecodeResult(prompt_tokens=16, new_tokens=32, prefill_ms=lat, decode_tokens_per_s=1000 / lat)),
        compute=ComputeResult(batch=1, seq_len=128, flops=flops, macs=flops // 2, by_module={"layer.0": flops}, note="n"),
        memory=MemoryResult(rss_before_bytes=rss // 2, peak_rss_bytes=rss, peak_rss_delta_bytes=rss // 2, samples=5,
                            interval_ms=2.0),
        energy=energy,
        layers=[{"name": "layer.0", "type": "QLinear", "format": "int8", "kernel": "torch._int_mm"}],
    )


@pytest.fixture
def base() -> Report:
    return make_report("fp32", acc=12.0, disk=4_000_000, params=1_000_000, bpw=32.0, lat=20.0, flops=2_000_000,
                       rss=800_000_000, joules=2.0)


@pytest.fixture
def other() -> Report:
    return make_report("int8", acc=12.5, disk=1_000_000, params=1_000_000, bpw=8.0, lat=10.0, flops=2_000_000,
                       rss=400_000_000, joules=0.5)


def test_json_round_trip_is_equal(base: Report, tmp_path) -> None:
    again = Report.from_json(base.to_json())
    assert again == base
    assert isinstance(again.speed.shapes[0].latency, LatencyStats)
    assert Report.load(base.save(tmp_path / "r.json")) == base
    unavailable = make_report("x", acc=1, disk=1, params=1, bpw=1, lat=1, flops=1, rss=1, joules=None)
    assert Report.from_dict(json.loads(unavailable.to_json())) == unavailable


def test_partial_report_round_trip() -> None:
    r = Report(model="m", task="t", device="cpu", device_name="c", threads=1, torch_version="v",
               torchslim_version="v", timestamp="t")
    assert Report.from_json(r.to_json()) == r


def test_from_dict_errors(base: Report) -> None:
    with pytest.raises(TorchSlimError, match="JSON object"):
        Report.from_dict([1, 2])
    d = base.to_dict()
    del d["size"]["parameters"]
    with pytest.raises(TorchSlimError, match="size.parameters"):
        Report.from_dict(d)
    with pytest.raises(TorchSlimError, match="newer"):
        Report.from_dict({**base.to_dict(), "schema": 99})
    with pytest.raises(TorchSlimError, match="not a JSON"):
        Report.from_json("{oops")
    assert Report.from_dict({**base.to_dict(), "future_field": 1}) == base


def test_compare_ratios_are_exact(base: Report, other: Report) -> None:
    c = compare(base, other)
    assert c["size"]["artifact_bytes"] == 0.25
    assert c["size"]["bits_per_weight"] == 0.25
    assert c["size"]["parameters"] == 1.0
    assert c["speed"]["latency_median_ms"] == {"1x128": 0.5}
    assert c["speed"]["latency_p90_ms"] == {"1x128": 0.5}
    assert c["speed"]["samples_per_s"] == {"1x128": 2.0}
    assert c["speed"]["decode_tokens_per_s"] == 2.0 and c["speed"]["prefill_ms"] == 0.5
    assert c["compute"] == {"flops": 1.0, "macs": 1.0}
    assert c["memory"]["peak_rss_bytes"] == 0.5 and c["memory"]["cuda_max_allocated_bytes"] is None
    assert c["energy"] == {"1x128": 0.25}
    assert c["quality"]["perplexity"] == {"base": 12.0, "other": 12.5, "delta": 0.5, "relative": 0.5 / 12.0}
    assert c["quality"]["accuracy"]["delta"] == 0.0


def test_compare_with_missing_sections(base: Report) -> None:
    empty = Report(model="m", task="t", device="cpu", device_name="c", threads=1, torch_version="v",
                   torchslim_version="v", timestamp="t")
    c = compare(base, empty)
    assert c["size"] == {} and c["quality"] == {} and c["energy"] == {} and c["speed"]["latency_median_ms"] == {}


def test_rich_table_renders_numbers_and_ratios(base: Report, other: Report) -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(render_table([base, other]))
    text = console.file.getvalue()
    assert "20.0 ms" in text and "10.0 ms (0.50x)" in text
    assert "3.81 MiB" in text and "977 KiB (0.25x)" in text
    assert "12.5 (+0.5)" in text and "perplexity (lower is better)" in text
    assert "fp32 (baseline)" in text


def test_plain_and_markdown_tables(base: Report, other: Report) -> None:
    unavailable = make_report("cpu-box", acc=12, disk=1, params=1, bpw=32, lat=40, flops=1, rss=1, joules=None)
    text = format_table([base, other, unavailable], baseline_index=0)
    assert "10.0 ms (0.50x)" in text and "40.0 ms (2.00x)" in text
    assert "Energy per forward @ batch 1, 128 tokens" in text and "0.500 J (0.25x)" in text
    assert "Energy unavailable: no readable RAPL counter: test" in text
    md = to_markdown([base, other], baseline_index=1)
    assert md.startswith("| Metric | fp32 | int8 (baseline) |")
    assert "20.0 ms (2.00x)" in md
    with pytest.raises(TorchSlimError, match="out of range"):
        format_table([base], baseline_index=3)
    with pytest.raises(TorchSlimError):
        format_table([])


def test_jsonable() -> None:
    assert jsonable({"a": (1, 2), 3: float("nan"), "o": object}) == {"a": [1, 2], "3": None, "o": str(object)}


def test_single_report_table_has_no_ratios(base: Report) -> None:
    base.quality.metrics["eval_tokens"] = 34816.0
    text = format_table([base])
    assert "fp32 (baseline)" not in text and "x)" not in text
    assert "34,816" in text


def test_noisy_timings_are_flagged_and_steady_ones_are_not(base: Report) -> None:
    from torchslim.eval.render import noisy_notes

    notes = noisy_notes([base])                       # p90 = 1.5 x median
    assert len(notes) == 1 and "50% above the median" in notes[0] and "1x128" in notes[0]
    assert any("too noisy" in n for n in format_table([base]).splitlines())
    base.speed.shapes[0].latency.p90_ms = base.speed.shapes[0].latency.median_ms * 1.1
    assert noisy_notes([base]) == []


def test_str_is_a_short_table_and_json_keeps_everything(base: Report) -> None:
    text = str(base)
    assert len(text.splitlines()) <= 10 and len(text) < 800
    for expected in ("model", "fp32", "causal-lm on Test CPU, 2 threads", "perplexity (lower is better)",
                     "12", "size on disk", "3.81 MiB", "latency median @ 1x128", "20.0 ms", "decode",
                     "50.0 tokens/s", "report.to_json()"):
        assert expected in text, expected
    assert "layer.0" not in text and "not measured" not in text
    assert json.loads(base.to_json())["layers"][0]["name"] == "layer.0"


def test_str_says_what_was_not_measured() -> None:
    r = Report(model="m", task="t", device="cpu", device_name="", threads=1, torch_version="", torchslim_version="",
               timestamp="", quality=QualityResult(metrics={"top1": 0.9}, primary="top1", higher_is_better=True))
    assert "top1 (higher is better)  0.9" in str(r)
    assert "not measured: size, speed, flops, memory, energy" in str(r)


def test_repr_is_one_short_line(base: Report) -> None:
    assert repr(base) == ("Report(model='fp32', task='causal-lm', perplexity=12.0, size='3.81 MiB', "
                          "latency_ms={'1x128': 20.0})")


def test_headers_fold_rather_than_end_in_an_ellipsis_at_80_columns() -> None:
    """Five reports at 80 columns cut every header to 'smollm2-1…': which column was which could not be told."""
    from rich.console import Console

    names = [f"smollm2-135m-{kind}" for kind in ("fp32", "int4-gptq", "sparse50", "int8-rtn", "lowrank20")]
    reports = [make_report(n, acc=12, disk=1, params=1, bpw=32, lat=40, flops=1, rss=1, joules=None) for n in names]
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(render_table(reports))
    text = console.file.getvalue()
    assert "…" not in text
    lines = [line.split("┃")[1:-1] for line in text.split("┡")[0].splitlines() if line.startswith("┃")]
    columns = ["".join(line[j].strip() for line in lines) for j in range(len(lines[0]))]   # each header, unfolded
    assert columns[1:] == [names[0] + "(baseline)", *names[1:]]
