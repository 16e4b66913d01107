"""`torchslim export hf` of a zoo model's artifact writes the tokenizer the model is loaded with."""
from __future__ import annotations

import pytest

import torchslim
from torchslim.exports import export_hf_folder
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig


def test_a_zoo_artifact_exports_with_its_tokenizer(tmp_path) -> None:
    from transformers import AutoTokenizer

    lm = torchslim.load_model("tiny-llama")
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    torchslim.save(lm.model, tmp_path / "art", source=lm.source)
    done = export_hf_folder(tmp_path / "art", tmp_path / "hf", dense=True)
    assert "tokenizer" in done and (tmp_path / "hf" / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=False)
    assert tok("hello world")["input_ids"] == lm.tokenizer("hello world")["input_ids"]


def _close(quality: dict, reader: str, tol: float) -> None:
    assert quality["reader"] == reader and quality["metric"] == "perplexity"
    assert abs(quality["exported"] - quality["artifact"]) <= tol * quality["artifact"], quality


@pytest.mark.slow
def test_each_export_reports_the_written_files_quality_next_to_the_models(tmp_path) -> None:
    from torchslim.exports import export_gguf, export_onnx

    lm = torchslim.load_model("tiny-llama")
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    torchslim.save(lm.model, tmp_path / "art", source=lm.source)
    _close(export_onnx(tmp_path / "art", tmp_path / "onnx", evaluate=True)["quality"], "ONNX Runtime", 1e-3)
    _close(export_hf_folder(tmp_path / "art", tmp_path / "hf", dense=True, evaluate=True)["quality"],
           "transformers (from_pretrained)", 1e-4)
    gguf = export_gguf("tiny-llama", tmp_path / "m.gguf", qtype="Q8_0", calibrate=False, evaluate=True)["quality"]
    _close(gguf, "transformers' GGUF reader", 5e-3)          # Q8_0 rounding of a float model
    assert gguf["exported"] != gguf["artifact"]                 # the file was read, not the model again


def test_a_file_that_cannot_be_evaluated_says_why(tmp_path) -> None:
    from torchslim.exports import compare_quality

    lm = torchslim.load_model("tiny-llama")

    def unreadable():
        raise torchslim.TorchSlimError("no reader for this file")

    assert compare_quality(lm, 1.0, unreadable, "x") == {"skipped": "no reader for this file"}
    lm.task = None
    assert "no task" in compare_quality(lm, None, unreadable, "x")["skipped"]


@pytest.mark.slow      # ~9 s: a full ONNX export (the default suite stays under 10 minutes on 2 cores)
def test_an_onnx_export_logs_its_trace_and_names_each_evaluation(tmp_path, monkeypatch, capsys) -> None:
    """Off a terminal the single long trace is not silent, and the two perplexity runs (the model, then the
    written file in ONNX Runtime) are named apart in the log."""
    from torchslim.exports import export_onnx

    monkeypatch.setenv("TORCHSLIM_PROGRESS", "lines")
    lm = torchslim.load_model("tiny-llama")
    torchslim.save(lm.model, tmp_path / "art", source=lm.source)
    capsys.readouterr()
    export_onnx(tmp_path / "art", tmp_path / "onnx", evaluate=True)
    err = capsys.readouterr().err.splitlines()
    assert "[torchslim] ONNX export 1/1: tracing model.onnx (packed layers rewritten after)" in err
    assert any(line.startswith("[torchslim] ONNX export 1/1") and "done in" in line for line in err)
    model = err.index("[torchslim] quality of the model: perplexity")
    exported = err.index("[torchslim] quality of the exported file (read by ONNX Runtime): perplexity")
    assert model < exported and any("perplexity (" in line for line in err[model:exported])
