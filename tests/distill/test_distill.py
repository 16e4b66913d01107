"""Distillation end to end on tiny models: white-box terms and layer mapping, projections for other widths (removed
after training), teachers as artifacts or callables, the top-k teacher cache, a shallower student, and black-box
distillation from a teacher that only returns text."""
from __future__ import annotations

import copy

import pytest
import torch

import torchslim
from torchslim import BlackBoxDistillConfig, DistillConfig, StructuredConfig, TrainConfig
from torchslim.core.errors import ConfigError
from torchslim.core.state import state_of
from torchslim.distill.hook import PROJ, layer_pairs
from torchslim.tasks.causal_lm import shifted_nll
from torchslim.zoo.tiny import build_tiny_llama, tiny_llama

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "All that glitters is not gold. Where there is a will, there is a way. ") * 30


def _train(steps: int = 8, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "batch_size": 4, "lr": 3e-3, "progress": False, "seed": 1, **kw})


def _kl_to(teacher, student, task) -> float:
    from torchslim.distill.losses import kd_kl

    batch = task.calibration_batches(4, 4)[0]
    with torch.no_grad():
        return kd_kl(student(**batch).logits, teacher(**batch).logits).item()


@pytest.fixture(scope="module")
def lm():
    loaded = tiny_llama(0)
    teacher = loaded.model
    torchslim.finetune_(teacher, torchslim.FinetuneConfig(), task=loaded.task, train=_train(30, batch_size=8))
    teacher.eval()
    return loaded, teacher


def test_layer_pairs_map_student_blocks_to_teacher_blocks_at_the_same_depth() -> None:
    assert layer_pairs(3, 6, "uniform") == [(0, 1), (1, 3), (2, 5)]
    assert layer_pairs(2, 2, "uniform") == [(0, 0), (1, 1)]
    assert layer_pairs(3, 6, "last") == [(2, 5)]


def test_white_box_distillation_moves_the_student_toward_the_teacher(lm) -> None:
    loaded, teacher = lm
    student = build_tiny_llama(1)                      # another random model of the same shape
    torchslim.prune_(student, StructuredConfig(targets=("neurons",), ratio=0.5))
    before = _kl_to(teacher, student, loaded.task)
    cfg = DistillConfig(output_weight=1.0, hidden_weight=1.0, relation_weight=1.0, relation_heads=2, train=_train(20))
    torchslim.distill_(student, cfg, task=loaded.task, teacher=teacher)
    entry = state_of(student).history[-1]
    assert entry.kind == "distillation" and set(entry.details["final_loss_terms"]) == {"kd_output", "kd_hidden",
                                                                                      "kd_relation"}
    assert _kl_to(teacher, student, loaded.task) < 0.7 * before
    assert all(p.requires_grad for p in teacher.parameters())       # the teacher's own flags are left alone
    assert not hasattr(student, PROJ)


def test_hidden_states_of_another_width_go_through_projections_that_training_removes(lm) -> None:
    loaded, teacher = lm
    student = build_tiny_llama(1, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    names_before = set(dict(student.named_parameters()))
    seen = {}

    class Peek(torchslim.train.TrainHook):
        def on_step_end(self, trainer, step):
            seen["proj"] = hasattr(trainer.model, PROJ)

    torchslim.distill_(student, DistillConfig(hidden_weight=1.0, train=_train(3)), task=loaded.task, teacher=teacher,
                       hooks=[Peek()])
    assert seen["proj"] is True
    assert set(dict(student.named_parameters())) == names_before


def test_a_teacher_can_be_an_artifact_folder_or_a_callable(lm, tmp_path) -> None:
    loaded, teacher = lm
    torchslim.save(teacher, tmp_path / "teacher")
    a = copy.deepcopy(teacher)
    torch.nn.init.normal_(a.lm_head.weight, std=0.02)
    b = copy.deepcopy(a)
    torchslim.distill_(a, DistillConfig(train=_train(4)), task=loaded.task, teacher=str(tmp_path / "teacher"))
    torchslim.distill_(b, DistillConfig(train=_train(4)), task=loaded.task, teacher=lambda batch: teacher(**batch))
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=k)


