"""`torchslim prune`: config file in, smaller artifact out, plain notes on speed, one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchslim
from torchslim.pruning import StructuredConfig, UnstructuredConfig

EXE = str(Path(sys.executable).with_name("torchslim"))


def run(*args):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "240"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow      # ~8 s: prune + recovery in a CLI process (the default suite stays under 10 minutes on 2 cores)
def test_structured_prune_with_recovery_writes_a_smaller_artifact(tmp_path):
    cfg = tmp_path / "s.yaml"
    StructuredConfig(targets=("heads", "neurons"), ratio=0.5).save(cfg)
    res = run("prune", "tiny-llama", "-c", str(cfg), "-o", str(tmp_path / "a"), "--recover-steps", "2")
    assert res.returncode == 0, res.stderr
    assert "recovery fine-tuning: 2 steps" in res.stdout and "parameters" in res.stdout
    loaded = torchslim.load_model(str(tmp_path / "a"))
    dense = torchslim.load_model("tiny-llama")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(loaded.model) < 0.8 * n(dense.model)
    assert loaded.model.config.torchslim_layer_sizes[0]["intermediate_size"] == 64


def test_unstructured_prune_says_when_there_is_no_speed_gain(tmp_path):
    cfg = tmp_path / "u.json"
    UnstructuredConfig(sparsity=0.5).save(cfg)
    res = run("prune", "tiny-llama", "-c", str(cfg), "-o", str(tmp_path / "u"), "--no-eval")
    assert res.returncode == 0, res.stderr
    assert "no speed gain" in res.stdout and "bitmask" in res.stdout


def test_prune_user_errors_are_one_line(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_type: UnstructuredConfig\n_data: {sparsity: 1.5}\n")
    res = cli("prune", "tiny-llama", "-c", str(bad), "-o", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("error:")][0].count("sparsity") == 1
    assert not (tmp_path / "o").exists()


def test_a_killed_prune_is_continued_with_the_resume_flag_its_error_names(tmp_path, cli):
    """A prune killed mid-run leaves its run state; the error said 'pass --resume', which prune did not have."""
    cfg = tmp_path / "u.json"
    UnstructuredConfig(sparsity=0.5).save(cfg)
    out = tmp_path / "u"
    (out / ".torchslim-run").mkdir(parents=True)
    (out / ".torchslim-run" / "run.json").write_text("{}")            # what a kill at the wrong moment can leave
    res = cli("prune", "tiny-llama", "-c", str(cfg), "-o", str(out), "--no-eval")
    assert res.returncode == 2 and "pass --resume" in res.stderr
    res = cli("prune", "tiny-llama", "-c", str(cfg), "-o", str(out), "--no-eval", "--resume")
    assert res.returncode == 0, res.stderr
    assert "starting over" in res.stderr and (out / "manifest.json").is_file()
