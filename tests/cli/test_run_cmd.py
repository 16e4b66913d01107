"""`torchslim run`, `torchslim recipes list|show`, and `torchslim info` showing the history."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXE = str(Path(sys.executable).with_name("torchslim"))


def run(*args, columns=240):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": str(columns)}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow   # 19 s; every shipped recipe still runs on tiny-llama in tests/recipes by default
def test_recipes_list_and_show_give_runnable_templates(tmp_path):
    listed = run("recipes", "list")
    assert listed.returncode == 0 and "sparse50-int8" in listed.stdout and "structured25-recover" in listed.stdout
    narrow = run("recipes", "list", columns=80)      # a log or a small terminal: descriptions wrap, none cut off
    assert narrow.returncode == 0 and "…" not in narrow.stdout
    shown = run("recipes", "show", "sparse50-int8")
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["recipe"] == "sparse50-int8"
    (tmp_path / "mine.yaml").write_text(shown.stdout.replace("sparsity: 0.5", "sparsity: 0.25"))
    res = run("run", str(tmp_path / "mine.yaml"), "-m", "tiny-llama", "-o", str(tmp_path / "o"), "--iters", "3",
              "--decode-tokens", "4", "--shape", "1x32")
    assert res.returncode == 0, res.stderr
    assert "stage 4/4" in res.stdout and "uncompressed (baseline)" in res.stdout and "@ batch 1, 32 tokens" in res.stdout
    info = run("info", str(tmp_path / "o"))
    assert info.returncode == 0, info.stderr
    lines = info.stdout
    for expected in ("history (5 stages)", "0. evaluate: baseline (uncompressed)", "1. pruning: UnstructuredConfig",
                     "3. quantization: WeightOnlyConfig", "SparseQuantLinear"):
        assert expected in lines, (expected, lines)


def test_run_errors_are_one_line(tmp_path, cli):
    for args, needle in ((("run", "nope", "-m", "tiny-llama", "-o", str(tmp_path / "a")), "unknown recipe 'nope'"),
                         (("run", "int8-weight-only", "-m", "no-such-model", "-o", str(tmp_path / "b")), "unknown model"),
                         (("recipes", "show", "nope"), "unknown recipe")):
        res = cli(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert [ln for ln in res.stderr.splitlines() if ln.startswith("error:")][0].count(needle.split("'")[0]) >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - prune: {_type: StructuredConfig, ratoi: 0.2}\n")
    res = cli("run", str(bad), "-m", "tiny-llama", "-o", str(tmp_path / "c"))
    assert res.returncode == 2 and "stage 1 (prune): unknown key 'ratoi' for StructuredConfig" in res.stderr
    assert not (tmp_path / "c").exists()


def test_info_of_a_format_1_artifact_says_it_has_no_history():
    res = run("info", str(Path(__file__).parents[1] / "artifact" / "fixtures" / "v1-tiny-llama-pruned-int8"))
    assert res.returncode == 0 and "history: none recorded (format v1 artifact)" in res.stdout
