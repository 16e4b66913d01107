"""Block-wise reconstruction engine on tiny Llamas: one block's error falls, packed layers pack back to the very
computation the trained block does, a block that cannot improve is put back, and a killed run resumes exactly."""
from __future__ import annotations

import copy

import pytest
import torch

import torchslim
from torchslim.calibration.pipeline import (
    block_output,
    calibration_batches,
    catch_block_inputs,
)
from torchslim.core.archs import chain_blocks
from torchslim.core.errors import ConfigError
from torchslim.quantization import IntFormat, PerGroup, QuantLinear, WeightOnlyConfig
from torchslim.quantization.qat import QATLinear
from torchslim.train import blockwise
from torchslim.train.blockwise import BlockPlan, reconstruct, train_block
from torchslim.zoo.tiny import tiny_llama


@pytest.fixture(scope="module")
def pair():
    """(float teacher, int3-quantized student, calibration batches, forward)."""
    lm = tiny_llama(0)
    teacher = lm.model.eval()
    student = copy.deepcopy(teacher)
    torchslim.quantize_(student, WeightOnlyConfig(format=IntFormat(3, symmetric=False), granularity=PerGroup(32)))
    batches, forward = calibration_batches(lm.task, 8, 2)
    return teacher, student.eval(), batches, forward


def _first_block(pair):
    teacher, student, batches, forward = pair
    s = copy.deepcopy(student)
    block = chain_blocks(s)[0][1]
    cache = catch_block_inputs(s, block, batches, forward)
    t_block = chain_blocks(teacher)[0][1]
    t_cache = catch_block_inputs(teacher, t_block, batches, forward)
    with torch.no_grad():
        targets = [block_output(t_block(*a, **kw)).float() for a, kw in t_cache]
    return block, cache, targets


def test_training_one_block_lowers_its_output_error_and_leaves_packed_layers(pair) -> None:
    block, cache, targets = _first_block(pair)
    row = train_block(0, block, cache, targets, BlockPlan(steps=30, lr=1e-3, quantizer_lr=1e-2), None)
    assert row["kept"] == "trained" and row["packed_layers"] == 7 and row["steps"] == 30
    assert row["error_after"] < 0.8 * row["error_before"]
    assert row["error_after"] == pytest.approx(blockwise.relative_error(block, cache, targets), rel=1e-5)
    layers = [m for m in block.modules() if isinstance(m, (QuantLinear, QATLinear))]
    assert len(layers) == 7 and all(isinstance(m, QuantLinear) for m in layers)     # packed again, same formats
    assert all(m.fmt.bits == 3 and not m.fmt.symmetric for m in layers)
    assert not any(p.requires_grad for p in block.parameters())


def test_packing_back_computes_what_the_trained_block_computed(pair) -> None:
    block, cache, targets = _first_block(pair)
    swapped = blockwise._swap_in(block)
    opt = torch.optim.Adam([p for g in blockwise._param_groups(block, swapped, BlockPlan(1, 1e-3, 1e-2))
                            for p in g["params"]], lr=1e-3)
    for (args, kwargs), y in zip(cache[:3], targets):
        loss = (block_output(block(*args, **kwargs)) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    args, kwargs = cache[0]
    with torch.no_grad():
        trained = block_output(block(*args, **kwargs))
        blockwise._pack_back(block, swapped, None)
        packed = block_output(block(*args, **kwargs))
    assert all(not isinstance(m, QATLinear) for m in block.modules())
    assert float((packed - trained).norm() / trained.norm()) < 2e-3           # the int kernel's rounding only


def test_a_block_that_does_not_improve_is_put_back_with_a_warning(pair, caplog) -> None:
    block, cache, targets = _first_block(pair)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    row = train_block(0, block, cache, targets, BlockPlan(steps=3, lr=0.0, quantizer_lr=0.0), None)
    assert row["kept"].startswith("as it was") and "did not improve" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())


def test_a_block_that_came_out_worse_trains_again_from_where_it_was_at_lower_rates(pair, monkeypatch) -> None:
    block, cache, targets = _first_block(pair)
    real, plans = blockwise._fit, []

    def fit(k, blk, cache_, targets_, plan, config):
        plans.append(plan)
        if len(plans) == 1:                            # the first try makes the block worse
            blockwise.load_block(blk, {n: t * 1.5 if t.is_floating_point() else t
                                       for n, t in blk.state_dict().items()})
            return True, 7
        return real(k, blk, cache_, targets_, plan, config)
    monkeypatch.setattr(blockwise, "_fit", fit)
    row = train_block(0, block, cache, targets, BlockPlan(steps=30, lr=1e-3, quantizer_lr=1e-2), None)
    assert row["kept"].startswith("trained (second try") and row["steps"] == 60
    assert plans[1].lr == pytest.approx(blockwise.RETRY_LR * 1e-3)
    assert plans[1].quantizer_lr == pytest.approx(blockwise.RETRY_LR * 1e-2)
    assert row["error_first_try"] > row["error_before"] > row["error_after"]
    assert row["error_after"] == pytest.approx(blockwise.relative_error(block, cache, targets), rel=1e-5)


