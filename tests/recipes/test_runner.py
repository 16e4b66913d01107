"""Running recipes: every shipped recipe on tiny-llama, reports, resumable runs (kill -9 included)."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import torchslim
from torchslim.core.errors import TorchSlimError
from torchslim.recipes import Recipe, RunOptions, load_recipe, preset_names, run_recipe

EXE = str(Path(sys.executable).with_name("torchslim"))
FAST = RunOptions(iters=3, warmup=1, decode_tokens=4, max_steps=8)
# Recipes whose stages the default suite already runs elsewhere (GPTQ, structured pruning, LoRA stages in
# tests/peft, the factorize stage in tests/lowrank): their end-to-end runs go with the slow set, to keep the
# default suite inside its budget.
SLOW_PRESETS = {"int4-qlora", "structured25-lora", "lowrank20-distill"}
# Recipes for classifiers (no causal LM to run them on): run on digits-cnn below.
CLASSIFIER_PRESETS = {"early-exit"}


@pytest.fixture(scope="module")
def fast_short_eval(tmp_path_factory) -> RunOptions:
    """FAST, evaluating on the first part of the evaluation text (the stages are under test, not the metric)."""
    from torchslim.data.text import eval_text

    text = tmp_path_factory.mktemp("eval") / "eval.txt"
    text.write_text(eval_text()[:6000])
    return dataclasses.replace(FAST, data={"eval_data": str(text)})


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_PRESETS else n
                                  for n in preset_names() if n not in CLASSIFIER_PRESETS])
def test_every_shipped_recipe_runs_on_tiny_llama(tmp_path, name, fast_short_eval):
    recipe = load_recipe(name)
    result = run_recipe(recipe, "tiny-llama", tmp_path / "out", fast_short_eval)
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert [r["index"] for r in report["stages"]] == list(range(len(recipe.stages) + 1))
    assert report["baseline"]["quality"]["metrics"]["perplexity"] > 0
    assert report["final"]["speed"]["decode"]["decode_tokens_per_s"] > 0
    assert "ISA" in report["machine"] and "| # | stage |" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()      # the same run on one page: every section but the scan's
    assert all(f'<section id="{s}">' in page for s in ("before-after-table", "size-quality-Pareto-plot",
                                                       "per-layer-kernel-and-format-table", "history-of-stages"))
    assert '<section id="sensitivity-heat-map">' not in page and "sensitivity heat map: give" in page
    history = torchslim.artifact.read_manifest(out)["history"]
    applied = [h["name"] for h in history if h["kind"] != "evaluate"]
    assert applied == [type(s.config).__name__ for s in recipe.stages if hasattr(s, "config")]
    trained = [h for h in history if (h.get("config") or {}).get("train")]
    assert all(h["config"]["train"]["steps"] == 8 and h["details"]["steps"] == 8 for h in trained)
    again = torchslim.load(out)
    ids = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, result.model(ids).logits, atol=1e-5)
    assert not (out / ".torchslim-run").exists()


def test_save_stages_write_inside_the_output_folder(tmp_path):
    recipe = Recipe.from_dict({"stages": [{"quantize": {"_type": "CastConfig", "selector": {"include": "type:Embedding"}}},
                                          {"save": {"path": "bf16"}},
                                          {"prune": {"_type": "UnstructuredConfig", "sparsity": 0.5,
                                                     "selector": {"include": ["re:.*mlp.*_proj"]}}}]})
    run_recipe(recipe, "tiny-llama", tmp_path / "o", RunOptions(report=False))
    assert torchslim.artifact.read_manifest(tmp_path / "o" / "bf16")["history"][0]["name"] == "CastConfig"
    assert [h["name"] for h in torchslim.artifact.read_manifest(tmp_path / "o")["history"]] == \
        ["CastConfig", "UnstructuredConfig"]
    assert not (tmp_path / "o" / "report.md").exists()


def test_an_interrupted_run_must_be_resumed_explicitly_with_the_same_recipe(tmp_path):
    out = tmp_path / "o"
    (out / ".torchslim-run").mkdir(parents=True)
    recipe = load_recipe("int8-weight-only")
    state = {"format": "torchslim-run", "recipe_name": "x", "fingerprint": "0" * 64, "model": "tiny-llama",
             "completed": -1, "checkpoint": None, "rows": []}
    (out / ".torchslim-run" / "run.json").write_text(json.dumps(state))
    with pytest.raises(TorchSlimError, match="holds an interrupted run; pass --resume"):
        run_recipe(recipe, "tiny-llama", out, RunOptions(report=False))
    with pytest.raises(TorchSlimError, match="used another recipe or model"):
        run_recipe(recipe, "tiny-llama", out, RunOptions(report=False, resume=True))


def test_a_foreign_output_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(TorchSlimError, match="refusing to overwrite"):
        run_recipe(load_recipe("int8-weight-only"), "tiny-llama", tmp_path / "mine", RunOptions(report=False))
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


KILL_RECIPE = """
recipe: kill-test
stages:
  - prune: {_type: UnstructuredConfig, sparsity: 0.5}
  - train: {steps: 400, batch_size: 8, lr: 1.0e-3, progress: false}
  - quantize: {_type: WeightOnlyConfig, format: {_type: IntFormat, bits: 8}, granularity: {_type: PerChannel}}
