"""Recipes: typed stages, YAML/JSON round trip, one-line errors naming the stage and key, shipped recipes."""
import pytest

from torchslim.core.errors import ConfigError
from torchslim.quantization import GPTQConfig
from torchslim.recipes import ApplyStage, EvaluateStage, Recipe, SaveStage, TrainStage, load_recipe, preset_names

TEXT = """
recipe: mine
description: test
stages:
  - prune: {_type: UnstructuredConfig, sparsity: 0.5}
  - train: {steps: 3, lr: 1.0e-4}
  - quantize: {_type: WeightOnlyConfig, format: {_type: IntFormat, bits: 8}, granularity: {_type: PerChannel}}
  - evaluate: {label: final}
  - save: {path: int8}
  - checkpoint: {}
"""


def test_a_recipe_file_parses_into_typed_stages_and_round_trips(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(TEXT)
    r = Recipe.load(path)
    kinds = [type(s).__name__ for s in r.stages]
    assert kinds == ["PruneStage", "TrainStage", "QuantizeStage", "EvaluateStage", "SaveStage", "CheckpointStage"]
    assert r.stages[1].config.train.steps == 3 and r.stages[3].label == "final" and r.stages[4].path == "int8"
    for suffix in (".yaml", ".json"):
        r.save(tmp_path / f"again{suffix}")
        again = Recipe.load(tmp_path / f"again{suffix}")
        assert again.to_dict() == r.to_dict() and again.fingerprint() == r.fingerprint()


@pytest.mark.parametrize("stages,match", [
    ("  - prune: {_type: UnstructuredConfig, sparsty: 0.5}", "stage 1 \\(prune\\): unknown key 'sparsty' for UnstructuredConfig"),
    ("  - train: {steps: 0}", "stage 1 \\(train\\).*TrainConfig.steps must be between 1"),
    ("  - quantize: {_type: UnstructuredConfig}", "stage 1 \\(quantize\\).*pruning config, not for a 'quantize'"),
    ("  - compress: {}", "stage 1: unknown stage 'compress'; known: apply, attention, checkpoint, distill, early_exit, evaluate"),
    ("  - evaluate: {}\n    save: {}", "stage 1: a stage is a mapping with one key"),
    ("  - save: {path: ../outside}", "stage 1 \\(save\\): save.path must stay inside the output folder"),
    ("  - save: {path: a/b}", "stage 1 \\(save\\): save.path must be one folder name .*not nested"),
    ("  - save: {path: report.md}", "stage 1 \\(save\\): save.path 'report.md' is reserved"),
    ("  - quantize: {_type: GPTQConfig, weight: {granularity: {_type: PerGroup, size: 0}}}",
     "stage 1 \\(quantize\\): .*GPTQConfig.weight.granularity.*size"),
])
def test_errors_name_the_stage_and_the_key(tmp_path, stages, match):
    path = tmp_path / "bad.yaml"
    path.write_text(f"recipe: bad\nstages:\n{stages}\n")
    with pytest.raises(ConfigError, match=match):
        Recipe.load(path)


def test_top_level_errors(tmp_path):
    for text, match in (("stages: []", "non-empty list"), ("recipe: x\nstagse: []", "unknown key 'stagse'"),
                        ("version: 7\nstages: [{evaluate: {}}]", "recipe version 7"), ("- a", "mapping")):
        (tmp_path / "r.yaml").write_text(text)
        with pytest.raises(ConfigError, match=match):
            Recipe.load(tmp_path / "r.yaml")


def test_shipped_recipes_parse_and_cover_the_main_jobs():
    names = preset_names()
    for required in ("int8-weight-only", "w8a8-smoothquant", "int4-gptq", "sparse50-int8", "structured25-recover"):
        assert required in names
    for n in names:
        r = load_recipe(n)
        assert r.name == n and r.description and Recipe.from_dict(r.to_dict()).to_dict() == r.to_dict()
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; shipped recipes: "):
        load_recipe("nope")


def test_stages_built_in_python():
    r = Recipe("py", "", [ApplyStage(GPTQConfig(), "quantize"), TrainStage.from_body({"steps": 2}, "t"),
                          EvaluateStage(), SaveStage("sub")])
    assert [s.describe() for s in r.stages][:2] == ["quantize GPTQConfig", "train 2 steps (lr 0.001, batch 32)"]
    assert Recipe.from_dict(r.to_dict()).fingerprint() == r.fingerprint()
    with pytest.raises(ConfigError, match="no stages"):
        Recipe("empty", "", [])


def test_a_written_recipe_is_the_short_form_and_reads_back_equal(tmp_path) -> None:
    """`tune -o tuned.yaml` and Recipe.save write what `recipes show` prints and users edit (no _version/_data
    wrappers), and reading it back gives the same recipe (same fingerprint) for every shipped one."""
    from torchslim.recipes import Recipe, load_recipe, preset_names

    for name in preset_names():
        recipe = load_recipe(name)
        recipe.save(tmp_path / f"{name}.yaml")
        text = (tmp_path / f"{name}.yaml").read_text()
        assert "_data" not in text and "_version: 1" not in text, name
        assert Recipe.load(tmp_path / f"{name}.yaml").fingerprint() == recipe.fingerprint(), name
