"""factorize_ on tiny-llama: budgets, methods, errors, speed reports and how it composes with other stages."""
import copy
import logging

import pytest
import torch
from torch import nn

import torchslim
from _lowrank_helpers import logits
from torchslim.core.errors import ConfigError
from torchslim.core.state import state_of
from torchslim.lowrank import LowRankConfig, LowRankLinear
from torchslim.lowrank import factorize as F

N = 8   # calibration windows: enough for a full-rank Gram matrix of the 64- and 128-wide inputs


def _lowrank(m):
    return {n: x for n, x in m.named_modules() if isinstance(x, LowRankLinear)}


@pytest.mark.parametrize("method", ["svd", "asvd", "whiten"])
def test_a_20_percent_factorization_removes_what_it_says(model, tiny, method):
    dense = sum(x.weight.numel() for n, x in model.named_modules() if isinstance(x, nn.Linear) and n != "lm_head")
    torchslim.factorize_(model, LowRankConfig(method=method, ratio=0.2, n_samples=N), calibration=tiny.task)
    made = _lowrank(model)
    assert len(made) == 14 and "lm_head" not in made            # every block projection, not the head
    factored = sum(x.weight.numel() for n, x in model.named_modules() if isinstance(x, nn.Linear) and n != "lm_head")
    entry = state_of(model).history[-1]
    assert entry.kind == "lowrank" and entry.name == "LowRankConfig"
    assert entry.metrics["params_removed"] == dense - factored
    assert 0.2 <= entry.metrics["removed_fraction"] <= 0.22      # ranks are multiples of 8
    assert entry.metrics["layers_factorized"] == 14
    assert torch.isfinite(logits(model)).all()


def test_whitening_changes_the_model_output_least(tiny):
    ref, err = logits(tiny.model), {}
    for method in ("svd", "asvd", "whiten"):
        m = copy.deepcopy(tiny.model)
        torchslim.factorize_(m, LowRankConfig(method=method, ratio=0.3, n_samples=N, measure_speed=False),
                             calibration=tiny.task)
        err[method] = float((logits(m) - ref).pow(2).mean())
    assert err["whiten"] < err["svd"]


def test_plain_svd_needs_no_data_and_the_calibrated_methods_ask_for_it(model):
    torchslim.factorize_(model, LowRankConfig(method="svd", rank=8, measure_speed=False))
    assert all(x.rank == 8 for x in _lowrank(model).values())
    with pytest.raises(ConfigError, match="needs calibration data"):
        torchslim.factorize_(model, LowRankConfig(method="whiten", selector=torchslim.Selector(include=("lm_head",))))


def test_a_global_budget_through_the_verb(model, tiny):
    torchslim.factorize_(model, LowRankConfig(method="whiten", ratio=0.3, allocation="global", n_samples=N,
                                              measure_speed=False), calibration=tiny.task)
    m = state_of(model).history[-1].metrics
    assert 0.3 <= m["removed_fraction"] <= 0.32


def test_an_energy_rule_keeps_dense_what_would_not_be_smaller(model, caplog):
    with caplog.at_level(logging.WARNING, "torchslim.lowrank"):
        torchslim.factorize_(model, LowRankConfig(method="svd", energy=0.999, measure_speed=False))
    assert "layer(s) not smaller kept dense" in caplog.text
    details = state_of(model).history[-1].details
    assert details["kept_dense"]["not smaller"] == 14 - len(_lowrank(model))


def test_selecting_nothing_or_the_wrong_layers_is_a_one_line_error(model, tiny):
    with pytest.raises(ConfigError, match="the selector matched no linear layer"):
        torchslim.factorize_(model, LowRankConfig(method="svd", selector=torchslim.Selector(include=("nope",))))
    with pytest.raises(ConfigError, match="applies to linear layers.*'model.embed_tokens' is a Embedding"):
        torchslim.factorize_(model, LowRankConfig(method="svd",
                                                  selector=torchslim.Selector(include=("model.embed_tokens",))))
    with pytest.raises(ConfigError, match="cannot be applied by the pruning verb"):
        torchslim.prune_(model, LowRankConfig())
    bad = torchslim.Selector(overrides={"lm_head": torchslim.UnstructuredConfig()})
    with pytest.raises(ConfigError, match="override must be a LowRankConfig"):
        torchslim.factorize_(model, LowRankConfig(method="svd", selector=bad))
    with pytest.raises(ConfigError, match="one rank rule, got ratio and energy"):
        LowRankConfig(ratio=0.2, energy=0.9)


