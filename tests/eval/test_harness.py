from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from torchslim.artifact.size import artifact_size
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.eval import EvalSpec, Report, evaluate, layer_info, model_label
from torchslim.eval import energy as energy_mod

from .conftest import TinyClassification, TinyClassifier, TinyDecodeTask

FAST = dict(warmup=1, iters=3)


def test_evaluate_end_to_end(model: TinyClassifier, task: TinyClassification, artifact_save) -> None:
    before_threads = torch.get_num_threads()
    model.train()
    report = evaluate(model, task, EvalSpec(threads=1, powercap_root="/nonexistent-powercap", sizer=artifact_size, **FAST))
    assert torch.get_num_threads() == before_threads and model.training      # both restored
    assert report.model == "TinyClassifier" and report.task == "tiny-classification" and report.threads == 1
    assert report.torch_version == torch.__version__

    model.eval()
    assert report.quality.metrics == pytest.approx(task.evaluate(model))
    assert report.quality.primary == "accuracy" and report.quality.higher_is_better

    size = report.size
    assert size.parameters == size.nonzero_parameters == 64 * 32 + 32 + 32 * 4 + 4
    assert size.bits_per_weight == 32.0 and size.artifact_bytes > size.weight_bytes

    assert [(s.batch, s.seq_len) for s in report.speed.shapes] == [(1, None), (8, None)]
    for s in report.speed.shapes:
        assert s.latency.iters == 3 and s.latency.p90_ms >= s.latency.median_ms > 0
    assert report.speed.decode is None and "does not generate" in report.speed.decode_note

    assert report.compute.flops == 2 * 1 * (64 * 32 + 32 * 4) and report.compute.batch == 1
    assert report.memory.peak_rss_bytes >= report.memory.rss_before_bytes > 0
    assert not report.energy.available and "does not exist" in report.energy.reason
    assert report.layers == []
    assert Report.from_json(report.to_json()) == report
    json.loads(report.to_json())


def test_threads_are_set_during_the_run(model: TinyClassifier) -> None:
    seen = []

    class Spy(TinyClassification):
        def forward(self, model, inputs):
            seen.append(torch.get_num_threads())
            return model(**inputs)

    evaluate(model, Spy(), EvalSpec(threads=1, measure_quality=False, measure_size=False, measure_flops=False, measure_energy=False, **FAST))
    assert seen and set(seen) == {1}


def test_flags_switch_sections_off(model: TinyClassifier, task: TinyClassification) -> None:
    r = evaluate(model, task, EvalSpec(measure_quality=False, measure_size=False, measure_speed=False, measure_flops=False, measure_memory=False,
                                       measure_energy=False, **FAST))
    assert (r.quality, r.size, r.speed, r.compute, r.memory, r.energy) == (None,) * 6
    r = evaluate(model, task, EvalSpec(measure_quality=False, measure_size=False, measure_speed=False, measure_flops=False, measure_energy=False, **FAST))
    assert r.memory is not None and r.speed is None


def test_existing_artifact_dir(model: TinyClassifier, task: TinyClassification, tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"0" * 4321)
    r = evaluate(model, task, EvalSpec(artifact_dir=tmp_path, sizer=artifact_size, measure_quality=False, measure_speed=False, measure_memory=False,
                                       measure_energy=False, measure_flops=False, **FAST))
    assert r.size.artifact_bytes == 4321 and r.settings["artifact_dir"] == str(tmp_path)


def test_decode_and_token_shapes(model: TinyClassifier) -> None:
    spec = EvalSpec(decode_tokens=6, measure_quality=False, measure_size=False, measure_energy=False, measure_memory=False, **FAST)
    r = evaluate(model, TinyDecodeTask(), spec, label="tiny-lm")
    assert r.model == "tiny-lm"
    s = r.speed.shapes[0]
    assert (s.batch, s.seq_len) == (2, 16) and s.tokens_per_s == pytest.approx(16 * s.samples_per_s)
    assert r.speed.decode.new_tokens == 6 and r.speed.decode.decode_tokens_per_s > 0
    spec.decode_tokens = 0
    r = evaluate(model, TinyDecodeTask(), spec)
    assert r.speed.decode is None and "decode_tokens=0" in r.speed.decode_note


