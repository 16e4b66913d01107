"""Perplexity by block streaming equals the in-memory evaluation, for float, quantized and sparse artifacts."""
from __future__ import annotations

import pytest

import torchslim
from torchslim.scale.stream_eval import stream_perplexity


@pytest.fixture(scope="module")
def float_artifact(tiny_folder, tmp_path_factory):
    loaded = torchslim.load_model(str(tiny_folder))
    return torchslim.save(loaded.model, tmp_path_factory.mktemp("float") / "a", source=loaded.source)


@pytest.mark.parametrize("which", ["float_artifact", "gptq_ref", "wanda_ref"])
def test_streamed_perplexity_equals_in_memory(which, request, tmp_path):
    path = request.getfixturevalue(which)
    loaded = torchslim.load_model(str(path))
    loaded.task.max_eval_windows = 4
    loaded.task.eval_batch_size = 2
    ref = loaded.task.evaluate(loaded.model)
    got, stats = stream_perplexity(path, loaded.task, cache_memory="1KB", work=tmp_path)
    assert got == ref                                          # the same hidden states, the task's own loss
    assert stats.blocks == 3 and stats.batches == 2 and stats.spilled_bytes > 0
    assert "reading weights" in stats.line() and not list(tmp_path.iterdir())   # spilled files removed
