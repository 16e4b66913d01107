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
from torchslim.distill.reconstruct import ReconstructConfig
from torchslim.eval.size import count_parameters
from torchslim.search.nas import confirm_pick, focus_levels, output_proxy, proxy_reference, teacher_targets
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


def test_random_draws_focus_where_the_uniform_shapes_cross_the_constraint(llama_space):
    space, scores = llama_space
    ws = sorted(space.widths)                                   # 0.25, 0.5, 0.75, 1
    uni = [space.uniform(w) for w in ws[:-1]]

    def met(*states):
        return dict(zip(uni, states))
    assert focus_levels(space, space.widths, met("ok", "ok", "over")) == ws[1:3]        # widest that met, next up
    assert focus_levels(space, space.widths, met("over", "over", "over")) == ws[:2]     # none met: the narrowest
    assert focus_levels(space, space.widths, met("under", "under", "over")) == ws[1:3]  # the step under -> over
    assert focus_levels(space, space.widths, met("ok", "ok", "ok")) is None             # nothing binds
    assert focus_levels(space, space.widths, met("ok", "over")) is None                 # not all measured
    rng = random.Random(0)
    narrow = [space.sample(rng, scores.block_order, [ws[0]]) for _ in range(30)]
    assert all(n <= space._neurons(i, ws[1]) for s in narrow for i, n in enumerate(s.neurons))


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
    better = [t for t in r.trials if t.quality is not None and t.quality < r.best.quality]   # perplexity: lower
    assert r.best.confirmed_speedup >= 1.15 and all(t.confirmed_speedup < 1.15 for t in better)
    assert llama4.task.evaluate(r.model)["perplexity"] == pytest.approx(r.best.quality)    # the recovered model
    assert len(r.trials) == 8 and r.trials[0].origin == "uniform"
    md = to_markdown(r)
    assert f"| {r.best.number} (chosen) |" in md and ">= 1.15x at 1x32" in md
    data = json.loads(save(r, tmp_path / "nas").with_suffix(".json").read_text())
    assert data["best"] == r.best.number and len(data["trials"]) == 8


def test_a_pick_that_misses_the_constraint_when_timed_again_gives_way_to_the_next(llama4, llama_space, monkeypatch):
    from torchslim.search import latency
    from torchslim.search.nas import Trial

    space, scores = llama_space
    trials = [Trial(i, "sampled", space.uniform(w), 100, 1.0, 2.0, True, 0.1, quality=q)
              for i, (w, q) in enumerate([(0.75, 10.0), (0.5, 12.0), (0.25, 15.0)])]     # perplexity: 10 is best
    second = iter([{"full": 2.0, "cand": 1.5}, {"full": 2.0, "cand": 0.9}])              # 1.33x, then 2.2x
    monkeypatch.setattr(latency, "end_to_end", lambda *a, **k: next(second))
    pick = confirm_pick(llama4.model, llama4.task, space, scores, _quick(min_speedup=2.0), trials, None)
    assert pick is trials[1] and trials[0].confirmed_speedup == pytest.approx(2 / 1.5)
    assert trials[1].confirmed_speedup == pytest.approx(2 / 0.9) and trials[2].confirmed_speedup is None


def test_max_latency_below_every_candidate_returns_nothing(llama4):
    r = nas(llama4.model, llama4.task, _quick(max_latency_ms=1e-6, n_candidates=3, recover=None))
    assert r.best is None and r.model is None and not any(t.feasible for t in r.trials)


def test_without_recovery_the_proxy_picks_among_feasible_candidates():
    lm = tiny_bert(seed=0)
    r = nas(lm.model, lm.task, _quick(min_speedup=1.0, n_candidates=4, recover=None))
    ok = [t for t in r.trials if t.feasible]
    assert r.best is not None and r.best.proxy == min(t.proxy for t in ok) and r.proxy_spearman is None


