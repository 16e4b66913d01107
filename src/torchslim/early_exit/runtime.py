"""The early-exit runtime: runs the model's own forward and really stops computing for the rows that exited.

Hooks on the blocks that carry an exit evaluate the exit head on the block's output and ask the policy which rows
leave. With ``compact=True`` the rows that left are removed from the batch there: the next blocks run on fewer
rows (side inputs of the following blocks, such as an encoder's attention mask, are cut to the same rows by a
pre-hook). When no row is left, the forward is abandoned (an exception the runtime catches), so the remaining blocks
never run; at batch 1 this is the plain early exit. With ``compact=False`` rows that left keep their prediction
but stay in the batch until all have left (the batch-level exit of the literature).

A policy that never fires leaves every hook without effect, so the output equals the model's own output exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from torchslim.core.archs import arch_of, chain_blocks
from torchslim.core.errors import ConfigError
from torchslim.early_exit.module import ExitHead, exit_heads
from torchslim.early_exit.policy import ExitPolicy, compact_state


class _AllExited(Exception):
    """Raised inside the forward when every row has left: the remaining blocks are skipped."""


@dataclass
class ExitOutput:
    logits: torch.Tensor        # [B, classes]: each row's prediction where it left
    exit_at: torch.Tensor       # [B] long: the exit each row left at (len(heads) = the final layer)

    def counts(self, n_exits: int) -> list[int]:
        """Rows per exit, the final layer last."""
        return torch.bincount(self.exit_at, minlength=n_exits + 1).tolist()


def default_call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def logits_of(out: Any) -> torch.Tensor:
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"early exit needs a model that returns class logits, got {type(out).__name__}")
    return out


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class _Run:
    """The state of one batch: which rows are still computing, and the answers of those that left."""

    def __init__(self, policy: ExitPolicy, compact: bool, n_exits: int, mask: torch.Tensor | None) -> None:
        self.policy, self.compact, self.n_exits, self.mask = policy, compact, n_exits, mask
        self.rows = 0
        self.alive: torch.Tensor | None = None     # original indices of the rows still in the batch
        self.done: torch.Tensor | None = None      # without compaction: rows already answered
        self.state: dict[str, Any] = {}
        self.logits: torch.Tensor | None = None
        self.exit_at: torch.Tensor | None = None

    def begin(self, h: torch.Tensor, classes: int, dtype: torch.dtype) -> None:
        self.rows = h.shape[0]
        dev = h.device
        self.alive = torch.arange(self.rows, device=dev)
        self.done = torch.zeros(self.rows, dtype=torch.bool, device=dev)
        self.state = self.policy.start(self.rows, dev)
        self.logits = torch.zeros(self.rows, classes, dtype=dtype, device=dev)
        self.exit_at = torch.full((self.rows,), self.n_exits, dtype=torch.long, device=dev)

    def at_exit(self, k: int, head: ExitHead, out: Any) -> Any:
        h = _first(out)
        mask = self.mask if self.mask is None or self.alive is None else self.mask[self.alive]
        logits, gate = head(h, mask)
        if self.alive is None:
            self.begin(h, logits.shape[-1], logits.dtype)
        leave = self.policy.decide(k, logits, gate, self.state)
        if not self.compact:
            leave = leave & ~self.done
            idx = self.alive[leave]
            self.logits[idx], self.exit_at[idx] = logits[leave], k
            self.done |= leave
            if bool(self.done.all()):
                raise _AllExited
            return None
        if not bool(leave.any()):
            return None
        idx = self.alive[leave]
        self.logits[idx], self.exit_at[idx] = logits[leave], k
        keep = ~leave
        if not bool(keep.any()):
            raise _AllExited
        self.alive, self.state = self.alive[keep], compact_state(self.state, keep)
        n = h.shape[0]
        cut = [t[keep] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n else t
               for t in (out if isinstance(out, (tuple, list)) else (out,))]
        return type(out)(cut) if isinstance(out, (tuple, list)) else cut[0]

    def cut_inputs(self, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Side inputs still sized for the whole batch (an attention mask) cut to the rows still computing."""
        if self.alive is None or self.alive.shape[0] == self.rows:
            return None

        def cut(t: Any) -> Any:
            return t[self.alive] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == self.rows else t

        return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}

    def finish(self, final: torch.Tensor) -> ExitOutput:
        if self.alive is None:                     # no exit ran (heads after the last executed block)
            return ExitOutput(final, torch.full((final.shape[0],), self.n_exits, dtype=torch.long,
                                                device=final.device))
        if self.compact:
            if self.alive.shape[0] == self.rows:   # nobody left early: the model's own output, untouched
                return ExitOutput(final, self.exit_at)
            self.logits[self.alive] = final.to(self.logits.dtype)
        else:
            rest = ~self.done
            self.logits[rest] = final[rest].to(self.logits.dtype)
        return ExitOutput(self.logits, self.exit_at)


class ExitRuntime:
    """``ExitRuntime(model, policy)(inputs) -> ExitOutput``. ``call(model, inputs)`` runs the model (default:
    ``model(**inputs)`` for a mapping, else ``model(inputs)``); ``compact``: remove rows that left from the batch."""

    def __init__(self, model: nn.Module, policy: ExitPolicy, *, compact: bool = True,
                 call: Callable[[nn.Module, Any], Any] | None = None) -> None:
        self.heads = exit_heads(model)
        if not self.heads:
            raise ConfigError("this model has no exit heads: add them first (torchslim.early_exit_ / EarlyExitConfig)")
        self.model, self.policy, self.compact, self.call = model, policy, compact, call or default_call
        self.blocks = [model.get_submodule(h.block) for h in self.heads]
        chain = [m for _, m in chain_blocks(model)] if arch_of(model) is not None else []
        self.side = [*chain, *(b for b in self.blocks if all(b is not c for c in chain))]

    @torch.inference_mode()
    def __call__(self, inputs: Any) -> ExitOutput:
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        run = _Run(self.policy, self.compact, len(self.heads), mask)
        handles = [b.register_forward_hook(lambda m, a, o, k=k, head=head: run.at_exit(k, head, o))
                   for k, (b, head) in enumerate(zip(self.blocks, self.heads))]
        handles += [b.register_forward_pre_hook(lambda m, a, kw: run.cut_inputs(a, kw), with_kwargs=True)
                    for b in self.side]
        try:
            final = logits_of(self.call(self.model, inputs))
        except _AllExited:
            return ExitOutput(run.logits, run.exit_at)
        finally:
            for h in handles:
                h.remove()
        return run.finish(final)
