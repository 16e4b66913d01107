"""Several runtimes, one harness: exported tiny models evaluated in ONNX Runtime, OpenVINO and llama.cpp by the same
task code as the torch model give the same metrics, and the same greedy tokens."""
import importlib.util

import pytest
import torch

import torchslim
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.eval import EvalSpec
from torchslim.exports import export_for_runtime
from torchslim.runtime import backends
from torchslim.runtime.backends import available, open_file, require
from torchslim.tasks.causal_lm import CausalLMTask
from torchslim.tasks.embedding import SentenceEmbeddingTask
from torchslim.zoo.tiny import build_tiny_bert, tiny_bert, tiny_llama


def _installed(*names):
    return [pytest.param(n, marks=pytest.mark.skipif(not available(n), reason=f"{n} is not installed")) for n in names]


ONNX_RUNTIMES = _installed("onnxruntime", "openvino")
SPEC = EvalSpec(shapes=((2, 16),), warmup=1, iters=3, decode_tokens=6, threads=1)
WHAT = ("quality", "speed", "size")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    lm = tiny_bert()
    task = SentenceEmbeddingTask(lm.tokenizer, lambda: build_tiny_bert(0), max_eval_sentences=32)
    return lm.model, task, export_for_runtime(lm.model, "onnxruntime", tmp_path_factory.mktemp("bert"), task=task)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    lm = tiny_llama()
    task = CausalLMTask(lm.tokenizer, seq_len=32, max_eval_windows=8)
    return lm.model, task, export_for_runtime(lm.model, "onnxruntime", tmp_path_factory.mktemp("llama"), task=task)


@pytest.fixture(scope="module")
def torch_reports(bert, llama):
    return {name: torchslim.evaluate(m, t, SPEC, what=WHAT) for name, (m, t, _) in (("bert", bert), ("llama", llama))}


@pytest.mark.parametrize("runtime", ONNX_RUNTIMES)
def test_encoder_fidelity_matches_the_torch_path(bert, torch_reports, runtime):
    model, task, path = bert
    report = torchslim.evaluate(model, task, SPEC, what=WHAT, runtime=runtime, file=path)
    ref = torch_reports["bert"]
    for key in ("cosine_fidelity", "min_cosine", "nn_agreement"):
        assert report.quality.metrics[key] == pytest.approx(ref.quality.metrics[key], abs=1e-5), key
    assert report.settings["runtime"] == runtime and report.model.endswith(f"@ {runtime}")
    assert report.settings["file"] == str(path) and report.settings["file_exported"] is False
    assert report.size.artifact_bytes == path.stat().st_size           # the file's bytes, not an artifact's
    assert [(s.batch, s.seq_len) for s in report.speed.shapes] == [(2, 16)]
    assert report.speed.shapes[0].latency.iters == 3
    assert report.speed.decode is None and "does not generate" in report.speed.decode_note


@pytest.mark.parametrize("runtime", ONNX_RUNTIMES)
def test_decoder_perplexity_and_greedy_decode_match_the_torch_path(llama, torch_reports, runtime):
    model, task, path = llama
    report = torchslim.evaluate(model, task, SPEC, what=WHAT, runtime=runtime, file=path.parent)
    ref = torch_reports["llama"].quality.metrics
    assert report.quality.metrics["eval_tokens"] == ref["eval_tokens"] == 8 * 31
    assert report.quality.metrics["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-5)
    assert report.speed.decode.new_tokens == 6 and report.speed.decode.decode_tokens_per_s > 0
    runner = open_file(runtime, path, threads=1)
    ids = task.example_inputs(2, 8)["input_ids"]
    want = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(runner.generate(ids, max_new_tokens=6), want)     # the key/value cache fed back


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llamacpp_runs_the_gguf_export_with_the_same_task(llama, torch_reports, tmp_path):
    model, task, _ = llama
    path = export_for_runtime(model, "llamacpp", tmp_path, task=task)          # F32: the model's own weights
    report = torchslim.evaluate(model, task, SPEC, what=WHAT, runtime="llamacpp", file=path)
    ref = torch_reports["llama"].quality.metrics
    assert report.quality.metrics["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-3)
    assert report.speed.decode.new_tokens == 6
    runner = open_file("llamacpp", path, threads=1, n_ctx=64)
    ids = task.example_inputs(1, 8)["input_ids"]
    want = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(runner.generate(ids, max_new_tokens=6), want)
    with pytest.raises(TorchSlimError, match="context of 64"):
        runner(input_ids=torch.zeros(1, 65, dtype=torch.long))


def test_a_missing_runtime_is_one_line_naming_the_install_command(monkeypatch, llama):
    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(TorchSlimError) as e:
        require("openvino")
    assert str(e.value) == "runtime 'openvino' is not installed: pip install openvino (or pip install 'torchslim[openvino]')"
    model, task, path = llama
    with pytest.raises(TorchSlimError, match="pip install openvino"):       # before any export
        torchslim.evaluate(model, task, runtime="openvino")
    assert available("torch") and not available("openvino")


def test_bad_runtime_names_and_files_are_config_errors(bert, tmp_path):
    model, task, path = bert
    with pytest.raises(ConfigError, match="choose from torch, onnxruntime, openvino, llamacpp"):
        require("tensorrt")
    with pytest.raises(ConfigError, match="no such ONNX file"):
        open_file("onnxruntime", tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="reads .gguf files"):
        open_file("llamacpp", path) if available("llamacpp") else (_ for _ in ()).throw(
            ConfigError("llamacpp reads .gguf files"))
    with pytest.raises(ConfigError, match="need a runtime other than torch"):
        torchslim.evaluate(model, task, file=path)


@pytest.mark.skipif(not available("openvino"), reason="openvino is not installed")
def test_openvino_fp16_weights_halve_the_file_and_keep_the_outputs(bert):
    model, task, path = bert
    x = task.example_inputs(2, 16)
    want = model(**x).last_hidden_state
    f32 = open_file("openvino", path, threads=1)
    f16 = open_file("openvino", path, threads=1, compress_to_fp16=True)
    torch.testing.assert_close(f32(**x)[0], want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(f16(**x)[0], want, atol=3e-2, rtol=3e-2)
    assert f16.file_bytes() < 0.6 * f32.file_bytes() and f32.config["INFERENCE_PRECISION_HINT"] == "f32"


def test_onnxruntime_session_options_and_config_entries(bert):
    model, task, path = bert
    runner = open_file("onnxruntime", path, threads=1, options={"session.intra_op.allow_spinning": "0",
                                                                 "enable_cpu_mem_arena": False})
    assert runner.session.get_session_options().enable_cpu_mem_arena is False
    x = task.example_inputs(1, 8)
    torch.testing.assert_close(runner(**x)[0], model(**x).last_hidden_state, atol=1e-4, rtol=1e-4)
