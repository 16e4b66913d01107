import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchslim.search.report import save
from tests.cli.conftest import run_verb, short_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    from torchslim.search import parse_actions, sensitivity
    from torchslim.zoo.tiny import tiny_llama

    lm = tiny_llama(seed=0)
    s = sensitivity(lm.model, lm.task, parse_actions("int8,int2g32"), granularity="block", measure="block")
    return save(s, tmp_path_factory.mktemp("scan"))["json"]


def _run(capsys, *args):
    return run_verb(capsys, "search", *args)


def test_search_writes_the_front_its_recipes_and_a_study_that_continues(scan_file, tmp_path, capsys):
    out = tmp_path / "s"
    data = short_text(tmp_path)
    code, stdout, err = _run(capsys, "tiny-llama", "--scan", scan_file, "-o", out, "-n", "3", "--no-latency", *data)
    assert code == 0, err
    doc = json.loads((out / "front.json").read_text())
    assert len(doc["points"]) == 3 and doc["front"] and (out / "study.db").is_file() and (out / "front.png").is_file()
    assert "Pareto front" in stdout and "recipe(s)" in stdout
    code, _, err = _run(capsys, "tiny-llama", "--scan", scan_file, "-o", out, "-n", "2", "--no-latency", *data)
    assert code == 0, err
    assert len(json.loads((out / "front.json").read_text())["points"]) == 5


@pytest.mark.parametrize("args,words", [
    (["--shape", "x12"], "--shape"),
    (["--max-loss", "lots"], "budget"),
    (["--scan", "/nonexistent/scan.json"], "scan.json"),
])
def test_bad_input_is_one_error_line(scan_file, tmp_path, capsys, args, words):
    base = ["tiny-llama", "--scan", scan_file, "-o", tmp_path / "o", "-n", "1", "--no-latency"]
    code, _, err = _run(capsys, *base, *args)
    lines = [ln for ln in err.splitlines() if not ln.startswith("[torchslim]")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err


@pytest.mark.slow
def test_two_processes_share_one_study_with_no_lost_or_duplicated_trial(scan_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "torchslim.cli.main", "search", "tiny-llama", "--scan", str(scan_file), "--no-latency",
           "-n", "4", "--storage", url, "--study", "shared", *short_text(tmp_path)]
    procs = [subprocess.Popen(cmd + ["-o", str(tmp_path / f"p{i}"), "--seed", str(i)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    import optuna

    study = optuna.load_study(study_name="shared", storage=url)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(8))                               # none lost, none twice
    assert all(t.state.is_finished() for t in study.trials)
    assert len({t._trial_id for t in study.trials}) == 8
