"""`--max-memory` on the CLI: onloading when the weights do not fit, block streaming for an artifact, one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchslim.core.io import sha256

EXE = str(Path(sys.executable).with_name("torchslim"))


def run(*args):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "240",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def gptq_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "gptq.yaml"
    path.write_text("_type: GPTQConfig\nn_samples: 4\n")
    return path


@pytest.mark.slow      # three CLI processes (torch + transformers imports each): ~15 s
def test_quantize_onloads_a_model_over_the_budget_and_eval_streams_it(tiny_folder, gptq_yaml, tmp_path):
    res = run("quantize", str(tiny_folder), "-c", str(gptq_yaml), "-o", str(tmp_path / "on"), "--max-memory", "300KB",
              "--no-eval")
    assert res.returncode == 0, res.stderr
    assert "layer-wise onloading" in res.stdout and "onloaded 3 blocks" in res.stdout
    res = run("quantize", str(tiny_folder), "-c", str(gptq_yaml), "-o", str(tmp_path / "whole"), "--max-memory", "1GB",
              "--no-eval")
    assert res.returncode == 0 and "fit --max-memory" in res.stdout, res.stderr
    assert sha256(tmp_path / "on" / "model.safetensors") == sha256(tmp_path / "whole" / "model.safetensors")
    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12)
    res = run("eval", str(tmp_path / "on"), "--max-memory", "10KB", "--eval-data", str(text), "--seq-len", "64")
    assert res.returncode == 0, res.stderr
    assert "block streaming" in res.stdout and "perplexity" in res.stdout


def test_a_block_over_the_budget_is_one_error_line(tiny_folder, gptq_yaml, tmp_path, cli):
    res = cli("quantize", str(tiny_folder), "-c", str(gptq_yaml), "-o", str(tmp_path / "x"), "--max-memory", "50KB")
    assert res.returncode != 0
    assert res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    assert "one transformer block needs" in res.stderr