@pytest.mark.parametrize("kw, match", [
    ({}, "give a constraint"),
    ({"max_param_ratio": 1.5}, "max_param_ratio must be a fraction"),
    ({"max_param_ratio": 0.0}, "max_param_ratio must be a fraction"),
    ({"max_params": 0}, "max_params must be a positive"),
    ({"max_params": 1.5}, "max_params must be a positive"),
    ({"min_speedup": 2.0, "min_param_use": 0.9}, "min_param_use needs a parameter budget"),
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


def _count(model) -> int:
    return count_parameters(model, nonzero=False)[0]


def test_the_returned_architecture_meets_a_parameter_budget_alone(llama4, tmp_path):
    full = _count(llama4.model)
    r = nas(llama4.model, llama4.task, _quick(max_param_ratio=0.7, n_candidates=6))
    budget = int(0.7 * full)
    assert r.param_budget == budget and r.base_ms is None and len(r.trials) == 6
    assert all(t.params <= budget and t.feasible and t.latency_ms is None for t in r.trials)
    assert r.model is not None and _count(r.model) == r.best.params <= budget
    assert r.n_drawn == 6 + r.n_over_budget and r.n_over_budget >= 1     # uniform 0.75 keeps more than 70%
    md = to_markdown(r)
    assert f"<= {budget} parameters (70.0% of the full model)" in md
    assert f"Parameter budget: 6 of the {r.n_drawn} shapes built met it ({r.n_over_budget} over it" in md
    data = json.loads(save(r, tmp_path / "nas").with_suffix(".json").read_text())
    assert data["param_budget"] == budget and data["n_over_budget"] == r.n_over_budget


def test_a_parameter_budget_and_a_latency_constraint_together(llama4):
    full = _count(llama4.model)
    r = nas(llama4.model, llama4.task, _quick(max_params=int(0.9 * full), min_speedup=0.5, n_candidates=4,
                                               recover=None))
    assert r.param_budget == int(0.9 * full) and r.base_ms is not None
    assert all(t.params <= r.param_budget and t.latency_ms is not None for t in r.trials)
    assert r.best is not None and r.best.feasible and r.best.speedup >= 0.5


def test_min_param_use_skips_shapes_far_below_the_budget(llama4):
    r = nas(llama4.model, llama4.task, _quick(max_param_ratio=0.8, min_param_use=0.9, n_candidates=4, recover=None))
    assert r.n_under_use >= 1 and all(0.9 * r.param_budget <= t.params <= r.param_budget for t in r.trials)


def test_a_budget_no_shape_meets_is_a_clear_config_error(llama4):
    with pytest.raises(ConfigError, match="none of the .* shapes built met the parameter budget of 1000") as e:
        nas(llama4.model, llama4.task, _quick(max_params=1000, n_candidates=3))
    assert "\n" not in str(e.value)


def test_teacher_targets_follow_the_kept_blocks():
    assert teacher_targets((0, 1, 2, 3), 4) == (0, 1, 2, 3)
    assert teacher_targets((0, 2, 3), 6) == (1, 2, 5)          # block 0 also learns dropped block 1; 3 learns 4, 5
    assert teacher_targets((1, 3), 4) == (2, 3)


def test_reconstruction_recovers_a_shallower_candidate_on_its_kept_blocks(llama4, llama_space, monkeypatch):
    """Block-wise reconstruction as the fixed recovery: a candidate that dropped a block learns the teacher's
    output just before the next kept block, and comes out closer to the full model."""
    import torchslim.train.blockwise as blockwise
    from torchslim.search.nas import recover

    space, scores = llama_space
    seen = []
    real = blockwise.reconstruct
    monkeypatch.setattr(blockwise, "reconstruct", lambda s, t, b, f, plan, c: seen.append(plan.teacher_blocks)
                        or real(s, t, b, f, plan, c))
    shape = ArchShape(blocks=(0, 2, 3), heads=space.heads, neurons=space.neurons)
    cand = build(llama4.model, space, shape, scores)
    ref = proxy_reference(llama4.model, llama4.task, 8)
    before = output_proxy(cand, llama4.task, ref)
    rec = ReconstructConfig(steps=20, n_samples=8, batch_size=2, lr=2e-3)
    after = output_proxy(recover(cand, llama4.model, llama4.task, rec, shape.blocks), llama4.task, ref)
    assert seen == [(1, 2, 3)] and after < before
    r = nas(llama4.model, llama4.task, _quick(max_param_ratio=0.9, n_candidates=3, n_recover=1, n_validate=0,
                                               recover=ReconstructConfig(steps=2, n_samples=4, batch_size=2)))
    assert r.best is not None and r.best.quality is not None and _count(r.model) <= r.param_budget
    with pytest.raises(ConfigError, match="increasing block indices"):
        ReconstructConfig(teacher_blocks=(2, 1))


def test_a_reconstruct_recovery_round_trips():
    cfg = _quick(max_param_ratio=0.75, min_param_use=0.5, recover=ReconstructConfig(steps=3))
    back = NASConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.recover, ReconstructConfig) and back.recover.steps == 3