"""


def _run(*args, **kw):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "200"}
    return subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.parametrize("name", sorted(CLASSIFIER_PRESETS))
def test_classifier_recipes_run_on_digits_cnn(tmp_path, name):
    recipe = load_recipe(name)
    run_recipe(recipe, "digits-cnn", tmp_path / "out", FAST)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["final"]["quality"]["metrics"]["top1"] > 90
    history = torchslim.artifact.read_manifest(tmp_path / "out")["history"]
    applied = [h["name"] for h in history if h["kind"] != "evaluate"]
    assert applied == [type(s.config).__name__ for s in recipe.stages if hasattr(s, "config")]
    torchslim.load(tmp_path / "out")


@pytest.mark.slow   # 36 s of CLI runs; resume after a kill stays in the default suite via the prune --resume test
def test_a_run_killed_during_its_second_stage_resumes_to_the_same_artifact(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(KILL_RECIPE)
    full = _run("run", str(recipe), "-m", "tiny-llama", "-o", str(tmp_path / "full"), "--no-report")
    killed = _run("run", str(recipe), "-m", "tiny-llama", "-o", str(tmp_path / "killed"), "--no-report")
    state = tmp_path / "killed" / ".torchslim-run" / "run.json"
    deadline, reached = time.time() + 600, False      # generous: a loaded machine starts python slowly
    while time.time() < deadline and not reached:
        try:
            reached = state.is_file() and json.loads(state.read_text()).get("running") == 1
        except ValueError:                             # caught mid-write (the file is replaced atomically)
            reached = False
        time.sleep(0.05)
    assert reached, "the run never reached its second stage"
    time.sleep(0.5)                                    # well inside the 400 training steps
    assert killed.poll() is None, killed.communicate()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    st = json.loads(state.read_text())
    assert st["completed"] == 0 and st["running"] == 1 and not (tmp_path / "killed" / "manifest.json").exists()
    assert full.wait(timeout=300) == 0, full.communicate()[1]
    resumed = subprocess.run([EXE, "run", str(recipe), "-m", "tiny-llama", "-o", str(tmp_path / "killed"),
                              "--no-report", "--resume"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "200"})
    assert resumed.returncode == 0, resumed.stderr
    assert "stage 1/3" not in resumed.stdout and "stage 2/3" in resumed.stdout
    a = (tmp_path / "full" / "model.safetensors").read_bytes()
    b = (tmp_path / "killed" / "model.safetensors").read_bytes()
    assert a == b
    hist = [h["name"] for h in torchslim.artifact.read_manifest(tmp_path / "killed")["history"]]
    assert hist == ["UnstructuredConfig", "FinetuneConfig", "WeightOnlyConfig"]


def test_the_runner_shares_one_calibration_pass_between_awq_scaling_and_gptq(tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    run_recipe(load_recipe("int4-awq-gptq"), "tiny-llama", tmp_path / "o", RunOptions(report=False), console)
    text = console.export_text()
    assert "stages 1-2 share one calibration pass (AWQ scaling + GPTQ)" in text
    layers = torchslim.artifact.read_manifest(tmp_path / "o")["layers"]
    q = layers["model.layers.0.self_attn.q_proj"]
    assert q["module"] == "QuantLinear" and q["stage"] == 1