def test_quantized_layers_are_refused_and_factors_are_not_factorized_again(model):
    sel = torchslim.Selector(include=("model.layers.0.mlp.down_proj",))
    torchslim.quantize_(model, torchslim.WeightOnlyConfig(selector=sel))
    with pytest.raises(ConfigError, match="factorize before quantizing.*is a QuantLinear"):
        torchslim.factorize_(model, LowRankConfig(method="svd", selector=sel))
    torchslim.factorize_(model, LowRankConfig(method="svd", rank=8, measure_speed=False))
    before = set(_lowrank(model))
    with pytest.raises(ConfigError, match="matched no linear layer"):   # only factors left: skipped, nothing else
        torchslim.factorize_(model, LowRankConfig(method="svd", rank=4, measure_speed=False))
    assert set(_lowrank(model)) == before


def _fake_speed(faster):
    def measure(out_f, in_f, rank, dtype, device):
        return {"rows": [{"rows": 1, "dense_ms": 1.0, "lowrank_ms": 2.0, "speedup": 0.5}], "faster": faster,
                "threads": 1, "note": "fake"}
    return measure


def test_layers_measured_slower_are_reported_smaller_not_faster(model, monkeypatch, caplog):
    monkeypatch.setattr(F, "measure_shape", _fake_speed(False))
    with caplog.at_level(logging.WARNING, "torchslim.lowrank"):
        torchslim.factorize_(model, LowRankConfig(method="svd", ratio=0.2))
    assert "14 of 14 factorized layers are smaller, not faster" in caplog.text
    info = next(iter(_lowrank(model).values())).torchslim_layer_info()
    assert info["kernel_faster"] is False and "not faster" in info["kernel"]
    assert state_of(model).history[-1].metrics["layers_faster"] == 0


def test_only_faster_keeps_slower_layers_dense(model, monkeypatch, caplog):
    monkeypatch.setattr(F, "measure_shape", _fake_speed(False))
    with caplog.at_level(logging.WARNING):
        torchslim.factorize_(model, LowRankConfig(method="svd", ratio=0.2, only_faster=True))
    assert not _lowrank(model) and "14 layer(s) not faster kept dense" in caplog.text
    assert "removed 0.0% of the selected layers' weights, less than the 20% asked" in caplog.text


def test_real_speed_is_measured_and_recorded(model):
    torchslim.factorize_(model, LowRankConfig(method="svd", rank=8, selector=torchslim.Selector(
        include=("model.layers.0.mlp.gate_proj",))))
    speed = _lowrank(model)["model.layers.0.mlp.gate_proj"].speed
    assert [r["rows"] for r in speed["rows"]] == [1, 256]
    assert all(r["dense_ms"] > 0 and r["lowrank_ms"] > 0 for r in speed["rows"])
    assert isinstance(speed["faster"], bool) and "measured against dense float32" in speed["note"]


def test_artifact_round_trip_gives_identical_outputs(model, tiny, tmp_path):
    torchslim.factorize_(model, LowRankConfig(method="whiten", ratio=0.2, n_samples=N), calibration=tiny.task)
    torchslim.save(model, tmp_path / "a")
    again = torchslim.load(tmp_path / "a")
    assert set(_lowrank(again)) == set(_lowrank(model))
    assert torch.equal(logits(again), logits(model))
    assert state_of(again).history[-1].name == "LowRankConfig"


def test_quantizing_after_factorizing_packs_both_factors(model, tiny, tmp_path):
    from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig
    from torchslim.quantization.qlinear import QuantLinear

    torchslim.factorize_(model, LowRankConfig(method="whiten", ratio=0.2, n_samples=N, measure_speed=False),
                         calibration=tiny.task)
    float_out = logits(model)
    int8 = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                            selector=torchslim.Selector(exclude=("lm_head",)))
    torchslim.quantize_(model, int8)
    pairs = _lowrank(model)
    assert len(pairs) == 14
    assert all(isinstance(p.down, QuantLinear) and isinstance(p.up, QuantLinear) for p in pairs.values())
    assert {p.up.torchslim_layer_info()["kernel"] for p in pairs.values()} == {"int8pack_mm"}   # the packed kernel
    out = logits(model)
    assert (out - float_out).abs().max() < 0.05 * float_out.abs().max()
    torchslim.save(model, tmp_path / "q")
    again = torchslim.load(tmp_path / "q")
    assert all(isinstance(p.up, QuantLinear) for p in _lowrank(again).values())
    assert torch.equal(logits(again), out)


