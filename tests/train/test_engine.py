"""The training loop: loss goes down, accumulation, hooks, clipping, evaluation, checkpoints and resume."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError
from torchslim.train import LambdaHook, TrainConfig, Trainer, TrainHook
from torchslim.train.checkpoint import latest_checkpoint, list_checkpoints

from _train_helpers import MLP, mlp, toy_task


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=16, lr=1e-2, optimizer="sgd", schedule="constant", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_finetune_lowers_loss_and_raises_accuracy() -> None:
    task, model = toy_task(), mlp(0)
    before = task.evaluate(model)
    res = Trainer(model, task, _cfg(steps=40, batch_size=32, lr=1e-2, optimizer="adamw", schedule="cosine",
                                    warmup_steps=4, eval_every=20)).fit()
    after = res.final_metrics
    assert res.final_step == 40 and len(res.losses) == 40
    assert [e["step"] for e in res.evals] == [20, 40]
    assert after["loss"] < 0.5 * before["loss"]
    assert after["top1"] > before["top1"] + 20
    assert sum(res.losses[-5:]) / 5 < sum(res.losses[:5]) / 5


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_grad_accumulation_equals_one_big_batch(optimizer: str) -> None:
    task = toy_task()
    big, accum = mlp(1), mlp(1)
    Trainer(big, task, _cfg(steps=3, batch_size=32, grad_accum=1, optimizer=optimizer)).fit()
    Trainer(accum, task, _cfg(steps=3, batch_size=32, grad_accum=2, optimizer=optimizer)).fit()
    for k, v in _weights(big).items():
        torch.testing.assert_close(_weights(accum)[k], v, rtol=0, atol=1e-6)


def test_one_sgd_step_matches_hand_computation() -> None:
    """Accumulation 2 x batch 8 == one SGD step on the first 16 samples of the stream, by hand."""
    task, model, ref = toy_task(), mlp(2), mlp(2)
    Trainer(model, task, _cfg(steps=1, batch_size=16, grad_accum=2, lr=0.1, momentum=0.0)).fit()
    batch = next(task.train_batches(16, seed=0))
    loss = F.cross_entropy(ref(batch["x"]), batch["y"])
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for (name, p), g in zip(ref.named_parameters(), grads):
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), p.detach() - 0.1 * g,
                                   rtol=0, atol=1e-6)


def test_hook_extra_loss_is_added() -> None:
    task, plain, hooked = toy_task(), mlp(3), mlp(3)
    seen: list[tuple[int, ...]] = []

    def const(trainer: Trainer, batch: dict) -> torch.Tensor:
        seen.append(tuple(trainer.last_output.shape))
        return torch.tensor(2.5)

    r0 = Trainer(plain, task, _cfg(steps=4)).fit()
    r1 = Trainer(hooked, task, _cfg(steps=4), hooks=[LambdaHook(extra_loss=const)]).fit()
    assert seen == [(16, 3)] * 4                     # the model output of that micro-batch
    for a, b in zip(r0.losses, r1.losses):
        assert b == pytest.approx(a + 2.5, abs=1e-5)
    for k, v in _weights(plain).items():             # a constant adds no gradient
        torch.testing.assert_close(_weights(hooked)[k], v, rtol=0, atol=0)


def test_hook_penalty_changes_gradients_like_l2() -> None:
    """An L2 penalty hook on the matrices == SGD's coupled weight decay (which skips biases)."""
    task, wd, hooked = toy_task(), mlp(4), mlp(4)
    lam = 0.05

    def l2(trainer: Trainer, batch: dict) -> torch.Tensor:
        return 0.5 * lam * sum((p**2).sum() for p in trainer.model.parameters() if p.ndim >= 2)

    Trainer(wd, task, _cfg(steps=5, weight_decay=lam)).fit()
    Trainer(hooked, task, _cfg(steps=5), hooks=[LambdaHook(extra_loss=l2)]).fit()
    for k, v in _weights(wd).items():
        torch.testing.assert_close(_weights(hooked)[k], v, rtol=0, atol=1e-6)


class _Recorder(TrainHook):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_start(self, trainer: Trainer) -> None:
        assert trainer.optimizer is not None
        self.calls.append("start")

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        assert trainer.step == step
        self.calls.append(f"step{step}")

    def on_eval(self, trainer: Trainer, step: int, metrics: dict) -> None:
        self.calls.append(f"eval{step}")

    def on_end(self, trainer: Trainer) -> None:
        self.calls.append("end")


def test_hook_call_order() -> None:
    rec = _Recorder()
    Trainer(mlp(0), toy_task(), _cfg(steps=4, eval_every=2), hooks=[rec]).fit()
    assert rec.calls == ["start", "step1", "step2", "eval2", "step3", "step4", "eval4", "end"]


