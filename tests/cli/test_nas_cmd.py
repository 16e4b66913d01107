import json

import pytest

import torchslim
from tests.cli.conftest import run_verb, short_text


def _run(capsys, *args):
    return run_verb(capsys, "nas", *args)


def test_nas_writes_the_trials_and_the_chosen_model(tmp_path, capsys):
    out = tmp_path / "n"
    code, stdout, err = _run(capsys, "tiny-llama", "-o", out, "--min-speedup", "0.5", "--shape", "1x32", "-n", "3",
                             "--recover", "1", "--steps", "2", *short_text(tmp_path))
    assert code in (0, None), err
    doc = json.loads((out / "trials.json").read_text())
    assert len(doc["trials"]) == 3 and doc["best"] is not None and "chosen:" in stdout
    model = torchslim.load(out / "model")
    assert sum(p.numel() for p in model.parameters()) == doc["trials"][doc["best"]]["params"]


@pytest.mark.parametrize("args,words", [
    ([], "give a constraint"),
    (["--max-params-ratio", "1.5"], "--max-params-ratio"),
    (["--max-params-ratio", "0"], "--max-params-ratio"),
    (["--max-params-ratio", "abc"], "--max-params-ratio"),
    (["--max-params", "-5"], "--max-params"),
    (["--min-speedup", "2", "--shape", "x12"], "--shape"),
    (["--min-speedup", "2", "--min-depth", "1.5"], "min_depth"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, words):
    code, _, err = _run(capsys, "tiny-llama", "-o", tmp_path / "o", *args)
    lines = [ln for ln in err.splitlines() if not ln.startswith("[torchslim]")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err


def test_nas_under_a_parameter_ratio_alone(tmp_path, capsys):
    out = tmp_path / "n"
    code, stdout, err = _run(capsys, "tiny-llama", "-o", out, "--max-params-ratio", "0.8", "-n", "3",
                             "--recover", "1", "--steps", "2", *short_text(tmp_path))
    assert code in (0, None), err
    doc = json.loads((out / "trials.json").read_text())
    assert doc["param_budget"] == int(0.8 * doc["base_params"]) and len(doc["trials"]) == 3
    assert all(t["params"] <= doc["param_budget"] and t["latency_ms"] is None for t in doc["trials"])
    model = torchslim.load(out / "model")
    assert sum(p.numel() for p in model.parameters()) <= doc["param_budget"]
    assert "Parameter budget: 3 of the" in stdout
