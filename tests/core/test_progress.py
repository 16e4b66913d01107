"""Progress shows in every context: a bar on a terminal, lines when stderr is a file, nothing when switched off."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchslim.core import progress as P


@pytest.mark.parametrize("value, expected", [("off", "off"), ("0", "off"), ("lines", "lines"), ("bar", "bar"),
                                             ("1", "bar"), ("nonsense", "lines"), ("auto", "lines")])
def test_mode_from_the_one_switch(monkeypatch, value, expected) -> None:
    monkeypatch.setenv("TORCHSLIM_PROGRESS", value)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert P.mode() == expected


def test_lines_name_the_step_count_and_time_left(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "lines")
    monkeypatch.setenv("TORCHSLIM_PROGRESS_EVERY", "0")
    items = [(f"layer.{i}", i) for i in range(3)]
    assert [i for _, i in P.track(items, "GPTQ")] == [0, 1, 2]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("[torchslim] GPTQ 0/3") and "elapsed" in lines[0]
    assert any(line.startswith("[torchslim] GPTQ 1/3 layer.0") and "left" in line for line in lines)
    assert lines[-1].startswith("[torchslim] GPTQ 3/3 layer.2")


def test_lines_are_throttled(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "lines")
    monkeypatch.setenv("TORCHSLIM_PROGRESS_EVERY", "3600")
    list(P.track(range(50), "work"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[torchslim] work 0/50") and "50/50" in lines[1]


def test_off_prints_nothing(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "off")
    assert list(P.track(range(5), "work")) == list(range(5))
    with P.Progress("train", 4, unit="steps") as bar:
        bar.update(4, note="loss=1")
    assert capsys.readouterr().err == ""


def test_user_text_is_not_markup(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "bar")
    list(P.track([("[/]x[link=file:///etc]", 1)], "[bold]q"))     # rich would raise on a stray [/]
    err = capsys.readouterr().err
    assert "[bold]q" in err


def test_a_script_with_stderr_in_a_file_gets_progress_lines(tmp_path: Path) -> None:
    """The README's situation: a long operation run as a script, output redirected to a file."""
    script = tmp_path / "job.py"
    script.write_text(
        "import torchslim\n"
        "from torchslim.quantization import GPTQConfig, WeightOnlyConfig, IntFormat, PerGroup\n"
        "lm = torchslim.load_model('tiny-llama')\n"
        "w = WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32),\n"
        "                     selector=torchslim.Selector(exclude=('lm_head',)))\n"
        "torchslim.quantize_(lm.model, GPTQConfig(weight=w, n_samples=4), calibration=lm.task)\n"
        "torchslim.finetune_(lm.model, torchslim.FinetuneConfig(train=torchslim.TrainConfig(steps=3, batch_size=1)),\n"
        "                    task=lm.task)\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHSLIM_PROGRESS"}
    env["TORCHSLIM_PROGRESS_EVERY"] = "0"
    with open(tmp_path / "err.log", "w") as err:
        done = subprocess.run([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=err, env=env,
                              timeout=600)
    text = (tmp_path / "err.log").read_text()
    assert done.returncode == 0, text[-2000:]
    lines = [line for line in text.splitlines() if line.startswith("[torchslim] ")]
    assert any(" GPTQ " in line and "/" in line for line in lines), text[-2000:]
    assert any(line.startswith("[torchslim] train 3/3 steps") for line in lines), text[-2000:]


def test_heartbeat_speaks_during_one_long_call(monkeypatch, capsys) -> None:
    """A single long call (an ONNX trace) prints on entry, periodically while it runs, and on exit."""
    import time

    monkeypatch.setenv("TORCHSLIM_PROGRESS", "lines")
    monkeypatch.setenv("TORCHSLIM_PROGRESS_EVERY", "0.05")
    with P.heartbeat("ONNX export 1/1: tracing model.onnx"):
        time.sleep(0.6)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "[torchslim] ONNX export 1/1: tracing model.onnx"
    assert sum(line.endswith("elapsed") for line in lines) >= 2            # beats while the call ran
    assert "done in" in lines[-1]


def test_heartbeat_and_announce_are_silent_when_off(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "off")
    with P.heartbeat("work"):
        P.announce("quality of the model")
    assert capsys.readouterr().err == ""


def test_a_stage_off_a_terminal_beats_on_its_console(monkeypatch) -> None:
    """A command's stage (a model load, a compile) keeps printing on its own console in a log; a timed stage
    (spinner=False) prints once and starts no thread."""
    import io
    import threading
    import time

    from rich.console import Console

    monkeypatch.setenv("TORCHSLIM_PROGRESS", "auto")
    monkeypatch.setenv("TORCHSLIM_PROGRESS_EVERY", "0.05")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    with P.stage(console, "compiling the decode step"):
        time.sleep(0.4)
    lines = console.file.getvalue().splitlines()
    assert lines[0] == "[torchslim] compiling the decode step"
    assert sum("elapsed" in line for line in lines) >= 2 and "done in" in lines[-1]
    console = Console(file=io.StringIO(), width=200, color_system=None)
    with P.stage(console, "timing", spinner=False):
        assert not any(t.name == "torchslim-heartbeat" for t in threading.enumerate())
        time.sleep(0.2)
    assert console.file.getvalue().splitlines() == ["[torchslim] timing"]
