"""LoRA, rsLoRA and DoRA on every kind of layer torchslim produces: training lowers the loss and changes only the
branches; merging gives the adapted outputs; unmerging and switching give the base back exactly; artifacts
rebuild the branches; a layer quantized after LoRA keeps its branch."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import torchslim
from torchslim import LoraConfig, Selector, TrainConfig
from torchslim.core.errors import ConfigError
from torchslim.peft import LoraBranch, branches, merge_, set_adapter, unmerge_
from torchslim.quantization import IntFormat, PerGroup, QuantLinear, WeightOnlyConfig
from torchslim.zoo.tiny import tiny_bert, tiny_llama

TRAIN = TrainConfig(steps=25, batch_size=4, lr=5e-3, schedule="constant", progress=False, eval_at_end=False)


def _batch(task, seed: int = 0):
    return next(iter(task.train_batches(4, seed=seed)))


def _loss(model, task, batch) -> float:
    with torch.no_grad():
        return float(task.loss(model.eval(), batch))


def _outputs(model, task, batch) -> torch.Tensor:
    with torch.no_grad():
        out = task.train_forward(model.eval(), batch)
    out = getattr(out, "logits", None) if getattr(out, "logits", None) is not None else out
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out).float()


def _base_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _unchanged(model, before: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"base parameter {n} changed"


@pytest.mark.parametrize("dora", [False, True])
def test_lora_trains_only_its_branches_and_merges_to_the_same_outputs_on_a_decoder(dora: bool) -> None:
    lm = tiny_llama(0)
    batch, base = _batch(lm.task, seed=5), _base_params(lm.model)
    loss0 = _loss(lm.model, lm.task, batch)
    torchslim.finetune_(lm.model, LoraConfig(r=4, dora=dora), task=lm.task, train=TRAIN)
    assert len(branches(lm.model)) == 14                       # every block linear, not the head
    assert "lm_head" not in {n.rpartition(".")[0] for n, _ in branches(lm.model)}
    _unchanged(lm.model, base)
    assert _loss(lm.model, lm.task, batch) < 0.97 * loss0
    adapted = _outputs(lm.model, lm.task, batch)
    merge_(lm.model, keep=True)
    assert torch.allclose(_outputs(lm.model, lm.task, batch), adapted, atol=1e-4, rtol=1e-4)
    unmerge_(lm.model)
    _unchanged(lm.model, base)
    assert torch.allclose(_outputs(lm.model, lm.task, batch), adapted, atol=1e-5)


def test_lora_on_an_encoder_learns_and_round_trips_through_an_artifact(tmp_path) -> None:
    teacher, student = tiny_bert(0), tiny_bert(1)            # the task's reference is seed 0's embeddings
    batch = _batch(teacher.task)
    loss0 = _loss(student.model, teacher.task, batch)
    cfg = LoraConfig(r=4, alpha=8, selector=Selector(include="re:.*\\.(query|value|dense)"))
    torchslim.finetune_(student.model, cfg, task=teacher.task, train=TRAIN)
    assert _loss(student.model, teacher.task, batch) < loss0
    out = _outputs(student.model, teacher.task, batch)
    torchslim.save(student.model, tmp_path / "a")
    back = torchslim.load(tmp_path / "a")
    assert len(branches(back)) == len(branches(student.model))
    assert torch.equal(_outputs(back, teacher.task, batch), out)
    merge_(back)
    assert not branches(back) and torch.allclose(_outputs(back, teacher.task, batch), out, atol=1e-4)


def test_a_packed_int4_base_stays_packed_and_its_adapter_learns() -> None:
    lm = tiny_llama(0)
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    batch, base = _batch(lm.task, seed=5), _base_params(lm.model)
    loss0 = _loss(lm.model, lm.task, batch)
    torchslim.finetune_(lm.model, LoraConfig(r=4), task=lm.task, train=TRAIN)
    _unchanged(lm.model, base)
    adapted_layers = {n.rpartition(".")[0] for n, _ in branches(lm.model)}
    assert all(isinstance(lm.model.get_submodule(n), QuantLinear) for n in adapted_layers) and len(adapted_layers) == 14
    assert _loss(lm.model, lm.task, batch) < 0.97 * loss0
    adapted = _outputs(lm.model, lm.task, batch)
    report = merge_(lm.model)
    assert report["layers"] == {"requantized": 14} and not branches(lm.model)
    assert all(isinstance(lm.model.get_submodule(n), QuantLinear) for n in adapted_layers)
    merged = _outputs(lm.model, lm.task, batch)      # the merge re-quantizes: close to the adapted model, not equal
    assert (merged - adapted).norm() < 0.25 * adapted.norm()


def test_a_merge_that_drowns_in_the_grid_names_the_adapter_it_merged(caplog) -> None:
    # merge_(model) with no adapter named merges the active one: the warning must name it, not say "None"
    lm = tiny_llama(0)
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    tiny_step = TrainConfig(steps=1, batch_size=2, lr=1e-7, schedule="constant", progress=False, eval_at_end=False)
    torchslim.finetune_(lm.model, LoraConfig(r=4, adapter="mine"), task=lm.task, train=tiny_step)
    with caplog.at_level("WARNING", logger="torchslim.peft"):
        report = merge_(lm.model)
    assert report["update_error"]["mean"] > 0.5
    warned = [r.getMessage() for r in caplog.records if "re-quantized" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("merging adapter 'mine' ") and "None" not in warned[0]
    # the ratio reads as a ratio ("lost 122% of the update" read as more than all of it)
    assert f"{report['update_error']['mean']:.2f}x the adapter's update" in warned[0] and "%" not in warned[0]


def test_a_branch_follows_its_layer_when_the_layer_is_quantized_afterwards(tmp_path) -> None:
    lm = tiny_llama(0)
    torchslim.finetune_(lm.model, LoraConfig(r=2, selector=Selector(include="re:.*v_proj")), task=lm.task,
                        train=dataclass_steps(3))
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), selector=Selector(include="re:.*v_proj")))
    layer = lm.model.model.layers[0].self_attn.v_proj
    assert isinstance(layer, QuantLinear) and isinstance(layer.lora_default, LoraBranch)
    batch = _batch(lm.task)
    with_branch = _outputs(lm.model, lm.task, batch)
    set_adapter(lm.model, None)
    assert not torch.allclose(_outputs(lm.model, lm.task, batch), with_branch)
    set_adapter(lm.model, "default")
    torchslim.save(lm.model, tmp_path / "q")
    assert torch.equal(_outputs(torchslim.load(tmp_path / "q"), lm.task, batch), with_branch)


def dataclass_steps(n: int) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(TRAIN, steps=n)


@pytest.mark.slow
def test_two_adapters_switch_without_touching_the_base() -> None:
    lm = tiny_llama(0)
    batch = _batch(lm.task)
    base_out = _outputs(lm.model, lm.task, batch)
    torchslim.finetune_(lm.model, LoraConfig(r=2, adapter="a"), task=lm.task, train=dataclass_steps(5))
    out_a = _outputs(lm.model, lm.task, batch)
    torchslim.finetune_(lm.model, LoraConfig(r=2, adapter="b"), task=lm.task, train=dataclass_steps(5))
    set_adapter(lm.model, "b")
    out_b = _outputs(lm.model, lm.task, batch)
    set_adapter(lm.model, "a")
    assert torch.allclose(_outputs(lm.model, lm.task, batch), out_a, atol=1e-6)
    assert not torch.allclose(out_a, out_b)
    set_adapter(lm.model, None)
    assert torch.equal(_outputs(lm.model, lm.task, batch), base_out)
    with pytest.raises(ConfigError, match="no adapter 'c'"):
        set_adapter(lm.model, "c")
    with pytest.raises(ConfigError, match="already has an adapter 'a'"):
        torchslim.finetune_(lm.model, LoraConfig(adapter="a"), task=lm.task, train=dataclass_steps(1))


def test_gpt2_conv1d_and_sparse_layers_merge_exactly() -> None:
    from torchslim import UnstructuredConfig
    from torchslim.zoo.families import build_family, family_task

    fam = build_family("gpt2")
    task = family_task(fam)
    torchslim.prune_(fam.model, UnstructuredConfig(sparsity=0.5, selector=Selector(include="re:.*mlp\\.c_fc")))
    torchslim.finetune_(fam.model, LoraConfig(r=2), task=task, train=dataclass_steps(5))
    kinds = {type(fam.model.get_submodule(n.rpartition(".")[0])).__name__ for n, _ in branches(fam.model)}
    assert {"Conv1D", "SparseLinear"} <= kinds
    for _, b in branches(fam.model):
        torch.nn.init.normal_(b.B, std=0.05)                  # a visible update on every layer
    x = fam.batches(1)[0]
    with torch.no_grad():
        adapted = fam.model(**x).logits
        set_adapter(fam.model, None)
        bare = fam.model(**x).logits
        set_adapter(fam.model, "default")
    from torchslim.peft.weights import effective_weight

    targets = {n.rpartition(".")[0]: b.merged_weight(fam.model.get_submodule(n.rpartition(".")[0])).clone()
               for n, b in branches(fam.model)}
    report = merge_(fam.model)
    with torch.no_grad():
        merged = fam.model(**x).logits
    assert report["layers"].get("masked") and report["layers"].get("exact")
    sparse = [m for m in fam.model.modules() if type(m).__name__ == "SparseLinear"]
    assert sparse and all(bool((m.weight[~m.mask] == 0).all()) for m in sparse)   # the mask is untouched
    assert not torch.allclose(merged, adapted, atol=1e-5)       # the update outside the mask is dropped ...
    assert (merged - bare).norm() > 0.1 * (adapted - bare).norm()
    for name, target in targets.items():                        # ... and the rest is kept, exactly
        layer = fam.model.get_submodule(name)
        mask = layer.mask.reshape(target.shape) if hasattr(layer, "mask") else torch.ones_like(target, dtype=torch.bool)
        torch.testing.assert_close(effective_weight(layer), torch.where(mask, target, torch.zeros_like(target)))


def test_conv2d_lora_and_rslora_scaling() -> None:
    from torchslim.zoo.digits_cnn import build_digits_cnn

    model = build_digits_cnn().eval()
    ref = copy.deepcopy(model)
    cfg = LoraConfig(r=4, alpha=8, rslora=True, selector=Selector(include=torch.nn.Conv2d))
    cfg.prepare(model, None)
    convs = branches(model)
    assert convs and all(b.conv is not None and math.isclose(b.scaling, 8 / 2) for _, b in convs)
    for _, b in convs:
        torch.nn.init.normal_(b.B, std=0.05)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        adapted = model(x)
        assert not torch.allclose(adapted, ref(x))
    merge_(model)
    with torch.no_grad():
        assert torch.allclose(model(x), adapted, atol=1e-4)


def test_a_selector_that_matches_nothing_is_an_error() -> None:
    lm = tiny_llama(0)
    with pytest.raises(ConfigError, match="matched no layer"):
        torchslim.finetune_(lm.model, LoraConfig(selector=Selector(include="re:.*nothing")), task=lm.task,
                            train=dataclass_steps(1))
    with pytest.raises(ConfigError, match="cannot adapt"):
        torchslim.finetune_(lm.model, LoraConfig(selector=Selector(include="re:.*\\.mlp")), task=lm.task,
                            train=dataclass_steps(1))
    assert not branches(lm.model)
    assert all(p.requires_grad for p in lm.model.parameters())      # a refused adapter leaves the model as it was


@pytest.mark.slow
def test_a_lora_recipe_stage_merges_and_the_artifact_reloads(tmp_path) -> None:
    from torchslim.recipes import RunOptions, run_recipe
    from torchslim.recipes.recipe import Recipe

    recipe = Recipe.from_dict({"recipe": "lora", "stages": [
        {"finetune": {"_type": "LoraConfig", "r": 4, "merge": True,
                      "train": {"steps": 3, "batch_size": 2, "gradient_checkpointing": True}}}]})
    result = run_recipe(recipe, "tiny-llama", tmp_path / "out", RunOptions(iters=2, warmup=1, decode_tokens=2))
    assert not branches(result.model)                              # merged: a plain model
    again = torchslim.load(tmp_path / "out")
    ids = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, result.model(ids).logits, atol=1e-5)
    history = torchslim.artifact.read_manifest(tmp_path / "out")["history"]
    stage = [h for h in history if h["name"] == "LoraConfig"][-1]
    assert stage["details"]["records"][0]["trainable_params"] > 0 and stage["details"]["records"][1]["merge"]
