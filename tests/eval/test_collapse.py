from __future__ import annotations

import math

import pytest

from torchslim.eval.collapse import GENERIC_HINT, collapse_warning


def test_perplexity_rising_more_than_tenfold_warns_with_the_stage_and_hint() -> None:
    line = collapse_warning({"perplexity": 15.0}, {"perplexity": 320.0}, "perplexity", False, "prune",
                            hint="ratio: 0.1")
    assert line == "stage 'prune' collapsed quality (perplexity 15 -> 320, 21x worse): try ratio: 0.1"
    assert "\n" not in line


@pytest.mark.parametrize("after", [16.0, 149.9, 150.0, 10.0])
def test_perplexity_within_tenfold_is_quiet(after: float) -> None:
    assert collapse_warning({"perplexity": 15.0}, {"perplexity": after}, "perplexity", False, "quantize") is None


def test_a_non_finite_result_is_a_collapse() -> None:
    line = collapse_warning({"perplexity": 15.0}, {"perplexity": math.inf}, "perplexity", False, "quantize")
    assert line is not None and "perplexity 15 -> inf" in line and GENERIC_HINT in line


def test_accuracy_near_chance_warns_in_percent_and_in_fractions() -> None:
    line = collapse_warning({"top1": 99.7}, {"top1": 11.1}, "top1", True, "quantize", chance=10.0,
                            hint="keep the first and last layers in float")
    assert line == ("stage 'quantize' collapsed quality (top1 99.7 -> 11.1, near chance (10)): "
                    "try keep the first and last layers in float")
    assert collapse_warning({"acc": 0.91}, {"acc": 0.51}, "acc", True, "prune", chance=0.5) is not None
    assert collapse_warning({"acc": 0.91}, {"acc": 0.60}, "acc", True, "prune", chance=0.5) is None


@pytest.mark.parametrize("before,after,chance", [
    (99.7, 12.5, 10.0),     # 2.5 points above chance: a big loss, not chance
    (99.7, 71.7, 10.0),
    (11.0, 10.5, 10.0),     # it was at chance before the stage: this stage did not collapse it
    (99.7, 10.0, None),     # no chance level given: accuracy is not judged
])
def test_accuracy_not_at_chance_is_quiet(before: float, after: float, chance: float | None) -> None:
    assert collapse_warning({"top1": before}, {"top1": after}, "top1", True, "s", chance=chance) is None


@pytest.mark.parametrize("before,after", [({}, {"perplexity": 1e6}), ({"perplexity": 15.0}, {}),
                                          ({"perplexity": "15"}, {"perplexity": 1e6}),
                                          ({"perplexity": 0.0}, {"perplexity": 1e6})])
def test_missing_or_unusable_metrics_give_none(before: dict, after: dict) -> None:
    assert collapse_warning(before, after, "perplexity", False, "s") is None