def test_the_teacher_cache_stores_top_k_logits_once_and_reuses_them(lm, tmp_path) -> None:
    loaded, teacher = lm
    cache = tmp_path / "cache"
    cfg = DistillConfig(teacher_cache=str(cache), cache_topk=16, train=_train(3))
    s1 = copy.deepcopy(teacher)
    torch.nn.init.normal_(s1.lm_head.weight, std=0.02)
    s2 = copy.deepcopy(s1)
    torchslim.distill_(s1, cfg, task=loaded.task, teacher=teacher)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 3 and all(f.endswith(".safetensors") for f in files)

    def broken(batch):
        raise AssertionError("the teacher ran although every batch is cached")

    torchslim.distill_(s2, cfg, task=loaded.task, teacher=broken)
    assert sorted(p.name for p in cache.iterdir()) == files


def test_a_shallower_student_keeps_evenly_spaced_blocks(lm) -> None:
    loaded, _ = lm
    deep = build_tiny_llama(0, num_hidden_layers=6)
    ids = [id(layer) for layer in deep.model.layers]
    torchslim.prune_(deep, StructuredConfig(targets=("layers",), ratio=0.5, importance="uniform"))
    assert len(deep.model.layers) == 3 and deep.config.num_hidden_layers == 3
    assert [id(layer) for layer in deep.model.layers] == [ids[0], ids[2], ids[5]]
    with pytest.raises(ConfigError, match="uniform"):
        StructuredConfig(targets=("neurons",), importance="uniform")


def test_distillation_without_a_teacher_or_with_nothing_to_learn_is_refused(lm) -> None:
    loaded, teacher = lm
    with pytest.raises(ConfigError, match="teacher"):
        torchslim.distill_(copy.deepcopy(teacher), DistillConfig(train=_train(1)), task=loaded.task)
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        DistillConfig(output_weight=0.0)
    with pytest.raises(ConfigError, match="not a callable"):
        torchslim.distill_(copy.deepcopy(teacher), DistillConfig(hidden_weight=1.0, train=_train(1)),
                           task=loaded.task, teacher=lambda b: teacher(**b))


def test_black_box_distillation_trains_on_the_text_of_a_teacher_without_logits(lm) -> None:
    loaded, _ = lm
    asked = []

    def teacher(prompts: list[str]) -> list[str]:          # text only: no logits, no model
        asked.extend(prompts)
        return [" all that glitters is not gold." * 4 for _ in prompts]

    student, control = copy.deepcopy(lm[1]), copy.deepcopy(lm[1])
    from torchslim.tasks.causal_lm import CausalLMTask

    task = CausalLMTask(loaded.tokenizer, seq_len=32, calibration_text=TEXT, eval_text=TEXT)
    target = torch.tensor([loaded.tokenizer(" all that glitters is not gold." * 4)["input_ids"]])

    def nll(model=student) -> float:
        with torch.no_grad():
            return shifted_nll(model(input_ids=target).logits, target).item()

    before = nll()
    torchslim.finetune_(control, torchslim.FinetuneConfig(), task=task, train=_train(15))   # raw text, same budget
    torchslim.distill_(student, BlackBoxDistillConfig(n_prompts=3, prompt_words=4, seq_len=32, train=_train(15)),
                       task=task, teacher=teacher)
    assert asked == ["The quick brown fox", "A journey of a", "All that glitters is"]
    rec = state_of(student).history[-1].details["records"][0]
    assert rec["prompts"] == 3 and rec["generated_tokens"] > 100
    assert nll() < 0.9 * before and nll() < nll(control)     # it learned the teacher's text, not the raw text


def test_black_box_distillation_refuses_a_teacher_returning_the_wrong_thing(lm) -> None:
    loaded, teacher = lm
    from torchslim.tasks.causal_lm import CausalLMTask

    task = CausalLMTask(loaded.tokenizer, seq_len=32, calibration_text=TEXT)
    with pytest.raises(ConfigError, match="one string per prompt"):
        torchslim.distill_(copy.deepcopy(teacher), BlackBoxDistillConfig(n_prompts=3, train=_train(1)), task=task,
                           teacher=lambda prompts: "one string for all")
