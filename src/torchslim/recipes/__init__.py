"""Recipes: ordered, typed stages (apply any config, train, evaluate, save, checkpoint) run resumably."""
from torchslim.recipes.presets import load_recipe, preset_names, preset_path
from torchslim.recipes.recipe import Recipe
from torchslim.recipes.runner import RunOptions, RunResult, run_recipe
from torchslim.recipes.stages import (ApplyStage, CheckpointStage, EvaluateStage, RunContext, SaveStage, Stage,
                                      TrainStage, register_stage)

__all__ = [
    "ApplyStage", "CheckpointStage", "EvaluateStage", "Recipe", "RunContext", "RunOptions", "RunResult", "SaveStage",
    "Stage", "TrainStage", "load_recipe", "preset_names", "preset_path", "register_stage", "run_recipe",
]