def test_max_grad_norm_clips_the_update() -> None:
    model, ref = mlp(5), _weights(mlp(5))
    Trainer(model, toy_task(), _cfg(steps=1, lr=1.0, momentum=0.0, max_grad_norm=1e-3)).fit()
    delta = torch.cat([(v - ref[k]).flatten() for k, v in _weights(model).items()])
    assert delta.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_bf16_autocast_trains() -> None:
    task, model = toy_task(), mlp(6)
    res = Trainer(model, task, _cfg(steps=20, lr=5e-3, optimizer="adamw", bf16=True)).fit()
    assert all(math.isfinite(x) for x in res.losses)
    assert res.final_metrics["loss"] < task.evaluate(mlp(6))["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_train_data_override_and_exhaustion() -> None:
    task = toy_task()
    batches = [{"x": task.train_x[i:i + 8], "y": task.train_y[i:i + 8]} for i in range(0, 32, 8)]
    res = Trainer(mlp(0), task, _cfg(steps=6, batch_size=8), train_data=batches).fit()   # a list repeats
    assert res.final_step == 6
    with pytest.raises(TorchSlimError, match="ran out"):
        Trainer(mlp(0), task, _cfg(steps=6, batch_size=8), train_data=iter(batches)).fit()


class _Crash(TrainHook):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt("simulated crash")


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Dropout + AdamW + cosine: resume needs optimizer state, the data position and the RNG schedule."""
    task = toy_task()
    kw = dict(steps=7, batch_size=16, grad_accum=2, lr=1e-2, optimizer="adamw", schedule="cosine",
              warmup_steps=2, eval_every=3, checkpoint_every=2, keep_checkpoints=2)
    full = mlp(7, dropout=0.3)
    r_full = Trainer(full, task, _cfg(**kw)).fit()

    ckdir = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        Trainer(mlp(7, dropout=0.3), task, _cfg(**kw, checkpoint_dir=str(ckdir)), hooks=[_Crash(5)]).fit()
    assert [s for s, _ in list_checkpoints(ckdir)] == [2, 4]
    resumed = mlp(99, dropout=0.3)                   # different init: everything comes from the checkpoint
    r_res = Trainer(resumed, task, _cfg(**kw, checkpoint_dir=str(ckdir), resume=True)).fit()

    assert r_res.resumed_from == 4 and r_res.final_step == 7
    for k, v in _weights(full).items():
        assert torch.equal(_weights(resumed)[k], v), k
    assert r_res.losses == r_full.losses
    assert r_res.evals == r_full.evals
    assert [s for s, _ in list_checkpoints(ckdir)] == [6, 7]     # keep_checkpoints=2, final one written


def test_checkpoint_files_are_safetensors_and_json(tmp_path: Path) -> None:
    Trainer(mlp(0), toy_task(), _cfg(steps=2, optimizer="lion", lr=1e-3, checkpoint_dir=str(tmp_path))).fit()
    path = latest_checkpoint(tmp_path)
    assert path is not None and path.name == "step-00000002"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    for f in path.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), "pickle protocol header"
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["_type"] == "TrainConfig"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp leftovers


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_a_no_op(tmp_path: Path) -> None:
    cfg = _cfg(steps=3, checkpoint_dir=str(tmp_path), resume=True)
    r1 = Trainer(mlp(0), toy_task(), cfg).fit()
    assert r1.resumed_from is None and r1.final_step == 3
    model = mlp(1)
    r2 = Trainer(model, toy_task(), cfg).fit()
    assert r2.resumed_from == 3 and r2.losses == r1.losses


def test_resume_into_a_different_model_is_a_one_line_error(tmp_path: Path) -> None:
    Trainer(mlp(0), toy_task(), _cfg(steps=1, checkpoint_dir=str(tmp_path))).fit()
    with pytest.raises(ArtifactError, match="does not match"):
        Trainer(MLP(hidden=16), toy_task(), _cfg(steps=2, checkpoint_dir=str(tmp_path), resume=True)).fit()


def test_trainer_argument_errors() -> None:
    with pytest.raises(TorchSlimError):
        Trainer("not a model", toy_task(), _cfg())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Trainer(mlp(0), toy_task(), {"steps": 3})  # type: ignore[arg-type]
    frozen = mlp(0).requires_grad_(False)
    with pytest.raises(TorchSlimError, match="no trainable"):
        Trainer(frozen, toy_task(), _cfg()).fit()


def test_fresh_run_refuses_a_folder_with_old_checkpoints(tmp_path: Path) -> None:
    Trainer(mlp(0), toy_task(), _cfg(steps=2, checkpoint_dir=str(tmp_path))).fit()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(mlp(0), toy_task(), _cfg(steps=4, checkpoint_dir=str(tmp_path))).fit()


def test_evaluation_errors_propagate() -> None:
    class Broken(type(toy_task())):  # type: ignore[misc]
        def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
            raise RuntimeError("eval exploded")

    base = toy_task()
    task = Broken(base.train_x, base.train_y, base.eval_x, base.eval_y)
    model = mlp(0)
    with pytest.raises(RuntimeError, match="eval exploded"):
        Trainer(model, task, _cfg(steps=2)).fit()
    assert model.training                                    # restored after the failed evaluation


# -- loss terms, parameter groups, teacher --------------------------------------------------------
class _Weigh(TrainHook):
    """Halves the task term and adds a named term computed from the captured output via the task."""

    def update_losses(self, trainer, batch, terms):
        terms["task"] = terms["task"] * 0.5
        terms["again"] = trainer.task.loss_from_output(trainer.last_output, batch) * 0.0 + 1.0


def test_hooks_weight_and_add_named_terms_that_are_logged_separately() -> None:
    cfg = TrainConfig(steps=3, batch_size=16, lr=1e-2, progress=False, eval_at_end=False)
    plain = Trainer(mlp(0), toy_task(), cfg).fit()
    weighed = Trainer(mlp(0), toy_task(), cfg, hooks=[_Weigh()]).fit()
    assert [set(t) for t in weighed.loss_terms] == [{"task", "again"}] * 3
    assert weighed.loss_terms[0]["task"] == pytest.approx(plain.loss_terms[0]["task"] * 0.5, rel=1e-6)
    assert weighed.loss_terms[0]["again"] == pytest.approx(1.0)
    assert weighed.losses[0] == pytest.approx(weighed.loss_terms[0]["task"] + 1.0, rel=1e-6)


def test_removing_every_term_is_an_error() -> None:
    drop = LambdaHook()
    drop.update_losses = lambda trainer, batch, terms: terms.clear()
    with pytest.raises(TorchSlimError, match="every loss term was removed"):
        Trainer(mlp(0), toy_task(), TrainConfig(steps=1, batch_size=8, progress=False), hooks=[drop]).fit()


def test_parameter_groups_get_their_own_learning_rate() -> None:
    from torchslim.train import ParamGroup

    model = mlp(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(steps=2, batch_size=16, lr=1e-2, schedule="constant", progress=False, eval_at_end=False,
                      param_groups=(ParamGroup(params=r"fc1\..*", lr=0.0),))
    trainer = Trainer(model, toy_task(), cfg, param_groups=[ParamGroup(params="fc2.bias", lr_scale=2.0)])
    trainer.fit()
    assert torch.equal(model.fc1.weight, before["fc1.weight"]) and torch.equal(model.fc1.bias, before["fc1.bias"])
    assert not torch.equal(model.fc2.weight, before["fc2.weight"])
    lrs = {g["group"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {r"fc1\..*": 0.0, "fc2.bias": pytest.approx(2e-2), "default": pytest.approx(1e-2)}


def test_a_teacher_runs_in_eval_mode_without_gradients_and_its_output_is_reused_per_micro_batch() -> None:
    teacher = mlp(1, dropout=0.5).train()
    calls = []

    def kd(trainer, batch):
        out = trainer.teacher_output(batch)
        assert trainer.teacher_output(batch) is out
        calls.append(out.requires_grad)
        return torch.nn.functional.mse_loss(trainer.last_output, out)

    res = Trainer(mlp(0), toy_task(), TrainConfig(steps=2, batch_size=8, progress=False, eval_at_end=False),
                  hooks=[LambdaHook(extra_loss=kd)], teacher=teacher).fit()
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())   # its flags: untouched
    assert calls == [False, False] and set(res.loss_terms[0]) == {"task", "LambdaHook"}
    with pytest.raises(ConfigError, match="needs a teacher"):
        Trainer(mlp(0), toy_task(), TrainConfig(steps=1, batch_size=8, progress=False),
                hooks=[LambdaHook(extra_loss=kd)]).fit()
    same = mlp(0)
    with pytest.raises(ConfigError, match="teacher is the model being trained"):
        Trainer(same, toy_task(), TrainConfig(steps=1, batch_size=8, progress=False), teacher=same).fit()


def test_resuming_with_other_settings_is_refused_unless_forced(tmp_path: Path) -> None:
    ck = str(tmp_path / "ck")
    Trainer(mlp(0), toy_task(), _cfg(steps=4, checkpoint_dir=ck, checkpoint_every=2)).fit()
    for change, needle in (({"lr": 0.5}, "lr 0.01 -> 0.5"), ({"optimizer": "adamw"}, "optimizer 'sgd' -> 'adamw'"),
                           ({"batch_size": 8}, "batch_size 16 -> 8"), ({"seed": 3}, "seed 0 -> 3")):
        with pytest.raises(ConfigError, match=needle):
            Trainer(mlp(0), toy_task(), _cfg(steps=6, checkpoint_dir=ck, resume=True, **change)).fit()
    res = Trainer(mlp(0), toy_task(), _cfg(steps=6, checkpoint_dir=ck, resume=True, force_resume=True,
                                           optimizer="adamw")).fit()
    assert res.resumed_from == 4 and res.final_step == 6


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    Trainer(mlp(0), toy_task(), _cfg(steps=4, checkpoint_dir=str(ck), checkpoint_every=2, keep_checkpoints=3)).fit()
    newest = latest_checkpoint(ck)
    (newest / "model.safetensors").write_bytes(b"truncated")
    res = Trainer(mlp(0), toy_task(), _cfg(steps=4, checkpoint_dir=str(ck), resume=True)).fit()
    assert res.resumed_from == 2
