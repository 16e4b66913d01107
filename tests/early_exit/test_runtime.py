"""The runtime: a policy that never fires equals the model exactly; exits really skip blocks; compacted batches give
each row what it gets alone."""
import torch
from torch import nn

from tests.early_exit.conftest import TinyCNN, tiny_classifier
from torchslim.core.resize import add_module
from torchslim.early_exit import EntropyPolicy, ExitHead, ExitRuntime, LearnedPolicy, PatiencePolicy
from torchslim.early_exit.module import HEADS


def _with_heads(model, blocks, widths, classes, pool):
    torch.manual_seed(1)
    add_module(model, HEADS, nn.ModuleList([ExitHead(b, w, classes, pool, hidden=8) for b, w in zip(blocks, widths)]))
    return model


def _bert():
    return _with_heads(tiny_classifier(), [f"bert.encoder.layer.{i}" for i in range(3)], [32] * 3, 7, "tokens")


def _cnn():
    torch.manual_seed(0)
    model = _with_heads(TinyCNN().eval(), ["stages.0", "stages.1"], [8 * 4, 16 * 4], 10, "grid")
    for h in model.exit_heads:                      # gates that differ between rows
        nn.init.normal_(h.gate.weight, std=1.0)
    return model


def test_never_firing_policies_give_exactly_the_models_output(text_batch):
    model = _bert()
    ref = model(**text_batch).logits
    for pol in (EntropyPolicy.never(), PatiencePolicy.never(), LearnedPolicy.never()):
        for compact in (True, False):
            out = ExitRuntime(model, pol, compact=compact)(text_batch)
            assert torch.equal(out.logits, ref) and out.exit_at.tolist() == [3, 3, 3]
    cnn = _cnn()
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(ExitRuntime(cnn, EntropyPolicy.never())(x).logits, cnn(x))


def test_an_exit_that_always_fires_stops_the_forward(text_batch):
    model = _bert()
    ran = []
    for i, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    head_calls = []
    model.classifier.register_forward_hook(lambda *a: head_calls.append(1))
    out = ExitRuntime(model, EntropyPolicy(threshold=1.0))(text_batch)   # every row leaves at the first exit
    assert ran == [0] and not head_calls and out.exit_at.tolist() == [0, 0, 0]
    hidden = model.bert.embeddings(input_ids=text_batch["input_ids"])
    assert out.logits.shape == (3, 7)
    assert torch.isfinite(out.logits).all() and hidden is not None


def _threshold_splitting(model, inputs, rows):
    """An entropy threshold at which some rows leave early and others do not."""
    full = ExitRuntime(model, EntropyPolicy(threshold=1.0))(inputs)
    from torchslim.early_exit.math import normalized_entropy

    ent = normalized_entropy(full.logits)
    return EntropyPolicy(threshold=float(ent.sort().values[rows // 2]))


def test_compacted_rows_equal_rows_run_alone(text_batch):
    model = _bert()
    pol = _threshold_splitting(model, text_batch, 3)
    both = [ExitRuntime(model, pol, compact=c)(text_batch) for c in (True, False)]
    assert len(set(both[0].exit_at.tolist())) > 1            # rows leave at different exits
    assert torch.equal(both[0].exit_at, both[1].exit_at)
    torch.testing.assert_close(both[0].logits, both[1].logits, atol=1e-5, rtol=0)
    for r in range(3):
        one = ExitRuntime(model, pol)({k: v[r:r + 1] for k, v in text_batch.items()})
        assert one.exit_at.item() == both[0].exit_at[r].item()
        torch.testing.assert_close(one.logits[0], both[0].logits[r], atol=1e-5, rtol=0)


def test_learned_exits_mixed_rows_in_a_cnn():
    cnn = _cnn()
    x = torch.randn(96, 1, 8, 8)
    calls = []
    cnn.stages[2].register_forward_hook(lambda m, a, o: calls.append(o.shape[0]))
    out = ExitRuntime(cnn, LearnedPolicy(threshold=0.6))(x)
    left = int((out.exit_at < 2).sum())
    assert 0 < left < 96 and calls == [96 - left]        # only the rows still in the batch run the last stage
    alone = torch.stack([ExitRuntime(cnn, LearnedPolicy(threshold=0.6))(x[i:i + 1]).logits[0] for i in range(96)])
    torch.testing.assert_close(out.logits, alone, atol=1e-5, rtol=0)
