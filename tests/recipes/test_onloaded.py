"""A recipe run over --max-memory: its post-training stages onloaded, the final artifact evaluated by streaming."""
from __future__ import annotations

import pytest

import torchslim
from torchslim.core.errors import TorchSlimError
from torchslim.core.io import sha256
from torchslim.recipes import Recipe, RunOptions, load_recipe, run_recipe


def _recipe(tmp_path, body: str) -> Recipe:
    path = tmp_path / "r.yaml"
    path.write_text(body)
    return load_recipe(str(path))


WANDA = """recipe: wanda
stages:
  - evaluate: {label: before}
  - prune: {_type: UnstructuredConfig, sparsity: 0.5, importance: wanda, n_samples: 2}
  - evaluate: {label: after}
"""


@pytest.fixture()
def tiny_hf(tmp_path):
    from torchslim.zoo.tiny import tiny_llama

    lm = tiny_llama(num_hidden_layers=2, max_position_embeddings=64)
    lm.model.save_pretrained(tmp_path / "hf")
    lm.tokenizer.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_recipe_post_training_stages_run_onloaded(tiny_hf, tmp_path):
    rec = _recipe(tmp_path, WANDA)
    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12)     # 8 windows of 64 bytes
    data = {"eval_data": text}
    onl = run_recipe(rec, str(tiny_hf), tmp_path / "onl", RunOptions(max_memory="300KB", speed=False, data=data))
    assert onl.onloaded and "final" in onl.report and "before" in onl.report["skipped"][0]
    ref = run_recipe(rec, str(tiny_hf), tmp_path / "ref", RunOptions(report=False, data=data))
    assert not ref.onloaded
    assert sha256(tmp_path / "onl" / "model.safetensors") == sha256(tmp_path / "ref" / "model.safetensors")
    perplexity = ref.task.evaluate(torchslim.load(tmp_path / "ref"))["perplexity"]
    assert onl.report["final"]["perplexity"] == perplexity


def test_a_training_stage_cannot_run_onloaded(tiny_hf, tmp_path):
    rec = _recipe(tmp_path, WANDA + "  - finetune: {_type: FinetuneConfig, train: {steps: 1}}\n")
    with pytest.raises(TorchSlimError, match="trains the whole model"):
        run_recipe(rec, str(tiny_hf), tmp_path / "x", RunOptions(max_memory="300KB"))
