import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchslim
from torchslim.cli.main import parse_shape
from torchslim.core.errors import TorchSlimError

EXE = str(Path(sys.executable).with_name("torchslim"))


def run(*args, cwd=None, columns=240):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": str(columns)}
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def assert_user_error(res, fragment):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], res.stderr


def test_parse_shape():
    assert parse_shape("8x128") == (8, 128) and parse_shape("4") == (4, None)
    for bad in ("x", "8x", "0x3", "1x2x3"):
        with pytest.raises(TorchSlimError):
            parse_shape(bad)


def test_help_everywhere(cli):
    res = run("--help")                                  # the installed entry point itself
    assert res.returncode == 0 and "Usage" in res.stdout, res.stderr
    for args in (["zoo"], ["eval", "--help"], ["quantize", "--help"], ["prune", "--help"], ["info", "--help"],
                 ["demo", "--help"], ["zoo", "--help"]):
        res = cli(*args)
        assert res.returncode == 0 and "Usage" in res.stdout, (args, res.stdout)


def test_zoo_list(cli):
    res = cli("zoo", "list")
    assert res.returncode == 0
    for name in ("minilm", "smollm2-135m", "digits-cnn"):
        assert name in res.stdout
    assert "tiny-llama" not in res.stdout
    assert "tiny-llama" in cli("zoo", "list", "--all").stdout


def test_eval_tiny_model_prints_table_and_json(tmp_path):
    out = tmp_path / "r.json"
    res = run("eval", "tiny-llama", "--iters", "3", "--warmup", "1", "--decode-tokens", "4", "--json", str(out))
    assert res.returncode == 0, res.stderr
    for metric in ("perplexity", "Artifact size", "Latency median", "Decode speed", "FLOPs", "Peak RSS"):
        assert metric in res.stdout, metric
    for stage in ("loading tiny-llama", "counting FLOPs", "evaluating quality"):   # said in a log (stderr)
        assert stage in res.stderr and stage not in res.stdout, stage
    report = json.loads(out.read_text())
    assert report["quality"]["metrics"]["perplexity"] > 1
    assert report["compute"]["flops"] > 0


def test_user_errors_are_one_line(tmp_path, cli):
    assert_user_error(cli("eval", "no-such-model"), "unknown model 'no-such-model'")
    assert_user_error(cli("eval", str(tmp_path / "missing")), "no such model folder")
    assert_user_error(cli("eval", "tiny-llama", "--shape", "8y"), "bad shape")
    bad_cfg = tmp_path / "c.yaml"
    bad_cfg.write_text("_type: CastConfig\n_data:\n  dtyp: bfloat16\n")
    assert_user_error(cli("quantize", "tiny-llama", "-c", str(bad_cfg), "-o", str(tmp_path / "o")),
                      "unknown key 'dtyp'")
    assert_user_error(cli("quantize", "tiny-llama", "-c", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "o")),
                      "config file not found")
    res = run("eval")                                   # the installed entry point itself
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.mark.slow   # nine CLI processes (39 s); truncated artifacts are refused in tests/artifact by default
def test_quantize_then_info_then_eval_artifact_and_corrupt_refused(tmp_path):
    cfg = tmp_path / "bf16.yaml"
    torchslim.CastConfig(dtype=torch.bfloat16).save(cfg)
    art = tmp_path / "art"
    res = run("quantize", "tiny-llama", "-c", str(cfg), "-o", str(art))
    assert res.returncode == 0, res.stderr
    info = run("info", str(art))
    assert info.returncode == 0 and "CastConfig" not in info.stderr and "bfloat16" in info.stdout
    narrow = run("info", str(art), columns=80).stdout.splitlines()     # names keep their distinguishing tails
    names = [line.split("│")[1].strip() for line in narrow if line.startswith("│") and "bfloat16" in line]
    assert len(names) > 8 and len(set(names)) == len(names) and any(n.endswith("down_proj") for n in names)
    ev = run("eval", str(art), "--iters", "3", "--warmup", "1", "--decode-tokens", "0", "--no-speed")
    assert ev.returncode == 0, ev.stderr
    assert "Bits per weight" in ev.stdout and "compressed layers" in ev.stdout
    manifest = (art / "manifest.json").read_bytes()
    again = run("quantize", "tiny-llama", "-c", str(cfg), "-o", str(art), "--no-eval")   # a finished artifact
    assert_user_error(again, "already holds a torchslim artifact")
    assert (art / "manifest.json").read_bytes() == manifest
    assert run("quantize", "tiny-llama", "-c", str(cfg), "-o", str(art), "--no-eval", "--force").returncode == 0
    w = art / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    assert_user_error(run("eval", str(art)), "truncated")
    assert_user_error(run("info", str(tmp_path)), "not a torchslim artifact")