def _scaled_then_whitened(tiny, shared: bool):
    from torchslim.calibration.plan import apply_sequence_
    from torchslim.core.context import ApplyContext
    from torchslim.quantization import AWQConfig, IntFormat, PerGroup, WeightOnlyConfig

    m = copy.deepcopy(tiny.model)
    calls = []
    m.model.layers[0].register_forward_pre_hook(lambda _m, _a: calls.append(1))
    awq = AWQConfig(weight=WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32),
                                            selector=torchslim.Selector(exclude=("lm_head",))),
                    scale_only=True, n_samples=N, grid=2)
    lr = LowRankConfig(method="whiten", ratio=0.2, n_samples=N, measure_speed=False)
    if shared:
        apply_sequence_(m, [awq, lr], ApplyContext(calibration=tiny.task))
    else:
        torchslim.quantize_(m, awq, calibration=tiny.task)
        torchslim.factorize_(m, lr, calibration=tiny.task)
    return m, len(calls)


@pytest.mark.slow
def test_an_equivalence_scaling_before_it_shares_the_calibration_pass(tiny):
    """AWQ's scale_only stage then whitening on one pass gives the factors of two passes (the input scale is
    folded back into the factorized weight, the statistics are of the same raw inputs)."""
    shared, shared_calls = _scaled_then_whitened(tiny, True)
    separate, separate_calls = _scaled_then_whitened(tiny, False)
    assert shared_calls < separate_calls                # the low-rank stage ran no pass of its own
    assert [h.name for h in state_of(shared).history] == ["AWQConfig", "LowRankConfig"]
    assert len(_lowrank(shared)) == 14
    torch.testing.assert_close(logits(shared), logits(separate), atol=1e-4, rtol=1e-4)
    alone = copy.deepcopy(tiny.model)
    torchslim.factorize_(alone, LowRankConfig(method="whiten", ratio=0.2, n_samples=N, measure_speed=False),
                         calibration=tiny.task)
    torch.testing.assert_close(logits(shared), logits(alone), atol=1e-3, rtol=1e-3)


def test_a_recipe_stage_factorizes(tmp_path):
    from torchslim.recipes import Recipe, RunOptions, run_recipe

    recipe = Recipe.from_dict({"stages": [{"factorize": {"_type": "LowRankConfig", "method": "svd", "ratio": 0.2,
                                                         "measure_speed": False}}]})
    result = run_recipe(recipe, "tiny-llama", tmp_path / "o", RunOptions(report=False))
    assert len(_lowrank(result.model)) == 14
    assert [h["name"] for h in torchslim.artifact.read_manifest(tmp_path / "o")["history"]] == ["LowRankConfig"]
    with pytest.raises(ConfigError, match="not for a 'prune' stage"):
        Recipe.from_dict({"stages": [{"prune": {"_type": "LowRankConfig"}}]})


def test_lora_recovery_adapts_both_factors_and_merges_into_them(model, tiny):
    torchslim.factorize_(model, LowRankConfig(method="svd", ratio=0.2, measure_speed=False))
    pair = _lowrank(model)["model.layers.0.mlp.down_proj"]
    before = pair.down.weight.detach().clone(), pair.up.weight.detach().clone()
    cfg = torchslim.LoraConfig(r=4, merge=True, train=torchslim.TrainConfig(steps=2, batch_size=2, lr=1e-2,
                                                                            eval_at_end=False))
    torchslim.finetune_(model, cfg, task=tiny.task)
    pair = _lowrank(model)["model.layers.0.mlp.down_proj"]
    assert type(pair.down) is nn.Linear and type(pair.up) is nn.Linear          # merged: plain factors again
    assert not torch.equal(pair.down.weight, before[0]) and not torch.equal(pair.up.weight, before[1])
