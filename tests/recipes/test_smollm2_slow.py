"""`torchslim run` on the real SmolLM2-135M (slow: `make test-slow`); every shipped recipe runs in the
benchmark (benchmarks/recipes/smollm2.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("torchslim"))


@pytest.mark.slow
def test_int8_weight_only_recipe_on_smollm2(tmp_path):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "200"}
    res = subprocess.run([EXE, "run", "int8-weight-only", "-m", "smollm2-135m", "-o", str(tmp_path / "o"),
                          "--iters", "3", "--decode-tokens", "8", "--shape", "1x128"],
                         capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    base = report["baseline"]["quality"]["metrics"]["perplexity"]
    final = report["final"]["quality"]["metrics"]["perplexity"]
    assert final < base * 1.02                                   # int8 per channel is near-lossless
    assert report["final"]["size"]["artifact_bytes"] < 0.5 * report["baseline"]["size"]["artifact_bytes"]
