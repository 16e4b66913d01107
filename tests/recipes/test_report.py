"""The run report's side-by-side speed: timed interleaved, with progress lines between calls off a terminal."""
from __future__ import annotations

import torch
from torch import nn

from torchslim.recipes.report import interleaved_speed


class _Task:
    """Two token-shaped inputs and a generating loop that costs nothing: enough for interleaved timing."""

    supports_decode = True

    def example_inputs(self, batch: int, seq: int | None) -> dict:
        return {"x": torch.randn(batch * (seq or 1), 4)}

    def forward(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        return model(inputs["x"])

    def decode(self, model: nn.Module, new_tokens: int):
        from torchslim.tasks.base import DecodeStats

        return DecodeStats(prompt_tokens=2, new_tokens=new_tokens, prefill_s=0.01, decode_s=0.1, tokens_per_s=10.0)


def test_progress_lines_count_tokens_then_decode_runs(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "lines")
    monkeypatch.setenv("TORCHSLIM_PROGRESS_EVERY", "0")
    models = {"base": nn.Linear(4, 4), "final": nn.Linear(4, 4)}
    out = interleaved_speed(models, _Task(), [(1, 8), (2, 8)], warmup=1, iters=2, decode_tokens=4)
    assert [s.batch for s in out["final"].shapes] == [1, 2] and out["base"].decode.decode_tokens_per_s == 10.0
    err = capsys.readouterr().err.splitlines()
    timing = [ln for ln in err if "timing 2 models interleaved" in ln]
    assert timing[0].startswith("[torchslim] timing 2 models interleaved 0/144 tokens")   # (8 + 16) * 3 * 2
    assert timing[-1].startswith("[torchslim] timing 2 models interleaved 144/144 tokens 2x8")
    assert len(timing) == 1 + 12                                                           # a line per call
    decode = [ln for ln in err if "timing decode (4 tokens)" in ln]
    assert decode[-1].startswith("[torchslim] timing decode (4 tokens) 6/6 runs final")