@pytest.mark.slow      # ~8 s: a CLI training run (the default suite stays under 10 minutes on 2 cores)
def test_finetune_digits_cnn_writes_metrics_and_artifact(tmp_path):
    res = run("finetune", "digits-cnn", "--steps", "3", "--json", str(tmp_path / "m.json"), "-o", str(tmp_path / "ft"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 3 and summary["metrics"]["top1"] > 95
    reloaded = torchslim.load_model(str(tmp_path / "ft"))
    assert reloaded.task.evaluate(reloaded.model)["top1"] == summary["metrics"]["top1"]
    assert_user_error(run("finetune", "digits-cnn", "--optimizer", "adam"), "adam")


def test_demo_compresses_to_int4_gptq_and_compares(tmp_path):
    res = run("demo", "--model", "tiny-llama", "--out", str(tmp_path / "d"), "--iters", "3", columns=80)
    assert res.returncode == 0, res.stderr
    # a log is 80 columns wide to rich: the closing line still names the artifact and report paths whole
    assert any(ln.startswith("artifact: ") and ln.rstrip().endswith("report.md") for ln in res.stdout.splitlines())
    assert "recipe int4-gptq" in res.stdout and "uncompressed (baseline)" in res.stdout
    assert "Bits per weight" in res.stdout and "perplexity" in res.stdout and "Decode speed" in res.stdout
    report = (tmp_path / "d" / "report.md").read_text()
    assert "| 1 | quantize GPTQConfig | 14 QuantLinear, 1 QuantLinear" not in report   # counted once per stage
    assert "quantize GPTQConfig | 1 PackedEmbedding, 15 QuantLinear" in report     # the tied table stored once
    assert not (tmp_path / "d" / ".torchslim-run").exists()
    layers = json.loads((tmp_path / "d" / "manifest.json").read_text())["layers"]
    assert layers["model.layers.0.mlp.down_proj"]["kernel"] == "int4pack_mm"
    assert layers["lm_head"]["storage"].startswith("int8")


def test_usage_errors_are_one_error_line_with_exit_2(tmp_path, cli):
    for args, needle in ((("eval", "tiny-llama", "--iters", "2"), "--iters"),
                         (("quantize", "tiny-llama", "-c", "x.yaml"), "Missing option '--out'"),
                         (("nope",), "No such command 'nope'"),
                         (("run", "int8-weight-only"), "Missing option '--model'")):
        res = cli(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr and "Usage:" not in res.stderr, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    help_ = run("info", "--help")
    assert help_.returncode == 0 and "Usage" in help_.stdout


def test_eval_json_into_a_folder_fails_before_evaluating(tmp_path, cli):
    res = run("eval", "tiny-llama", "--json", str(tmp_path))
    assert res.returncode == 2 and "--json" in res.stderr and "not a file path" in res.stderr


@pytest.mark.slow      # ~18 s: CLI processes on user data files (the default suite stays under 10 minutes on 2 cores)
def test_user_data_options(tmp_path):
    text = tmp_path / "mine.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    res = run("eval", "tiny-llama", "--no-speed", "--eval-data", str(text), "--seq-len", "64")
    assert res.returncode == 0, res.stderr
    assert "eval_windows" in res.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    assert_user_error(run("eval", "tiny-llama", "--no-speed", "--eval-data", str(bad)), "bad.jsonl:2")
    assert_user_error(run("quantize", "tiny-llama", "-c", "x.yaml", "-o", str(tmp_path / "o"), "--calib-data",
                          str(tmp_path / "none.txt")), "config file not found")


@pytest.mark.slow      # ~10 s: CLI processes (the default suite stays under 10 minutes on 2 cores)
def test_version_and_a_hint_for_hub_ids(tmp_path):
    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"torchslim {torchslim.__version__}"
    assert_user_error(run("eval", "HuggingFaceTB/SmolLM2-135M", cwd=tmp_path), "reads local folders only")
    res = run("eval", "./not-here", cwd=tmp_path)
    assert_user_error(res, "no such model folder")
    assert "Hub id" not in res.stderr


@pytest.mark.slow          # four model runs in subprocesses (about 20 s)
def test_every_verb_takes_the_data_flags_an_image_classifier_asks_for(tmp_path):
    """An image classifier has no task without --eval-data: quantize, prune and finetune accept it (and the other
    data flags) as eval and run do, instead of asking for the flag and then rejecting it."""
    from tiny_vit import vit_folder_and_images

    vit_folder_and_images(tmp_path)
    from torchslim.pruning import UnstructuredConfig
    from torchslim.quantization import W8A8Config

    W8A8Config(n_samples=4).save(tmp_path / "q.yaml")
    UnstructuredConfig(sparsity=0.5, importance="wanda", n_samples=4).save(tmp_path / "p.yaml")
    vit, imgs = str(tmp_path / "vit"), str(tmp_path / "imgs")
    assert_user_error(run("quantize", vit, "-c", str(tmp_path / "q.yaml"), "-o", str(tmp_path / "x"), "--calib-data",
                          imgs), "pass --eval-data")
    for verb, extra in (("quantize", ["-c", str(tmp_path / "q.yaml")]), ("prune", ["-c", str(tmp_path / "p.yaml")]),
                        ("finetune", ["--steps", "1", "--batch-size", "2"])):
        res = run(verb, vit, *extra, "-o", str(tmp_path / verb), "--eval-data", imgs, "--calib-data", imgs)
        assert res.returncode == 0, f"{verb}: {res.stderr[-1500:]}"
        assert (tmp_path / verb / "manifest.json").is_file()


@pytest.mark.slow      # ~23 s: four CLI processes (the default suite stays under 10 minutes on 2 cores)
def test_quantize_and_prune_print_quality_before_and_after(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("_type: WeightOnlyConfig\nformat: {_type: IntFormat, bits: 8}\ngranularity: {_type: PerChannel}\n")
    res = run("quantize", "tiny-llama", "-c", str(cfg), "-o", str(tmp_path / "q"))
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("quality:"))
    assert "perplexity (lower is better)" in line and "->" in line
    pcfg = tmp_path / "p.yaml"
    pcfg.write_text("_type: UnstructuredConfig\nsparsity: 0.5\nimportance: magnitude\n")
    res = run("prune", "tiny-llama", "-c", str(pcfg), "-o", str(tmp_path / "p"))
    assert res.returncode == 0 and "quality: perplexity" in res.stdout, res.stderr
    res = run("prune", "tiny-llama", "-c", str(pcfg), "-o", str(tmp_path / "p2"), "--no-eval")
    assert res.returncode == 0 and "quality:" not in res.stdout, res.stderr


def test_peer_tqdm_bars_are_off_in_commands_unless_asked_for(monkeypatch):
    """Peers' tqdm bars ('Loading weights', 'Decompressing model') wrote carriage-return frames into logs."""
    import tqdm.std

    from torchslim.cli.main import _quiet_peers

    monkeypatch.setattr(tqdm.std.tqdm, "__init__", tqdm.std.tqdm.__init__)     # restored after the test
    monkeypatch.setenv("TQDM_DISABLE", "")
    _quiet_peers()
    assert not tqdm.std.tqdm(range(2)).disable                                 # the user's explicit setting wins
    monkeypatch.delenv("TQDM_DISABLE")
    _quiet_peers()
    # compressed-tensors passes disable=False itself (show_progress): its bars reached `export hf` logs
    assert tqdm.std.tqdm(range(2)).disable and tqdm.std.tqdm(range(2), disable=False).disable
    _quiet_peers()                                                             # a second call does not stack
    assert tqdm.std.tqdm(range(2), desc="x", disable=False).disable


def test_the_layers_table_shows_a_speed_recorded_at_conversion():
    from rich.console import Console

    from torchslim.cli.layers_table import _recorded_speed, layers_table

    info = {"name": "l", "technique": "lowrank-whiten", "kernel": "two matmuls",
            "speed": {"rows": [{"rows": 1, "speedup": 0.634}, {"rows": 256, "speedup": 1.2}], "faster": False}}
    assert _recorded_speed(info) == "0.63x@1 1.20x@256 (at conversion)"
    assert _recorded_speed({"speed": {"rows": [{"rows": "x"}]}}) is None and _recorded_speed({}) is None
    console = Console(width=200, record=True)
    console.print(layers_table([info, {"name": "m", "technique": "cast"}], 200))
    text = console.export_text()
    assert "0.63x@1 1.20x@256 (at conversion)" in text and "not measured" in text


@pytest.mark.slow
def test_eval_runtime_onnxruntime_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    res = run("eval", "tiny-bert", "--runtime", "onnxruntime", "--shape", "1x8", "--iters", "3", "--warmup", "1",
              "--json", str(out))
    assert res.returncode == 0, res.stderr
    for row in ("tiny-bert @ onnxruntime", "Runtime", "cosine_fidelity", "Latency median @ batch 1, 8 tokens"):
        assert row in res.stdout, row
    report = json.loads(out.read_text())
    assert report["settings"]["runtime"] == "onnxruntime" and report["settings"]["file"].endswith("model.onnx")
    assert report["settings"]["file_exported"] is True
    assert report["quality"]["metrics"]["cosine_fidelity"] == pytest.approx(1.0, abs=1e-5)   # the fp32 reference


def test_eval_runtime_errors_are_one_line(capsys, monkeypatch, tmp_path):
    from torchslim.runtime import backends

    real = backends.importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    for args, fragment in ((["--runtime", "openvino"], "runtime 'openvino' is not installed: pip install openvino"),
                           (["--runtime", "tensorrt"], "unknown runtime 'tensorrt'"),
                           (["--file", str(tmp_path / "m.onnx")], "--file is an exported file for --runtime")):
        from torchslim.cli.main import main

        with pytest.raises(SystemExit) as e:
            main(["eval", "no-such-model", *args])                        # refused before the model loads
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
