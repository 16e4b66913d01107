"""Architecture search: the space, candidates built to their shape, the latency constraint, the proxy, bad configs."""
import json
import random

import pytest
import torch
from torch import nn

from torchslim import DistillConfig, TrainConfig
from torchslim.core.archs import find_blocks
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.pruning.structured import block_params
from torchslim.pruning.transformer import block_info
from torchslim.core.archs import arch_of
from torchslim.search import ArchShape, NASConfig, nas
from torchslim.search.arch_space import build, space_of
from torchslim.search.nas import output_proxy, proxy_reference
from torchslim.search.nas_report import save, to_markdown
from torchslim.zoo.digits_cnn import build_digits_cnn, digits_task
from torchslim.zoo.tiny import tiny_bert, tiny_llama

WIDTHS = (0.25, 0.5, 0.75, 1.0)


def _space(lm, **kw):
    args = dict(widths=WIDTHS, min_depth=0.5, heads=True, neurons=True, selector=None, round_to=1, n_samples=8)
    return space_of(lm.model, lm.task, **{**args, **kw})


@pytest.fixture(scope="module")
def llama4():
    lm = tiny_llama(seed=0, num_hidden_layers=4)
    lm.task.max_eval_windows = 4
    return lm


@pytest.fixture(scope="module")
def llama_space(llama4):
    return _space(llama4)


def _quick(**kw):
    recover = DistillConfig(output_weight=1.0, train=TrainConfig(steps=2, batch_size=4, progress=False,
                                                                   eval_at_end=False))
    return NASConfig(**{"shape": (1, 32), "n_candidates": 6, "n_recover": 2, "n_validate": 1, "recover": recover,
                        "n_importance_samples": 8, "n_proxy_samples": 8, "latency_iters": 3, **kw})


