"""CausalLMTask on the tiny random Llama (byte tokenizer): exact protocol, data split, training, decode."""
from __future__ import annotations

import math

import pytest
import torch

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.data import text
from torchslim.tasks.causal_lm import CausalLMTask, eval_mode
from torchslim.zoo.tiny import tiny_llama


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def test_perplexity_matches_an_independent_computation(lm):
    task = CausalLMTask(lm.tokenizer, seq_len=64, max_eval_windows=5)
    got = task.evaluate(lm.model)
    ids = list(text.eval_text().encode("utf-8"))            # byte tokenizer: id = byte + 1
    losses = []
    with torch.no_grad():
        for w in range(5):
            x = torch.tensor([ids[w * 64 : (w + 1) * 64]]) + 1
            losses.append(lm.model(input_ids=x, labels=x).loss.item())
    assert got["perplexity"] == pytest.approx(math.exp(sum(losses) / 5), rel=1e-5)
    assert got["eval_tokens"] == 5 * 63 and got["eval_windows"] == 5
    assert got["nll"] == pytest.approx(math.log(got["perplexity"]))
    assert 200 < got["perplexity"] < 320                      # random init: about the vocab size (257)
    assert "GPL-3" in task.data_note and "LGPL-2.1" in task.data_note and "64-token" in task.data_note


def test_windows_are_non_overlapping_and_tail_is_dropped(lm):
    task = CausalLMTask(lm.tokenizer, seq_len=512)
    ids = task.token_ids("eval")
    assert ids.numel() == 35149
    windows = task.eval_windows()
    assert windows.shape == (35149 // 512, 512)
    assert torch.equal(windows.flatten(), ids[: windows.numel()])
    assert CausalLMTask(lm.tokenizer, seq_len=512, max_eval_windows=3).eval_windows().shape == (3, 512)


def test_no_eval_window_is_in_the_calibration_data(lm):
    task = CausalLMTask(lm.tokenizer, seq_len=128)
    eval_txt, cal_txt = text.eval_text(), text.calibration_text()
    for w in task.eval_windows():
        assert lm.tokenizer.decode(w) not in cal_txt
    for batch in task.calibration_batches(16, batch_size=4) + [next(task.train_batches(4))]:
        for row in batch["input_ids"]:
            chunk = lm.tokenizer.decode(row)
            assert chunk in cal_txt and chunk not in eval_txt


def test_calibration_example_and_training_batches(lm):
    task = CausalLMTask(lm.tokenizer, seq_len=32)
    cal = task.calibration_batches(10, batch_size=4)
    assert [b["input_ids"].shape for b in cal] == [(4, 32), (4, 32), (2, 32)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(cal, task.calibration_batches(10, 4)))
    ex = task.example_inputs(8, 128)
    assert ex["input_ids"].shape == (8, 128) and ex["attention_mask"].sum() == 8 * 128
    assert lm.tokenizer.decode(ex["input_ids"].flatten()) == text.calibration_text()[: 8 * 128]

    s0, s0b = task.train_batches(2, seed=3), task.train_batches(2, seed=3)
    first = [next(s0)["input_ids"] for _ in range(3)]
    assert all(torch.equal(a, next(s0b)["input_ids"]) for a in first)
    r0 = next(task.train_batches(2, seed=3, rank=0, world_size=2))["input_ids"]
    r1 = next(task.train_batches(2, seed=3, rank=1, world_size=2))["input_ids"]
    assert r0.shape == r1.shape == (2, 32) and not torch.equal(r0, r1)
    with pytest.raises(ConfigError):
        next(task.train_batches(2, rank=2, world_size=2))


def test_loss_is_next_token_cross_entropy_and_trains(lm):
    task = CausalLMTask(lm.tokenizer, seq_len=32)
    model = tiny_llama(seed=0).model.train()
    batch = next(task.train_batches(2))
    loss = task.loss(model, batch)
    logits = model(input_ids=batch["input_ids"]).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_decode_generates_exactly_new_tokens(lm):
    task = CausalLMTask(lm.tokenizer)
    stats = task.decode(lm.model, new_tokens=6)
    assert stats.prompt_tokens == len(task.prompt.encode()) and stats.new_tokens == 6
    assert stats.prefill_s > 0 and stats.decode_s > 0
    assert stats.tokens_per_s == pytest.approx(5 / stats.decode_s)
    assert task.supports_decode and isinstance(task.last_generated_text, str)


def test_eval_mode_restores_training_flag(lm):
    model = tiny_llama(seed=0).model.train()
    with eval_mode(model):
        assert not model.training and torch.is_inference_mode_enabled()
    assert model.training
    CausalLMTask(lm.tokenizer, seq_len=64, max_eval_windows=1).evaluate(model)
    assert model.training


def test_user_errors(lm):
    with pytest.raises(ConfigError, match="seq_len"):
        CausalLMTask(lm.tokenizer, seq_len=1)
    with pytest.raises(ConfigError, match="max_eval_windows"):
        CausalLMTask(lm.tokenizer, max_eval_windows=0)
    with pytest.raises(TorchSlimError, match="fewer than seq_len=512"):
        CausalLMTask(lm.tokenizer, eval_text="too short").evaluate(lm.model)
    with pytest.raises(ConfigError, match="new_tokens"):
        CausalLMTask(lm.tokenizer).decode(lm.model, new_tokens=1)
    with pytest.raises(TorchSlimError, match="no generate"):
        CausalLMTask(lm.tokenizer).decode(torch.nn.Linear(2, 2), new_tokens=4)


def test_loss_from_an_existing_output_or_logits_tensor_matches_the_loss(lm):
    model, task = lm.model, lm.task
    batch = next(task.train_batches(2, seed=1))
    with torch.no_grad():
        out = task.train_forward(model, batch)
        direct = task.loss(model, batch)
        from_output = task.loss_from_output(out, batch)
        from_logits = task.loss_from_output(out.logits, batch)     # another head's logits: task shifts labels
    torch.testing.assert_close(from_output, direct)
    torch.testing.assert_close(from_logits, direct, rtol=1e-5, atol=1e-5)
