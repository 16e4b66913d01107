import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from torchslim.calibration.pipeline import calibration_batches, run_basic, run_sequential
from torchslim.calibration.stats import ChannelStats
from torchslim.core.archs import find_blocks
from torchslim.core.errors import ConfigError


def tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


def batches(n=4):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 64, (1, 10), generator=g)} for _ in range(n)]


def fwd(m, b):
    return m(**b)


@pytest.mark.parametrize("propagate,expected_runs", [(True, 2), (False, 1)])
def test_sequential_runs_each_block_once_or_twice_and_sees_every_target(propagate, expected_runs):
    m = tiny()
    calls = {}
    for name, blk in find_blocks(m):
        blk.register_forward_hook(lambda *_a, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    targets = {f"model.layers.{i}.mlp.down_proj": m.model.layers[i].mlp.down_proj for i in range(3)}
    targets["lm_head"] = m.lm_head
    solved = []
    run_sequential(m, targets, batches(), fwd, lambda n, mod: ChannelStats(mod.in_features),
                   lambda measured: solved.extend((n, s.count) for n, (_, s) in measured.items()),
                   propagate_solved=propagate)
    assert dict(solved) == {n: 40 for n in targets}  # 4 batches x 10 tokens, each layer measured once
    # per batch: measure (+ re-run when propagating), plus one probe run to find layers sharing an input;
    # lm_head is measured from the last block's outputs, without another whole-model pass
    assert calls["model.layers.0"] == 4 * expected_runs + 1


def test_head_measured_from_cache_equals_whole_model_pass():
    m = tiny()
    got = {}
    for runner in (run_basic, run_sequential):
        runner(m, {"lm_head": m.lm_head}, batches(), fwd, lambda n, mod: ChannelStats(mod.in_features),
               lambda measured, r=runner: got.__setitem__(r.__name__, measured["lm_head"][1]))
    assert got["run_sequential"].count == got["run_basic"].count == 40
    assert torch.allclose(got["run_basic"].absmean, got["run_sequential"].absmean, atol=1e-5)


def test_gpt2_blocks_replay_without_the_kv_cache_it_passes_positionally():
    """GPT-2 hands its blocks the KV cache as a positional argument: replayed with it, each run would append its
    keys and a block changed between runs (as calibration changes it) would attend to the stale ones."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from torchslim.calibration.pipeline import block_output, catch_block_inputs

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    b = batches(1)
    (args, kwargs), = catch_block_inputs(m, m.transformer.h[0], b, fwd)
    block = m.transformer.h[0]
    with torch.no_grad():
        block(*args, **kwargs)                                     # a first replay
        block.attn.c_attn.weight.mul_(1.5)                         # the block changes, as a solver changes it
        replayed = block_output(block(*args, **kwargs))
        direct = block_output(block(m.transformer.wte(b[0]["input_ids"]) + m.transformer.wpe.weight[:10]))
    assert torch.allclose(replayed, direct, atol=1e-5)


def test_sequential_stats_equal_basic_stats_for_the_first_block():
    m = tiny()
    name = "model.layers.0.self_attn.q_proj"
    got = {}
    for runner in (run_basic, run_sequential):
        runner(m, {name: m.get_submodule(name)}, batches(), fwd, lambda n, mod: ChannelStats(mod.in_features),
               lambda measured, r=runner: got.__setitem__(r.__name__, measured[name][1]))
    assert torch.allclose(got["run_basic"].absmean, got["run_sequential"].absmean, atol=1e-6)


def test_calibration_batches_errors():
    with pytest.raises(ConfigError, match="needs calibration data"):
        calibration_batches(None, 8)
    with pytest.raises(ConfigError, match="non-empty list"):
        calibration_batches([], 8)
    got, f = calibration_batches([{"x": torch.ones(1)}] * 5, 3)
    assert len(got) == 3
    assert f(nn.Identity(), {"input": torch.ones(2)}).shape == (2,)


def test_layers_sharing_an_input_share_one_statistics_object():
    from torchslim.calibration.pipeline import shared_input_groups

    m = tiny()
    blk = m.model.layers[0]
    targets = {n: blk.get_submodule(n) for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    groups = shared_input_groups(targets, lambda: m(**batches(1)[0]))
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                      ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    seen = {}
    run_sequential(m, {f"model.layers.0.{n}": mod for n, mod in targets.items()}, batches(), fwd,
                   lambda n, mod: ChannelStats(mod.in_features), lambda measured: seen.update(measured))
    q, k = seen["model.layers.0.self_attn.q_proj"][1], seen["model.layers.0.self_attn.k_proj"][1]
    assert q is k and q.count == 40