def test_sampled_shapes_are_valid_and_vary(llama_space):
    space, scores = llama_space
    assert space.kind == "transformer" and space.n_blocks == 4 and space.min_blocks == 2
    assert space.head_options(0) == [1, 2, 4]       # 2 kv groups of 2 query heads, the same count kept in each group
    rng = random.Random(0)
    shapes = {space.sample(rng, scores.block_order) for _ in range(40)}
    assert len(shapes) > 10
    for s in shapes:
        assert 2 <= len(s.blocks) <= 4 and list(s.blocks) == sorted(set(s.blocks))
        assert all(h in space.head_options(i) for i, h in enumerate(s.heads))
        assert all(1 <= n <= space.neurons[i] for i, n in enumerate(s.neurons))
    assert space.uniform(0.5).neurons == tuple(n // 2 for n in space.neurons)
    assert space.full() == ArchShape(tuple(range(4)), space.heads, space.neurons)


def _block_formula(hidden: int, heads: int, kv: int, hd: int, neurons: int) -> int:
    """Parameters of one Llama block: q, k, v, o (no bias), gate/up/down, two RMS norms."""
    return hidden * hd * (2 * heads + 2 * kv) + 3 * hidden * neurons + 2 * hidden


def test_a_built_candidate_has_its_shape_and_parameter_count(llama4, llama_space):
    space, scores = llama_space
    model = llama4.model
    shape = ArchShape(blocks=(0, 2, 3), heads=(2, 4, 1, 4), neurons=(32, 128, 64, 100))
    cand = build(model, space, shape, scores)
    spec, blocks = arch_of(cand), find_blocks(cand)
    assert len(blocks) == 3 and cand.config.num_hidden_layers == 3
    infos = [block_info(cand, spec, n, b) for n, b in blocks]
    assert [i.heads for i in infos] == [2, 1, 4] and [i.neurons for i in infos] == [32, 64, 100]
    hidden, hd = model.config.hidden_size, infos[0].head_dim
    kv = [i.kv_heads for i in infos]
    assert kv[1:] == [1, 2]                                   # one head: one group; all four: both groups
    outside = sum(p.numel() for p in model.parameters()) - block_params(model)
    expected = outside + sum(_block_formula(hidden, i.heads, k, hd, i.neurons) for i, k in zip(infos, kv))
    assert sum(p.numel() for p in cand.parameters()) == expected
    assert sum(p.numel() for p in model.parameters()) > expected          # the full model is left as it was
    x = llama4.task.example_inputs(2, 16)
    with torch.inference_mode():
        assert cand(**x).logits.shape == model(**x).logits.shape


def test_a_convnet_candidate_keeps_the_chosen_channels():
    model, task = build_digits_cnn().eval(), digits_task()
    space, scores = space_of(model, task, widths=WIDTHS, min_depth=1.0, heads=True, neurons=True, selector=None,
                             round_to=1, n_samples=16)
    assert space.kind == "channels" and space.groups == (32, 32, 64, 64)
    cand = build(model, space, ArchShape(channels=(8, 16, 32, 48)), scores)
    assert cand.stem[0].out_channels == 8 and cand.stages[0][0].conv1.out_channels == 16
    assert cand.stages[1][0].conv1.out_channels == 32 and cand.stages[1][0].conv2.out_channels == 48
    assert cand.head.in_features == 48
    assert cand(task.example_inputs(3)["x"]).shape == (3, 10)


def test_the_proxy_is_deterministic_and_zero_for_the_full_model(llama4, llama_space):
    space, scores = llama_space
    ref = proxy_reference(llama4.model, llama4.task, 8)
    assert ref[2] == "kl" and output_proxy(llama4.model, llama4.task, ref) == 0.0
    shape = space.uniform(0.5)
    a = output_proxy(build(llama4.model, space, shape, scores), llama4.task, ref)
    b = output_proxy(build(llama4.model, space, shape, scores), llama4.task, proxy_reference(llama4.model,
                                                                                             llama4.task, 8))
    assert a == b and a > 0


def test_the_returned_architecture_meets_the_latency_constraint(llama4, tmp_path):
    r = nas(llama4.model, llama4.task, _quick(min_speedup=1.15, n_candidates=8))   # 5 draws: blocks dropped in some
    assert r.best is not None and r.best.feasible and r.best.speedup >= 1.15
    assert r.best.quality is not None and all(t.feasible for t in r.trials if t.quality is not None)
    assert r.model is not None and sum(p.numel() for p in r.model.parameters()) == r.best.params
    assert r.best.quality == min(t.quality for t in r.trials if t.quality is not None)      # perplexity: lower
    assert llama4.task.evaluate(r.model)["perplexity"] == pytest.approx(r.best.quality)    # the recovered model
    assert len(r.trials) == 8 and r.trials[0].origin == "uniform"
    md = to_markdown(r)
    assert f"| {r.best.number} (chosen) |" in md and ">= 1.15x at 1x32" in md
    data = json.loads(save(r, tmp_path / "nas").with_suffix(".json").read_text())
    assert data["best"] == r.best.number and len(data["trials"]) == 8


def test_max_latency_below_every_candidate_returns_nothing(llama4):
    r = nas(llama4.model, llama4.task, _quick(max_latency_ms=1e-6, n_candidates=3, recover=None))
    assert r.best is None and r.model is None and not any(t.feasible for t in r.trials)


def test_without_recovery_the_proxy_picks_among_feasible_candidates():
    lm = tiny_bert(seed=0)
    r = nas(lm.model, lm.task, _quick(min_speedup=1.0, n_candidates=4, recover=None))
    ok = [t for t in r.trials if t.feasible]
    assert r.best is not None and r.best.proxy == min(t.proxy for t in ok) and r.proxy_spearman is None


@pytest.mark.parametrize("kw, match", [
    ({}, "give a latency constraint"),
    ({"min_speedup": 2.0, "widths": (0.5, 1.5)}, "fractions in"),
    ({"min_speedup": 2.0, "importance": "wanda"}, "taylor, magnitude_l2 or magnitude"),
    ({"max_latency_ms": -1.0}, "must be positive"),
])
def test_bad_configs_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        NASConfig(**kw)


class _Linear(nn.Module):
    """One linear layer on flattened digits: its only channels are the classes (outputs), nothing to prune."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_space_matching_nothing_is_a_one_line_config_error(llama4):
    cases = [(llama4.model, llama4.task, _quick(min_speedup=2.0, selector=Selector(include=("re:nothing.*",))),
              "selector matches no transformer block"),
             (llama4.model, llama4.task, _quick(min_speedup=2.0, heads=False, neurons=False, min_depth=1.0),
              "nothing to search"),
             (_Linear(), digits_task(), _quick(min_speedup=2.0), "no prunable channel group")]
    for model, task, cfg, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            nas(model, task, cfg)
        assert "\n" not in str(e.value)


def test_the_config_round_trips():
    cfg = _quick(min_speedup=2.0, selector=Selector(include=("re:.*layers\\.[01]",)))
    back = NASConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.recover.train.steps == 2
