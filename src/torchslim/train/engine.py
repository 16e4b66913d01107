"""The one training loop every training-time technique uses (fine-tuning, distillation, QAT, pruning).

Per optimizer step ``s`` (0-based) on every rank:

1. set the learning rate from the schedule, reseed the RNG from ``(seed, s, rank)``;
2. for each of ``grad_accum`` micro-batches: named loss terms (``task`` from ``task.loss``, then
   each hook's, see :mod:`torchslim.train.hooks`), backward of ``sum / grad_accum`` (DDP gradient
   sync only on the last one);
3. clip, optimizer step, ``hook.on_step_end``; evaluation (rank 0, broadcast) and
   checkpoints (rank 0 writes, all ranks wait) when due.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from torchslim.core.bounds import check_activation_memory, model_width
from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError
from torchslim.core.rng import mix_seed
from torchslim.core.surgery import model_device
from torchslim.tasks.base import Batch, Task
from torchslim.train import checkpoint as ckpt
from torchslim.train.config import ParamGroup, TrainConfig
from torchslim.train.data import cycle_batches, move_to
from torchslim.train.distributed import (
    DistContext, all_reduce_means, barrier, broadcast_json, env_world_size, init_distributed, wrap_ddp,
)
from torchslim.train.fsdp import Sharded, choose_parallel, clip_grad_norm, gather_state, shard, sync_replicated, unshard
from torchslim.train.hooks import TrainHook
from torchslim.train.optim import build_optimizer, set_lr
from torchslim.train.recompute import gradient_checkpointing

log = logging.getLogger("torchslim.train")

# A data source: an iterable of per-rank micro-batches, or a callable like Task.train_batches.
TrainData = Iterable[Batch] | Callable[..., Iterator[Batch]]


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did.

    ``losses[i]`` is the mean training loss (task + hook losses, averaged over micro-batches
    and ranks) of optimizer step ``i + 1``, and ``loss_terms[i]`` each named term of it;
    ``evals`` holds ``{"step": s, **task.evaluate()}``.
    """

    final_step: int
    losses: list[float] = field(default_factory=list)
    loss_terms: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    resumed_from: int | None = None
    world_size: int = 1
    parallel: str = "none"          # how the processes shared the work: none (1 process), ddp or fsdp

    @property
    def final_metrics(self) -> dict[str, float]:
        return dict(self.evals[-1]) if self.evals else {}


