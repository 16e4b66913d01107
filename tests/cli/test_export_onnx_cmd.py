"""``torchslim export onnx``: example inputs from --shape / --input; bad ones are one ``error:`` line, exit 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.exports import example_inputs_from

EXE = str(Path(sys.executable).with_name("torchslim"))


def run(*args):
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "240"}
    return subprocess.run([EXE, *args], check=False, capture_output=True, text=True, env=env, timeout=300)


def test_shapes_and_named_inputs_become_example_tensors() -> None:
    (x,) = example_inputs_from(["1x3x32x32"], None)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    named = example_inputs_from(None, ["input_ids=2x16:int64", "scale=2"])
    assert named["input_ids"].dtype == torch.long and named["input_ids"].shape == (2, 16)
    assert named["scale"].dtype == torch.float32 and named["scale"].shape == (2,)
    assert example_inputs_from(None, None) is None


@pytest.mark.parametrize("shapes, inputs", [(["1xa"], None), (["0x3"], None), (None, ["ids"]),
                                            (None, ["ids=2x3:complex"]), (["1x3"], ["a=1"])])
def test_bad_input_specs_are_config_errors(shapes, inputs) -> None:
    with pytest.raises(ConfigError):
        example_inputs_from(shapes, inputs)


def test_cli_bad_shape_is_one_error_line(tmp_path, cli) -> None:
    res = cli("export", "onnx", "no-such-model", "-o", str(tmp_path / "m.onnx"), "--shape", "1xa")
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "1xa" in lines[0], res.stderr
