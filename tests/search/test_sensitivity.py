import copy

import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.core.state import state_of
from torchslim.search import parse_actions, sensitivity
from torchslim.zoo.tiny import tiny_bert, tiny_llama


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def _fingerprint(model):
    return ({n: id(m) for n, m in model.named_modules()}, copy.deepcopy(model.state_dict()),
            len(state_of(model).history), dict(state_of(model).settings))


def _same(model, fp):
    ids, sd, hist, settings = fp
    now = model.state_dict()
    assert {n: id(m) for n, m in model.named_modules()} == ids
    assert set(now) == set(sd) and all(torch.equal(now[k], sd[k]) for k in sd)
    assert len(state_of(model).history) == hist and dict(state_of(model).settings) == settings


def test_every_layer_is_scanned_and_the_model_is_left_as_given(lm):
    fp = _fingerprint(lm.model)
    ref = lm.model(torch.arange(12).reshape(1, 12)).logits
    s = sensitivity(lm.model, lm.task, parse_actions("int8,int2g32,sparse50,svd50"))
    _same(lm.model, fp)                     # lm_head is tied to the embeddings: both come back, still tied
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    torch.testing.assert_close(lm.model(torch.arange(12).reshape(1, 12)).logits, ref, rtol=0, atol=0)
    linears = [n for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert [r.group for r in s.rows] == linears and s.measure == "kl" and s.positions > 0
    for r in s.rows:
        q8, q2 = r.cells["int8"], r.cells["int2g32"]
        assert 0 < q8.cost < q2.cost        # fewer bits hurt more, on every layer
        assert q2.bytes < q8.bytes < r.bytes
    head = next(r for r in s.rows if r.group == "lm_head")
    assert head.cells["sparse50"].cost is None and head.cells["sparse50"].note == "not selected"   # pruning skips heads
    svd = [r.cells["svd50"] for r in s.rows if r.group != "lm_head"]
    assert all(c.cost > 0 and c.bytes < r.bytes for c, r in zip(svd, s.rows))


def test_blocks_group_their_layers(lm):
    s = sensitivity(lm.model, lm.task, parse_actions("int4g32"), granularity="block")
    assert [r.group for r in s.rows] == ["model.layers.0", "model.layers.1", "lm_head"]
    assert len(s.rows[0].layers) == 7
    per_layer = sensitivity(lm.model, lm.task, parse_actions("int4g32"), layers=Selector(include=("re:model.layers.0.*",)))
    assert all(r.group.startswith("model.layers.0.") for r in per_layer.rows) and len(per_layer.rows) == 7
    # a whole block hurts more than any one of its layers
    assert s.rows[0].cells["int4g32"].cost > max(r.cells["int4g32"].cost for r in per_layer.rows)


def test_encoders_are_measured_by_relative_output_error_and_the_task_measure_works():
    enc = tiny_bert(seed=0)
    s = sensitivity(enc.model, enc.task, parse_actions("int4g32,2:4"), granularity="block")
    assert s.measure == "mse" and all(c.cost > 0 for r in s.rows for c in r.cells.values() if c.note != "not selected")
    tables = [r for r in s.rows if all(n.startswith("embeddings.") for n in r.layers)]   # untied: int actions only
    assert tables and all(r.cells["int4g32"].cost > 0 and r.cells["2:4"].note == "not selected" for r in tables)
    t = sensitivity(enc.model, enc.task, parse_actions("int2g32"), granularity="block", measure="task")
    assert t.measure == "task" and all(r.cells["int2g32"].cost is not None for r in t.rows)


def test_bad_options_are_config_errors(lm):
    with pytest.raises(ConfigError, match="granularity"):
        sensitivity(lm.model, lm.task, parse_actions("int8"), granularity="row")
    with pytest.raises(ConfigError, match="measure"):
        sensitivity(lm.model, lm.task, parse_actions("int8"), measure="loss")
    with pytest.raises(ConfigError, match="no layer to scan"):
        sensitivity(lm.model, lm.task, parse_actions("int8"), layers=Selector(include=("re:nothing",)))


def test_the_block_proxy_runs_one_block_per_trial_and_leaves_the_model_as_given(lm):
    fp = _fingerprint(lm.model)
    s = sensitivity(lm.model, lm.task, parse_actions("int8,int2g32"), measure="block")
    _same(lm.model, fp)
    assert s.measure == "block"
    for r in s.rows:
        assert 0 < r.cells["int8"].cost < r.cells["int2g32"].cost
    # inside a block the cost is that block's relative output error: a whole block moves its output more than
    # any one of its layers
    blocks = sensitivity(lm.model, lm.task, parse_actions("int2g32"), measure="block", granularity="block")
    first = next(r for r in blocks.rows if r.group == "model.layers.0").cells["int2g32"].cost
    assert first > max(r.cells["int2g32"].cost for r in s.rows if r.group.startswith("model.layers.0."))


def test_the_block_proxy_needs_blocks():
    from torchslim.zoo.digits_cnn import build_digits_cnn

    class Task:
        def calibration_batches(self, n, bs):
            return [{"x": torch.randn(1, 1, 8, 8)}]

        def forward(self, model, b):
            return model(b["x"])

    with pytest.raises(ConfigError, match="measure 'block' needs transformer blocks"):
        sensitivity(build_digits_cnn().eval(), Task(), parse_actions("int8"), measure="block")
