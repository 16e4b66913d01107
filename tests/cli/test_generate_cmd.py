"""`torchslim generate` states load, compile, time to first token and decode speed apart (compile is never counted
as decode time); no timing is asserted, only the fields and their sum."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchslim.cli.generate_cmd import rate, rate_text, timing_line
from torchslim.runtime.decode import DecodeTiming

EXE = str(Path(sys.executable).with_name("torchslim"))


def _generate(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "g.json"
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "200"}
    res = subprocess.run([EXE, "generate", "tiny-llama", "-p", "Hello there", "-n", "6", "--json", str(out), *extra],
                         capture_output=True, text=True, env=env, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(out.read_text()), res.stdout


def _check_fields(summary: dict) -> None:
    parts = ("load_s", "compile_s", "first_token_s", "decode_s")
    assert all(isinstance(summary[k], float) and summary[k] >= 0 for k in parts)
    assert summary["total_s"] == pytest.approx(sum(summary[k] for k in parts))
    assert summary["new_tokens"] >= 1 and summary["prompt_tokens"] >= 1
    assert summary["decode_tokens_per_s"] is None or summary["decode_tokens_per_s"] > 0


def test_a_rate_is_printed_only_where_it_was_timed_and_never_rounds_to_zero() -> None:
    assert rate(5, 0.0) is None and rate(5, 2e-4) is None and rate(0, 1.0) is None
    assert rate_text(rate(5, 20.0)) == "0.25 tok/s" and rate_text(rate(5, 0.6)) == "8.3 tok/s"
    assert rate_text(rate(1329, 1.0)) == "1329 tok/s" and rate_text(None) == "too short to time"
    untimed = timing_line(DecodeTiming(prompt_tokens=1, new_tokens=1, prefill_s=0.0, decode_s=0.0), 2.0, None, "fp32")
    assert "0 tok/s" not in untimed and "too short to time" in untimed and "no step after the first token" in untimed
    slow = timing_line(DecodeTiming(prompt_tokens=5, new_tokens=30, prefill_s=12.0, decode_s=29.0), 7.3, 1.5, "bf16")
    assert "0.42 tok/s" in slow and "decode 1.0 tok/s" in slow and "compile 1.5 s" in slow and "12000 ms" in slow
    assert "30 new tokens, bf16 activations, compiled:" in slow      # the activations' dtype, not the weights'


def test_eager_generation_reports_each_part(tmp_path) -> None:
    summary, stdout = _generate(tmp_path)
    _check_fields(summary)
    assert summary["compiled"] is False and summary["compile_s"] == 0.0
    assert "load " in stdout and "first token" in stdout and "compile" not in stdout and " 0 tok/s" not in stdout


@pytest.mark.slow
def test_compile_time_is_reported_apart_from_decode(tmp_path) -> None:
    summary, stdout = _generate(tmp_path, "--compile")
    _check_fields(summary)
    assert summary["compiled"] is True and summary["compile_s"] > 0
    assert "compile " in stdout and "decode " in stdout
