import pytest

from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError


def test_unknown_keyword_is_an_error_naming_the_accepted_ones():
    with pytest.raises(ConfigError, match="unexpected argument 'lr'; accepted: task, calibration"):
        ApplyContext.from_kwargs(task=object(), lr=0.1)


def test_calibration_defaults_to_the_task_and_given_lists_set_fields():
    task = object()
    ctx = ApplyContext.from_kwargs(task=task, hooks=[1, 2])
    assert ctx.calibration_data is task and ctx.hooks == (1, 2)
    assert ctx.given() == {"task", "hooks"}
    calib = [{"x": 1}]
    assert ApplyContext(task=task, calibration=calib).calibration_data is calib


def test_training_task_accepts_a_task_given_as_calibration_but_not_a_list():
    class T:
        def loss(self, model, batch):
            return 0

    t = T()
    assert ApplyContext(calibration=t).training_task is t
    assert ApplyContext(calibration=[{"x": 1}]).training_task is None


def test_for_stage_gives_a_fresh_record_and_keeps_the_data():
    ctx = ApplyContext(task="t")
    ctx.record.metrics["a"] = 1
    fresh = ctx.for_stage()
    assert fresh.task == "t" and fresh.record.metrics == {} and ctx.record.metrics == {"a": 1}
