"""`torchslim generate` states load, compile, time to first token and decode speed apart (compile is never counted
as decode time); no timing is asserted, only the fields and their sum."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("torchslim"))


def _generate(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "g.json"
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "200"}
    res = subprocess.run([EXE, "generate", "tiny-llama", "-p", "Hello there", "-n", "6", "--json", str(out), *extra],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(out.read_text()), res.stdout


def _check_fields(summary: dict) -> None:
    parts = ("load_s", "compile_s", "first_token_s", "decode_s")
    assert all(isinstance(summary[k], float) and summary[k] >= 0 for k in parts)
    assert summary["total_s"] == pytest.approx(sum(summary[k] for k in parts))
    assert summary["new_tokens"] >= 1 and summary["prompt_tokens"] >= 1 and summary["decode_tokens_per_s"] > 0


def test_eager_generation_reports_each_part(tmp_path) -> None:
    summary, stdout = _generate(tmp_path)
    _check_fields(summary)
    assert summary["compiled"] is False and summary["compile_s"] == 0.0
    assert "load " in stdout and "first token" in stdout and "compile" not in stdout


@pytest.mark.slow
def test_compile_time_is_reported_apart_from_decode(tmp_path) -> None:
    summary, stdout = _generate(tmp_path, "--compile")
    _check_fields(summary)
    assert summary["compiled"] is True and summary["compile_s"] > 0
    assert "compile " in stdout and "decode " in stdout
