"""ReconstructConfig as a technique: through ``distill_`` and as a recipe stage, on a quantized and on a
structurally pruned student, recorded in the history; refused without a teacher."""
from __future__ import annotations

import copy

import pytest
import torch

import torchslim
from torchslim import ReconstructConfig, StructuredConfig
from torchslim.core.errors import ConfigError
from torchslim.quantization import IntFormat, PerGroup, QuantLinear, WeightOnlyConfig
from torchslim.recipes import RunOptions, run_recipe
from torchslim.recipes.recipe import Recipe
from torchslim.zoo.tiny import tiny_llama

FAST = ReconstructConfig(steps=20, n_samples=8, batch_size=2, lr=1e-3, quantizer_lr=1e-2)


def _stage(model) -> dict:
    from torchslim.core.state import state_of

    return [h for h in state_of(model).history if h.name == "ReconstructConfig"][-1].to_dict()


def test_a_quantized_student_learns_its_teachers_blocks_and_stays_packed() -> None:
    lm = tiny_llama(0)
    teacher = copy.deepcopy(lm.model).eval()
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(3, symmetric=False), granularity=PerGroup(32)))
    torchslim.distill_(lm.model, FAST, task=lm.task, teacher=teacher)
    rec = _stage(lm.model)
    assert rec["details"]["blocks_trained"] == 2 and len(rec["details"]["blocks"]) == 2
    assert rec["metrics"]["block_error_after"] < rec["metrics"]["block_error_before"]
    assert sum(isinstance(m, QuantLinear) for m in lm.model.modules()) == 15       # 14 in blocks + the head


def test_a_structurally_pruned_student_trains_its_smaller_float_layers() -> None:
    lm = tiny_llama(0)
    teacher = copy.deepcopy(lm.model).eval()
    torchslim.prune_(lm.model, StructuredConfig(targets=["neurons"], ratio=0.5, importance="magnitude_l2"))
    width = lm.model.model.layers[0].mlp.up_proj.out_features
    torchslim.distill_(lm.model, FAST, task=lm.task, teacher=teacher)
    rec = _stage(lm.model)
    assert rec["metrics"]["block_error_after"] < 0.9 * rec["metrics"]["block_error_before"]
    assert lm.model.model.layers[0].mlp.up_proj.out_features == width       # the architecture is the student's


def test_without_a_teacher_it_is_refused_in_one_line() -> None:
    lm = tiny_llama(0)
    with pytest.raises(ConfigError, match="needs the uncompressed model as teacher"):
        torchslim.distill_(lm.model, FAST, task=lm.task)


@pytest.mark.slow
def test_a_recipe_stage_reconstructs_against_the_uncompressed_model(tmp_path) -> None:
    recipe = Recipe.from_dict({"recipe": "t", "stages": [
        {"quantize": {"_type": "WeightOnlyConfig", "format": {"_type": "IntFormat", "bits": 3, "symmetric": False},
                      "granularity": {"_type": "PerGroup", "size": 32}}},
        {"distill": {"_type": "ReconstructConfig", "steps": 30, "n_samples": 8, "lr": 1e-3, "quantizer_lr": 1e-2,
                     "checkpoint_dir": "blocks"}}]})
    result = run_recipe(recipe, "tiny-llama", tmp_path / "out", RunOptions(report=False, max_steps=5))
    rec = _stage(result.model)
    assert rec["config"]["_data"]["steps"] == 5                                # --max-steps caps steps per block
    assert [r["steps"] for r in rec["details"]["blocks"]] == [5, 5]
    assert (tmp_path / "out" / "blocks" / "progress.json").is_file()  # inside the run's folder
    again = torchslim.load(tmp_path / "out")
    ids = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, result.model(ids).logits, atol=1e-5)