def test_energy_from_fake_rapl(model: TinyClassifier, task: TinyClassification, tmp_path, monkeypatch) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0")
    (zone / "energy_uj").write_text("0")
    (zone / "max_energy_range_uj").write_text("1000000000")
    ticks = iter(range(0, 10**9, 1_000_000))                    # +1 J per read
    monkeypatch.setattr(energy_mod.RaplCounter, "read", lambda self: [next(ticks)])
    r = evaluate(model, task, EvalSpec(powercap_root=tmp_path, measure_quality=False, measure_size=False, measure_flops=False, **FAST))
    e = r.energy
    assert e.available and e.source == "intel-rapl" and e.domains == ["package-0"] and e.reason is None
    assert [(s.batch, s.joules, s.forwards) for s in e.shapes] == [(1, 1.0, 3), (8, 1.0, 3)]
    assert e.shapes[0].joules_per_forward == pytest.approx(1 / 3)
    assert e.shapes[0].average_watts == pytest.approx(1.0 / e.shapes[0].seconds)


def test_energy_counter_that_does_not_advance_is_flagged(model, task, tmp_path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("5")
    (zone / "max_energy_range_uj").write_text("100")
    r = evaluate(model, task, EvalSpec(powercap_root=tmp_path, measure_quality=False, measure_size=False, measure_flops=False, **FAST))
    assert r.energy.available and r.energy.shapes[0].joules == 0.0 and "did not advance" in r.energy.note


def test_layer_info_from_custom_modules(task: TinyClassification) -> None:
    class QLinear(nn.Linear):
        def torchslim_layer_info(self) -> dict:
            return {"format": "int8", "kernel": "reference", "group_size": (64,)}

    model = TinyClassifier()
    model.fc1 = QLinear(64, 32)
    assert layer_info(model) == [{"name": "fc1", "type": "QLinear", "format": "int8", "kernel": "reference",
                                  "group_size": [64]}]
    r = evaluate(model, task, EvalSpec(measure_quality=False, measure_size=False, measure_speed=False, measure_memory=False, measure_energy=False, **FAST))
    assert r.layers[0]["name"] == "fc1" and "custom" in r.compute.note


def test_user_mistakes(model: TinyClassifier, task: TinyClassification) -> None:
    with pytest.raises(ConfigError, match="iters"):
        evaluate(model, task, EvalSpec(iters=2))
    with pytest.raises(ConfigError, match="batch"):
        evaluate(model, task, EvalSpec(shapes=((0, None),)))
    with pytest.raises(ConfigError, match="empty"):
        evaluate(model, task, EvalSpec(shapes=()))
    with pytest.raises(ConfigError, match="threads"):
        evaluate(model, task, EvalSpec(threads=0))

    class NoPrimary(TinyClassification):
        def evaluate(self, model):
            return {"loss": 1.0}

    with pytest.raises(TorchSlimError, match="primary metric 'accuracy'"):
        evaluate(model, NoPrimary(), EvalSpec(measure_size=False, measure_speed=False, measure_flops=False, measure_memory=False, measure_energy=False, **FAST))


def test_model_label() -> None:
    m = nn.Linear(1, 1)
    assert model_label(m) == "Linear"
    m.config = type("Cfg", (), {"_name_or_path": "HuggingFaceTB/SmolLM2-135M"})()
    assert model_label(m) == "HuggingFaceTB/SmolLM2-135M"


def test_model_label_never_shows_a_cache_path(tmp_path) -> None:
    from torchslim.core.state import HistoryEntry, state_of

    cached = tmp_path / ".cache" / "torchslim" / "smollm2-135m-q41-1234-99-v3"
    m = nn.Linear(1, 1)
    m.config = type("Cfg", (), {"_name_or_path": str(cached)})()
    assert model_label(m) == "smollm2-135m-q41-1234-99-v3"            # a folder: its name, not its path
    state_of(m).source = {"kind": "zoo", "name": "smollm2-135m"}
    assert model_label(m) == "smollm2-135m"                            # the zoo name wins
    state_of(m).source = {"kind": "hf", "path": str(tmp_path / "models" / "my-llama")}
    assert model_label(m) == "my-llama"
    state_of(m).history = [HistoryEntry(0, "evaluate", "baseline"), HistoryEntry(1, "quantization", "GPTQConfig")]
    assert model_label(m) == "my-llama + GPTQConfig"                  # compression stages, not evaluations


def test_what_picks_the_measurements(model: TinyClassifier, task: TinyClassification) -> None:
    r = evaluate(model, task, EvalSpec(**FAST), what="quality")
    assert r.quality is not None and (r.size, r.speed, r.compute, r.memory, r.energy) == (None,) * 5
    assert r.settings["what"] == ["quality"]
    r = evaluate(model, task, EvalSpec(**FAST), what=("flops", "speed"))
    assert r.quality is None and r.compute is not None and r.speed is not None and r.memory is None
    r = evaluate(model, task, EvalSpec(measure_energy=False, **FAST), what="all")   # a spec flag stays off
    assert r.energy is None and r.memory is not None and r.quality is not None


@pytest.mark.parametrize("what", [("quality", "latency"), (), "everything", (3,)])
def test_unknown_what_names_the_valid_ones(model: TinyClassifier, task: TinyClassification, what) -> None:
    with pytest.raises(ConfigError, match="quality, size, speed, flops, memory, energy"):
        evaluate(model, task, EvalSpec(**FAST), what=what)


def test_console_progress_and_artifact_dir_kwarg(model: TinyClassifier, task: TinyClassification, tmp_path) -> None:
    from rich.console import Console

    (tmp_path / "model.safetensors").write_bytes(b"0" * 100)
    console = Console(file=io.StringIO(), width=200, color_system=None)
    r = evaluate(model, task, EvalSpec(measure_quality=False, measure_energy=False, sizer=artifact_size, **FAST),
                 artifact_dir=tmp_path,
                 console=console)
    assert r.size.artifact_bytes == 100
    text = console.file.getvalue()
    assert "timing 2 shape(s): 1 warm-up + 3 timed forwards each" in text
    assert "measuring size" in text and "counting FLOPs" in text    # off a terminal every stage says so
    assert "decode" not in text                                     # the task does not generate: no stage line


def test_timing_progress_lines_count_tokens(model, monkeypatch, capsys) -> None:
    """Lines on stderr between forwards, weighted by tokens: 4 forwards of 1x8 then 4 of 3x8 make 128 tokens."""
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "lines")
    monkeypatch.setenv("TORCHSLIM_PROGRESS_EVERY", "0")
    task = TinyDecodeTask()
    evaluate(model, task, EvalSpec(shapes=((1, 8), (3, 8)), decode_tokens=0, **FAST), what="speed")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "timing shapes" in ln]
    assert lines[0].startswith("[torchslim] timing shapes 0/128 tokens")
    assert "8/128 tokens 1x8" in lines[1] and lines[-1].startswith("[torchslim] timing shapes 128/128 tokens 3x8")
    assert len(lines) == 1 + 8


def test_layer_format_falls_back_to_storage() -> None:
    class Cast(nn.Linear):
        def torchslim_layer_info(self) -> dict:
            return {"technique": "cast", "storage": "bfloat16", "kernel": "aten.linear[bfloat16]"}

    (entry,) = layer_info(nn.Sequential(Cast(2, 2)))
    assert entry == {"name": "0", "type": "Cast", "format": "bfloat16", "kernel": "aten.linear[bfloat16]",
                     "technique": "cast", "storage": "bfloat16"}


def test_structured_format_is_kept_as_format_config() -> None:
    class Q(nn.Linear):
        def torchslim_layer_info(self) -> dict:
            return {"format": {"bits": 4}, "storage": "int4 g128", "kernel": "int4pack_mm"}

    (entry,) = layer_info(nn.Sequential(Q(2, 2)))
    assert entry["format"] == "int4 g128" and entry["format_config"] == {"bits": 4}
