import pytest

from torchslim.core.errors import ConfigError
from torchslim.recipes import Recipe, RunOptions, run_recipe
from torchslim.search import parse_actions, sensitivity
from torchslim.search.tune import Budget, breakpoints, choice, tune
from torchslim.zoo.tiny import tiny_llama


@pytest.fixture(scope="module")
def scanned():
    lm = tiny_llama(seed=0)
    lm.task.max_eval_windows = 8
    return lm, sensitivity(lm.model, lm.task, parse_actions("int8,int2g32,sparse50"), granularity="block")


def test_budgets_parse_and_judge_both_directions():
    assert Budget.parse("1%") == Budget(0.01, True) and Budget.parse("0.5") == Budget(0.5, False)
    assert Budget.parse("1%").allows(20.0, 20.19, higher_is_better=False)
    assert not Budget.parse("1%").allows(20.0, 20.21, higher_is_better=False)
    assert Budget.parse("0.5").allows(97.0, 96.6, higher_is_better=True)
    assert not Budget.parse("0.5").allows(97.0, 96.4, higher_is_better=True)
    for bad in ("", "-1%", "1 %%", "abc"):
        with pytest.raises(ConfigError, match="budget"):
            Budget.parse(bad)


def test_the_trade_off_goes_from_everything_compressed_to_nothing(scanned):
    _, scan = scanned
    lams = breakpoints(scan)
    assert lams[0] == 0 and lams == sorted(lams)
    first, last = choice(scan, lams[0]), choice(scan, lams[-1] * 10)
    assert len(first) == len(scan.rows) and all(a == "int2g32" for a in first.values())   # fewest bytes
    assert last == {}                                                                    # nothing worth its cost
    sizes = [sum(next(c.bytes for r in scan.rows if r.group == g for c in [r.cells[a]]) for g, a in
                 choice(scan, lam).items()) for lam in lams[:: max(1, len(lams) // 6)]]
    assert len(sizes) > 2


def test_the_tuned_mix_is_within_budget_measured_and_its_recipe_reproduces_it(scanned, tmp_path):
    lm, scan = scanned
    result = tune(lm.model, lm.task, scan, "2%", max_evals=4)
    assert result.trials and all(t.within == Budget.parse("2%").allows(result.base_quality, t.quality, False)
                                 for t in result.trials)
    assert result.best is not None and result.best.within and result.best.bytes < result.base_bytes
    assert all(t.bytes >= result.best.bytes for t in result.trials if t.within)
    result.recipe.save(tmp_path / "tuned.yaml")
    recipe = Recipe.load(tmp_path / "tuned.yaml")
    assert type(recipe.stages[-1]).__name__ == "EvaluateStage"
    recipe.stages = recipe.stages[:-1]                      # the test measures on 8 windows itself
    run_recipe(recipe, "tiny-llama", tmp_path / "out", RunOptions(report=False))
    import torchslim

    again = torchslim.load_model(str(tmp_path / "out"))
    again.task.max_eval_windows = 8
    assert again.task.evaluate(again.model)["perplexity"] == pytest.approx(result.best.quality, rel=1e-4)
