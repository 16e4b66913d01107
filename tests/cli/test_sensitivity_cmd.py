import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("torchslim"))


def run(*args):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "240"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.mark.slow      # ~10 s: a CLI sensitivity scan (the default suite stays under 10 minutes on 2 cores)
def test_sensitivity_writes_the_table_json_and_heat_map(tmp_path):
    res = run("sensitivity", "tiny-llama", "-a", "int8,int2g32", "--granularity", "block", "-o", str(tmp_path / "s"))
    assert res.returncode == 0, res.stderr
    assert "int2g32 cost" in res.stdout and "model.layers.0" in res.stdout
    doc = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert doc["actions"] == ["int8", "int2g32"] and len(doc["rows"]) == 3
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 2000
    assert "[torchslim] loading tiny-llama" in res.stderr


def test_bad_input_is_one_error_line_before_any_model_is_loaded(tmp_path, cli):
    (tmp_path / "f").write_text("x")
    for args, fragment in ((["-a", "int9"], "unknown action 'int9'"), (["--granularity", "row"], "granularity"),
                           (["-o", str(tmp_path / "f")], "not a folder")):
        full = ["sensitivity", "tiny-llama", *args] + ([] if "-o" in args else ["-o", str(tmp_path / "o")])
        res = cli(*full)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and fragment in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow          # three end-to-end evaluations of tiny-llama's 274 windows in a subprocess
def test_tune_writes_a_recipe_that_run_accepts(tmp_path):
    assert run("sensitivity", "tiny-llama", "-a", "int8,int4g32", "--granularity", "block", "--samples", "2",
               "-o", str(tmp_path / "s")).returncode == 0
    res = run("tune", "tiny-llama", "--scan", str(tmp_path / "s" / "sensitivity.json"), "--budget", "5%",
              "--max-evals", "2", "-o", str(tmp_path / "t.yaml"))
    assert res.returncode == 0, res.stderr
    assert "within the budget" in res.stdout and (tmp_path / "t.yaml").is_file()
    from torchslim.recipes import Recipe

    stages = Recipe.load(tmp_path / "t.yaml").stages           # what `torchslim run t.yaml` reads
    assert [type(s).__name__ for s in stages][-1] == "EvaluateStage" and len(stages) >= 2


def test_tune_input_errors_are_one_line_before_any_model_is_loaded(tmp_path, cli):
    from torchslim.search import Sensitivity, save

    save(Sensitivity("kl", "layer", [], [], 0.0, 0), tmp_path / "s")
    scan = str(tmp_path / "s" / "sensitivity.json")
    for args, fragment in ((["--budget", "lots", "-o", str(tmp_path / "u.yaml")], "budget"),
                           (["--budget", "1%", "-o", str(tmp_path / "t.txt")], "recipe file"),
                           (["--budget", "1%", "-o", str(tmp_path / "u.yaml"), "--scan", str(tmp_path / "no.json")],
                            "not found")):
        bad = cli("tune", "tiny-llama", *(["--scan", scan] if "--scan" not in args else []), *args)
        lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
        assert bad.returncode == 2 and len(lines) == 1 and fragment in lines[0], bad.stderr
