import json
import os
import subprocess
import sys
from pathlib import Path

EXE = str(Path(sys.executable).with_name("torchslim"))


def run(*args):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "240"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_sensitivity_writes_the_table_json_and_heat_map(tmp_path):
    res = run("sensitivity", "tiny-llama", "-a", "int8,int2g32", "--granularity", "block", "-o", str(tmp_path / "s"))
    assert res.returncode == 0, res.stderr
    assert "int2g32 cost" in res.stdout and "model.layers.0" in res.stdout
    doc = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert doc["actions"] == ["int8", "int2g32"] and len(doc["rows"]) == 3
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 2000
    assert "[torchslim] loading tiny-llama" in res.stderr


def test_bad_input_is_one_error_line_before_any_model_is_loaded(tmp_path):
    (tmp_path / "f").write_text("x")
    for args, fragment in ((["-a", "int9"], "unknown action 'int9'"), (["--granularity", "row"], "granularity"),
                           (["-o", str(tmp_path / "f")], "not a folder")):
        full = ["sensitivity", "tiny-llama", *args] + ([] if "-o" in args else ["-o", str(tmp_path / "o")])
        res = run(*full)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and fragment in lines[0], res.stderr
    assert not (tmp_path / "o").exists()
