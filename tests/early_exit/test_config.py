"""EarlyExitConfig: heads added and recorded, only they train, the model's forward is unchanged, and artifacts
reload them."""
import pytest
import torch

import torchslim
from tests.early_exit.conftest import TinyCNN, tiny_classifier
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.early_exit import EarlyExitConfig, EntropyPolicy, ExitRuntime, LearnedPolicy, block_chain, exit_heads
from torchslim.tasks.classification import ClassificationTask
from torchslim.tasks.source_text import source_task

TRAIN = torchslim.TrainConfig(steps=4, batch_size=8, lr=1e-2, progress=False, eval_at_end=False)


def _text_task(tokenizer):
    return source_task("licenses", tokenizer, max_length=32)


def test_heads_train_from_the_final_layer_and_leave_the_model_alone(tokenizer, text_batch):
    model = tiny_classifier(layers=3)
    ref = model(**text_batch).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torchslim.early_exit_(model, EarlyExitConfig(hidden=16), task=_text_task(tokenizer), train=TRAIN)
    heads = exit_heads(model)
    assert [h.block for h in heads] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())     # backbone frozen
    assert torch.equal(model(**text_batch).logits, ref)                              # own forward unchanged
    assert all(p.requires_grad for p in model.bert.parameters())                     # flags restored
    entry = torchslim.core.state.state_of(model).history[-1]
    assert entry.details["records"][0]["exits"] == 2 and "exit_kd" in entry.details["final_loss_terms"]


def test_round_trip_through_an_artifact(tmp_path, tokenizer, text_batch):
    model = tiny_classifier(layers=3)
    torchslim.early_exit_(model, EarlyExitConfig(), task=_text_task(tokenizer), train=TRAIN)
    torchslim.save(model, tmp_path / "a")
    back = torchslim.load(tmp_path / "a")
    assert [h.block for h in exit_heads(back)] == [h.block for h in exit_heads(model)]
    for pol in (EntropyPolicy(threshold=0.9), LearnedPolicy(threshold=0.5), EntropyPolicy.never()):
        a, b = ExitRuntime(model, pol)(text_batch), ExitRuntime(back, pol)(text_batch)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.exit_at, b.exit_at)


def test_cnn_stages_found_without_a_table_and_by_selector():
    cnn = TinyCNN()
    assert block_chain(cnn) == ["stages.0", "stages.1", "stages.2"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    task = ClassificationTask(x, y, x[:16], y[:16])
    torchslim.early_exit_(cnn, EarlyExitConfig(blocks=Selector(include=("stem", "stages.0"))), task=task, train=TRAIN)
    assert [(h.block, h.pool, h.in_features) for h in exit_heads(cnn)] == [("stem", "grid", 32), ("stages.0", "grid", 32)]
    with pytest.raises(ConfigError, match="already has exit heads"):
        torchslim.early_exit_(cnn, EarlyExitConfig(), task=task, train=TRAIN)


def test_user_errors_are_one_line():
    cnn = TinyCNN()
    task = ClassificationTask(torch.randn(8, 1, 8, 8), torch.arange(8), torch.randn(8, 1, 8, 8), torch.arange(8))
    with pytest.raises(ConfigError, match="matched no module"):
        torchslim.early_exit_(cnn, EarlyExitConfig(blocks=Selector(include="nothing")), task=task, train=TRAIN)
    with pytest.raises(ConfigError, match="temperature"):
        EarlyExitConfig(temperature=0)
    with pytest.raises(ConfigError, match="no exit heads"):
        ExitRuntime(cnn, EntropyPolicy())
