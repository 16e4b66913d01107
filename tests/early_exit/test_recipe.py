"""The shipped early-exit recipe parses and its stage is the early_exit verb."""
from torchslim.early_exit import EarlyExitConfig
from torchslim.recipes import ApplyStage, load_recipe


def test_shipped_recipe_has_an_early_exit_stage():
    r = load_recipe("early-exit")
    stages = [s for s in r.stages if isinstance(s, ApplyStage) and s.kind == "early_exit"]
    assert len(stages) == 1 and isinstance(stages[0].config, EarlyExitConfig)
    assert stages[0].config.train.steps == 300