class Trainer:
    """Train ``model`` on ``task`` (its ``loss`` and ``train_batches``) per ``config``.

    ``train_data`` replaces ``task.train_batches``: a callable with the same signature, or an
    iterable of this rank's micro-batches (re-iterated each epoch). The global torch RNG is
    reseeded every step (from ``config.seed``, the step and the rank), which is what makes
    resumed runs (dropout included) identical to uninterrupted ones. ``fit`` moves the model to
    the training device and leaves it there, in training mode. With ``config.gradient_checkpointing``
    the model's transformer blocks recompute their activations in backward during ``fit`` only
    (:mod:`torchslim.train.recompute`).

    ``teacher`` (a model or a callable ``batch -> output``) is moved to the training device and
    put in eval mode, and runs without gradients; hooks get its output with :meth:`teacher_output`.
    ``param_groups`` (:class:`~torchslim.train.config.ParamGroup`, from the technique) give some
    parameters their own learning rate, before the config's own ``param_groups``.

    With several processes ``config.parallel`` picks DDP or FSDP (:mod:`torchslim.train.fsdp`): FSDP shards the
    model in place during ``fit`` and gives it back whole; evaluation then runs on every rank (rank 0's metrics
    count) because a sharded forward needs all of them.

    Attributes available to hooks: ``model`` (unwrapped), ``wrapped`` (DDP or the model),
    ``optimizer``, ``config``, ``task``, ``dist`` (rank/world/device), ``device``, ``step``
    (completed optimizer steps), ``teacher`` and ``last_output`` (model output of the current
    micro-batch).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: TrainConfig | None = None,
        hooks: Sequence[TrainHook] = (),
        train_data: TrainData | None = None,
        *,
        device: torch.device | str | None = None,
        find_unused_parameters: bool = False,
        teacher: nn.Module | Callable[[Batch], Any] | None = None,
        param_groups: Sequence[ParamGroup] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TorchSlimError(f"Trainer needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.task = task
        self.config = config if config is not None else TrainConfig()
        if not isinstance(self.config, TrainConfig):
            raise ConfigError(f"Trainer needs a TrainConfig, got {type(self.config).__name__}")
        self.hooks = list(hooks)
        self.train_data = train_data
        self._device_arg = device
        self._find_unused = find_unused_parameters
        self.wrapped: nn.Module = model
        self.optimizer: torch.optim.Optimizer | None = None
        self.dist = DistContext()
        self.device = torch.device("cpu")
        self.step = 0
        self.last_output: Any = None
        self.teacher = teacher
        self.param_groups = tuple(param_groups)
        self._capture = False
        self._teacher_cache: tuple[int, Any] | None = None
        self.parallel = "none"
        self._sharded: Sharded | None = None

    # -- public --------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run the training loop to ``config.steps`` and return the history."""
        device = self._device_arg
        if device is None and env_world_size() == 1 and not _dist_initialized():
            device = model_device(self.model)      # single process: train where the model already is
        self.dist = init_distributed(device)
        self.device = self.dist.device
        shared = broadcast_json(self.config.checkpoint_dir, self.dist)     # rank 0's folder: one set of checkpoints
        if shared != self.config.checkpoint_dir:
            self.config = dataclasses.replace(self.config, checkpoint_dir=shared)
        handle = self.model.register_forward_hook(self._capture_output)
        try:
            with gradient_checkpointing(self.model, self.config.gradient_checkpointing):
                return self._fit()
        finally:
            handle.remove()
            self.last_output = None

    # -- loop ----------------------------------------------------------------------------
    def _fit(self) -> TrainResult:
        cfg, t0 = self.config, time.perf_counter()
        self.step = 0
        self.model.to(self.device)
        self._place_teacher()
        self.parallel = choose_parallel(cfg.parallel, self.model, self.dist, self.hooks)
        self._sharded = shard(self.model, self.dist) if self.parallel == "fsdp" else None
        self.optimizer = build_optimizer(self.model, cfg, self.param_groups)
        losses, terms, evals, hook_states, resumed = self._maybe_resume()
        self.wrapped = wrap_ddp(self.model, self.dist, self._find_unused) if self.parallel == "ddp" else self.model
        for h in self.hooks:
            h.on_start(self)
        for h, st in zip(self.hooks, hook_states):
            h.restore_state(st)
        self.model.train()
        data = self._micro_batches(skip=self.step * cfg.grad_accum)
        with self._progress() as bar:
            while self.step < cfg.steps:
                loss, parts = self._train_step(data)
                self.step += 1
                losses.append(loss)
                terms.append(parts)
                for h in self.hooks:
                    h.on_step_end(self, self.step)
                self._report(bar, loss, parts)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    evals.append(self._evaluate())
                if self._checkpoint_due():
                    self._save(losses, terms, evals)
        if cfg.eval_at_end and (not evals or evals[-1]["step"] != self.step):
            evals.append(self._evaluate())
        for h in self.hooks:
            h.on_end(self)
        if self._sharded is not None:
            self.optimizer.zero_grad(set_to_none=True)
            unshard(self.model, self._sharded)       # the model whole again on every rank, a plain module
            self._sharded = None
        return TrainResult(self.step, losses, terms, evals, time.perf_counter() - t0, resumed, self.dist.world_size,
                           self.parallel)

    def _train_step(self, data: Iterator[Batch]) -> tuple[float, dict[str, float]]:
        cfg, opt = self.config, self.optimizer
        assert opt is not None
        set_lr(opt, self.step, cfg)
        _reseed(mix_seed(cfg.seed, self.step, self.dist.rank), self.device)
        opt.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for i in range(cfg.grad_accum):
            batch = move_to(next(data), self.device)
            last = i == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.wrapped is self.model else self.wrapped.no_sync()
            with sync:
                terms = self._loss_terms(batch)
                loss = torch.stack(list(terms.values())).sum()
                (loss / cfg.grad_accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v.detach()
        if self._sharded is not None and self._sharded.replicated:
            sync_replicated(self._sharded, self.dist.world_size)
            if cfg.max_grad_norm is not None:
                clip_grad_norm([p for g in opt.param_groups for p in g["params"]], cfg.max_grad_norm)
        elif cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.max_grad_norm)
        opt.step()
        names = list(sums)
        means = all_reduce_means(torch.stack([sums[k] for k in names]) / cfg.grad_accum, self.dist)
        parts = dict(zip(names, means))
        return float(sum(means)), parts

    def _loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar loss terms of one micro-batch (float32): ``task``, then the hooks'."""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)
        with autocast:
            self._capture = True
            try:
                terms = {"task": self.task.loss(self.wrapped, batch)}
            finally:
                self._capture = False
            for h in self.hooks:
                extra = h.extra_loss(self, batch)
                if extra is not None:
                    terms[h.name if h.name not in terms else f"{h.name}.{len(terms)}"] = extra
                h.update_losses(self, batch, terms)
        self.last_output = None
        self._teacher_cache = None
        if not terms:
            raise TorchSlimError("every loss term was removed by the hooks: nothing to train on")
        for k, v in terms.items():
            if not isinstance(v, torch.Tensor) or v.numel() != 1:
                raise TorchSlimError(f"loss term '{k}' must be a scalar tensor")
        return {k: v.float().reshape(()) for k, v in terms.items()}

    # -- teacher -------------------------------------------------------------------------
    def _place_teacher(self) -> None:
        t = self.teacher
        if isinstance(t, nn.Module):
            if t is self.model:
                raise ConfigError("the teacher is the model being trained: pass a copy (e.g. the uncompressed model)")
            t.to(self.device)
            t.eval()                    # it runs under no_grad: its parameters' own flags are left as they are
        elif t is not None and not callable(t):
            raise ConfigError(f"teacher must be an nn.Module or a callable, got {type(t).__name__}")

    def teacher_output(self, batch: Batch) -> Any:
        """The teacher's output for ``batch`` (no gradients; computed once per micro-batch)."""
        if self.teacher is None:
            raise ConfigError("this technique needs a teacher: pass teacher=<model or callable>")
        if self._teacher_cache is not None and self._teacher_cache[0] == id(batch):
            return self._teacher_cache[1]
        with torch.no_grad():
            out = self.task.forward(self.teacher, batch) if isinstance(self.teacher, nn.Module) else self.teacher(batch)
        self._teacher_cache = (id(batch), out)
        return out

    def _capture_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._capture:
            self.last_output = output

    def _evaluate(self) -> dict[str, float]:
        metrics: dict[str, Any] | None = None
        error: BaseException | None = None
        if self.dist.is_main or self._sharded is not None:     # a sharded forward needs every rank
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in self.task.evaluate(self.model).items()}
                if self.dist.is_main:
                    log.info("step %d eval %s", self.step, _fmt(metrics))
            except Exception as e:  # noqa: BLE001 - tell the other ranks before raising
                error, metrics = e, {"__error__": f"{type(e).__name__}: {e}"}
            finally:
                self.model.train(was_training)
        metrics = broadcast_json(metrics, self.dist)
        if error is not None:
            raise error
        if "__error__" in metrics:
            raise TorchSlimError(f"evaluation failed on rank 0: {metrics['__error__']}")
        metrics = {"step": self.step, **metrics}
        for h in self.hooks:
            h.on_eval(self, self.step, metrics)
        return metrics

    # -- data ----------------------------------------------------------------------------
    def _micro_batches(self, skip: int) -> Iterator[Batch]:
        cfg, world = self.config, self.dist.world_size
        micro_global = cfg.batch_size // cfg.grad_accum
        if micro_global % world:
            raise ConfigError(
                f"batch_size / grad_accum = {micro_global} must be divisible by the number of processes ({world})"
            )
        per_rank = micro_global // world
        check_activation_memory(per_rank, getattr(self.task, "seq_len", 1) or 1, model_width(self.model),
                                "TrainConfig.batch_size")
        src = self.train_data
        if src is None:
            stream = self.task.train_batches(per_rank, seed=cfg.seed, rank=self.dist.rank, world_size=world)
        elif callable(src):
            stream = src(per_rank, seed=cfg.seed, rank=self.dist.rank, world_size=world)
        else:
            stream = cycle_batches(src)
        return itertools.islice(stream, skip, None)

    # -- checkpoints ---------------------------------------------------------------------
    def _maybe_resume(self) -> tuple[list[float], list[dict[str, float]], list[dict[str, float]],
                                     list[dict[str, Any]], int | None]:
        cfg = self.config
        found = ckpt.list_checkpoints(cfg.checkpoint_dir) if cfg.resume and cfg.checkpoint_dir else []
        if not found:
            if cfg.resume:
                log.info("resume: no checkpoint in %s, starting from step 0", cfg.checkpoint_dir)
            elif cfg.checkpoint_dir and ckpt.list_checkpoints(cfg.checkpoint_dir):
                raise ConfigError(f"checkpoint_dir {cfg.checkpoint_dir} already holds checkpoints; "
                                  "set resume=True to continue them or use an empty folder")
            return [], [], [], [{} for _ in self.hooks], None
        doc, path = self._load_newest_good([p for _, p in reversed(found)])
        self.step = int(doc["step"])
        hook_states = list(doc.get("hooks", []))
        if len(hook_states) != len(self.hooks):
            if any(hook_states):
                raise ConfigError(f"{path}: saved with {len(hook_states)} hook(s), resuming with {len(self.hooks)}")
            hook_states = [{} for _ in self.hooks]       # stateless hooks may come and go
        log.info("resumed from %s (step %d)", path, self.step)
        return (list(doc.get("losses", [])), list(doc.get("loss_terms", [])), list(doc.get("evals", [])),
                hook_states, self.step)

    def _load_newest_good(self, paths: list[Any]) -> tuple[dict[str, Any], Any]:
        """Load the newest checkpoint that reads back, refusing one made with other settings (unless
        ``force_resume``); a damaged newest checkpoint falls back to the one before it."""
        cfg, error = self.config, None
        for path in paths:
            try:
                saved = ckpt.read_state(path)
            except ArtifactError as e:
                error = e
                log.warning("%s; trying the previous checkpoint", e)
                continue
            changed = cfg.resume_differences(saved.get("config", {}))
            if changed and not cfg.force_resume:
                raise ConfigError(f"{path} was made with other settings ({'; '.join(changed)}); set "
                                  "force_resume=True to continue with the new ones")
            same_optimizer = not any(c.startswith("optimizer ") for c in changed)
            if changed:
                log.warning("resuming %s with changed settings: %s", path, "; ".join(changed))
            try:
                opt = self.optimizer if same_optimizer else None
                return ckpt.load_checkpoint(path, self.model, opt, sharded=self._sharded is not None), path
            except ArtifactError as e:
                error = e
                log.warning("%s; trying the previous checkpoint", e)
        raise ArtifactError(f"no readable checkpoint in {cfg.checkpoint_dir} ({error})")

    def _checkpoint_due(self) -> bool:
        cfg = self.config
        if not cfg.checkpoint_dir:
            return False
        return self.step == cfg.steps or bool(cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)

    def _save(self, losses: list[float], terms: list[dict[str, float]], evals: list[dict[str, float]]) -> None:
        cfg = self.config
        assert cfg.checkpoint_dir is not None and self.optimizer is not None
        whole = gather_state(self.model, self.optimizer) if self._sharded is not None else None   # all ranks
        if self.dist.is_main:
            state = {
                "losses": losses,
                "loss_terms": terms,
                "evals": evals,
                "hooks": [h.checkpoint_state() for h in self.hooks],
                "world_size": self.dist.world_size,
                "parallel": self.parallel,
                "config": cfg.to_dict(),
            }
            weights, opt = whole if whole is not None else (self.model, self.optimizer)
            path = ckpt.save_checkpoint(cfg.checkpoint_dir, self.step, weights, opt, state, keep=cfg.keep_checkpoints)
            log.info("checkpoint %s", path)
        barrier(self.dist)

    # -- progress ------------------------------------------------------------------------
    def _progress(self) -> Any:
        from torchslim.core.progress import Progress

        return Progress("train", self.config.steps, unit="steps", initial=self.step,
                        show=self.config.progress and self.dist.is_main)

    def _report(self, bar: Any, loss: float, terms: dict[str, float] | None = None) -> None:
        note = None
        if self.step % self.config.log_every == 0 or self.step == self.config.steps:
            lr = self.optimizer.param_groups[0]["lr"] if self.optimizer else 0.0
            shown = {k: f"{v:.4f}" for k, v in (terms or {}).items()} if terms and len(terms) > 1 else {}
            note = " ".join(f"{k}={v}" for k, v in {"loss": f"{loss:.4f}", **shown, "lr": f"{lr:.2e}"}.items())
            if self.dist.is_main:
                parts = " ".join(f"{k}={v:.4f}" for k, v in (terms or {}).items()) if terms and len(terms) > 1 else ""
                log.info("step %d/%d loss %.4f %slr %.3g", self.step, self.config.steps, loss,
                         parts + " " if parts else "", lr)
        bar.update(1, note=note)


def _reseed(seed: int, device: torch.device) -> None:
    """Seed the CPU generator (and this CUDA device's); cheaper than ``torch.manual_seed`` per step."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _fmt(metrics: dict[str, float] | None) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in (metrics or {}).items())
