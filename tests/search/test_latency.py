import json

import pytest

from torchslim.core.errors import ConfigError
from torchslim.search.latency import KEEP, Check, LatencyModel, cached_fit, check, fit



@pytest.fixture(scope="module")
def fitted(scan):
    lm, s = scan
    layers = [n for r in s.rows for n in r.layers]
    return lm, s, layers, fit(lm.model, lm.task, s.action_list(), layers, shape=(1, 16), iters=3)


def test_a_prediction_adds_each_changed_layers_difference_to_the_measured_base():
    m = LatencyModel((1, 8), 10.0, {"a": {KEEP: 2.0, "int8": 1.0}, "b": {KEEP: 3.0, "int8": 4.5}, "c": {KEEP: 1.0}})
    assert m.predict({}) == 10.0
    assert m.predict({"int8": ["a"]}) == pytest.approx(9.0)
    assert m.predict({"int8": ["a", "b"]}) == pytest.approx(10.5)
    assert m.predict({"int8": ["c"]}) == 10.0                # the action leaves c as it was: no change
    assert LatencyModel.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_every_reached_layer_is_timed_as_it_is_and_after_each_action_that_changes_it(fitted):
    lm, scan, layers, model = fitted
    assert set(model.layer_ms) == set(layers) and model.base_ms > 0
    for n, t in model.layer_ms.items():
        assert KEEP in t and all(v > 0 for v in t.values())
        assert set(t) - {KEEP} <= set(scan.actions)
    assert any(len(t) > 1 for t in model.layer_ms.values())
    assert model.machine["threads"] >= 1 and "isa" in model.machine
    assert "Int" not in type(lm.model.model.layers[0].mlp.up_proj).__name__      # the model itself is untouched


def test_the_cache_returns_the_same_model_without_measuring_again(fitted, tmp_path, monkeypatch):
    lm, scan, layers, _ = fitted
    first = cached_fit(lm.model, lm.task, scan.action_list(), layers, shape=(1, 16), cache_dir=tmp_path, iters=2)
    import torchslim.search.latency as latency

    monkeypatch.setattr(latency, "fit", lambda *a, **k: pytest.fail("measured again"))
    assert cached_fit(lm.model, lm.task, scan.action_list(), layers, shape=(1, 16), cache_dir=tmp_path) == first
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_the_check_compares_predictions_with_end_to_end_timings(fitted):
    import copy

    from torchslim.core.context import ApplyContext
    from torchslim.core.registry import apply_

    lm, scan, layers, model = fitted
    mixed = copy.deepcopy(lm.model)
    action = scan.action_list()[0]
    apply_(mixed, action.config, ApplyContext(task=lm.task, calibration=lm.task))
    result = check(model, lm.model, lm.task, [(mixed, {action.name: layers})], iters=3)
    assert len(result.errors) == 1 and result.errors[0] >= 0 and result.measured_ms[0] > 0
    assert Check([11.0, 9.0], [10.0, 10.0]).median_error == pytest.approx(0.1)


def test_nothing_to_time_is_an_error(scan):
    lm, s = scan
    with pytest.raises(ConfigError, match="at least one layer"):
        fit(lm.model, lm.task, s.action_list(), [])