def test_a_killed_run_resumes_after_the_last_finished_block_with_the_same_result(pair, tmp_path, monkeypatch) -> None:
    teacher, student, batches, forward = pair
    plan = BlockPlan(steps=6, lr=1e-3, quantizer_lr=1e-2, checkpoint_dir=str(tmp_path / "ck"), fingerprint="a")
    whole = copy.deepcopy(student)
    rows = reconstruct(whole, teacher, batches, forward, BlockPlan(steps=6, lr=1e-3, quantizer_lr=1e-2), None)
    assert len(rows) == 2

    real, calls = blockwise.train_block, []

    def dies_on_block_1(k, *a, **kw):
        calls.append(k)
        if k == 1:
            raise KeyboardInterrupt
        return real(k, *a, **kw)

    killed = copy.deepcopy(student)
    monkeypatch.setattr(blockwise, "train_block", dies_on_block_1)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(killed, teacher, batches, forward, plan, None)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["block-0.safetensors", "progress.json"]
    calls.clear()
    monkeypatch.setattr(blockwise, "train_block", lambda k, *a, **kw: (calls.append(k), real(k, *a, **kw))[1])
    resumed = copy.deepcopy(student)                                # a fresh process: the model as loaded
    reconstruct(resumed, teacher, batches, forward, plan, None)
    assert calls == [1]                                             # block 0 came from its checkpoint
    want = whole.state_dict()
    assert all(torch.equal(want[k], v) for k, v in resumed.state_dict().items())
    other = dataclasses_replace(plan, fingerprint="b")              # another run's progress is not reused
    calls.clear()
    reconstruct(copy.deepcopy(student), teacher, batches, forward, other, None)
    assert calls == [0, 1]


def dataclasses_replace(plan: BlockPlan, **kw) -> BlockPlan:
    import dataclasses

    return dataclasses.replace(plan, **kw)


def test_a_shallower_student_learns_evenly_spaced_teacher_blocks_and_a_deeper_one_is_refused(pair) -> None:
    teacher, _, batches, forward = pair
    assert blockwise.teacher_ends(3, 6) == [1, 3, 5] and blockwise.teacher_ends(4, 4) == [0, 1, 2, 3]
    shallow = tiny_llama(0, num_hidden_layers=1).model
    rows = reconstruct(shallow, teacher, batches, forward, BlockPlan(20, 1e-3, 1e-3), None)
    assert [r["teacher_block"] for r in rows] == [1] and rows[0]["error_after"] < rows[0]["error_before"]
    deeper = tiny_llama(0, num_hidden_layers=3).model
    with pytest.raises(ConfigError, match="more than the teacher's"):
        reconstruct(deeper, teacher, batches, forward, BlockPlan(1, 1e-3, 1e-3), None)


def test_without_weights_only_step_sizes_offsets_and_norms_train(pair) -> None:
    block, cache, targets = _first_block(pair)
    swapped = blockwise._swap_in(block)
    groups = blockwise._param_groups(block, swapped, BlockPlan(1, 1e-3, 1e-2, train_weights=False))
    names = {id(p): n for n, p in block.named_parameters()}
    trained = sorted(names[id(p)] for g in groups for p in g["params"])
    assert trained and all(n.endswith(("scale_log", "offset_steps")) or "norm" in n for n in trained)
    assert not any(n.endswith("proj.weight") for n in trained)


def test_gpt2_blocks_train_with_the_cache_it_passes_positionally_left_out() -> None:
    """GPT-2 (Conv1D layers, KV cache passed as an argument) reconstructs end to end: each step's backward runs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = tiny_llama(0)
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=lm.model.config.vocab_size, n_embd=32, n_layer=2, n_head=4,
                                         n_positions=256)).eval()
    student = copy.deepcopy(teacher)
    torchslim.quantize_(student, WeightOnlyConfig(format=IntFormat(3, symmetric=False), granularity=PerGroup(32)))
    batches, forward = calibration_batches(lm.task, 4, 2)
    plan = BlockPlan(steps=6, lr=1e-3, quantizer_lr=1e-2)
    rows = reconstruct(student, teacher, batches, forward, plan, None)
    assert [r["steps"] for r in rows] == [6, 6] and all(r["error_after"] <= r["error_before"] for r in rows)
