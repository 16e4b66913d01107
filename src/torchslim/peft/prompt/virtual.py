"""What prompt tuning and prefix tuning share: ``n_virtual`` learned positions placed before the text of every
call of a Hugging Face model, through hooks on the model's root.

A :class:`VirtualBranch` is added at the root (``model.torchslim_prompt_default``) and registers a forward
pre-hook with keyword arguments (it edits the call: embeddings, ``past_key_values``, the attention mask,
position ids, token types, labels) and a forward hook (it removes the virtual positions from what the model
returns, so tasks see the shapes they asked for). Both methods treat the virtual positions as the first
``n_virtual`` positions of the sequence, as Hugging Face peft does: real tokens sit at positions
``n_virtual..``; explicit ``position_ids`` are shifted by ``n_virtual`` accordingly.

Incremental decoding: a call with a non-empty cache continues a sequence whose cache already holds the
virtual positions (its prefill was a call of this adapter), so only the mask and position ids are shifted.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.peft.branch import Branch

STRIPPED = ("logits", "last_hidden_state")      # [batch, seq, ...] outputs whose virtual positions are removed


def hf_config(model: nn.Module, who: str) -> Any:
    """The Hugging Face config of a decoder LM or encoder ``model``; errors for anything else."""
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(model, "get_input_embeddings", None)):
        raise ConfigError(f"{who} needs a Hugging Face model (with .config and get_input_embeddings), "
                          f"got a {type(model).__name__}")
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"{who} supports decoder LMs and encoders, not encoder-decoder models "
                          f"({type(model).__name__})")
    return config


def cache_length(past: Any) -> int:
    if past is None:
        return 0
    get = getattr(past, "get_seq_length", None)
    if not callable(get):
        raise ConfigError(f"past_key_values must be a transformers Cache, got a {type(past).__name__}")
    return int(get())


def _set(output: Any, key: str, value: Any) -> None:
    """Set a field of a ModelOutput (its mapping entry and its attribute) or of another output object."""
    if isinstance(output, dict):
        output[key] = value
    else:
        setattr(output, key, value)


def _ones_before(t: torch.Tensor, n: int, value: int) -> torch.Tensor:
    return torch.cat([t.new_full((*t.shape[:-1], n), value), t], dim=-1)


class VirtualBranch(Branch):
    """Base of branches that put ``n_virtual`` learned positions before the text. Subclasses implement
    :meth:`edit_call` (the keyword arguments of one call, edited in place)."""

    def __init__(self, n_virtual: int, adapter: str = "default", enabled: bool = True) -> None:
        super().__init__(adapter, enabled)
        if not (isinstance(n_virtual, int) and n_virtual >= 1):
            raise ConfigError(f"n_virtual must be a positive integer, got {n_virtual!r}")
        self.n_virtual = n_virtual
        self._calls: list[tuple[int, bool] | None] = []   # per call in flight: (text length, drop the output's
                                                         # cache); None: untouched

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n_virtual": self.n_virtual}

    # -- attach protocol: hooks on the model's root ---------------------------------------------------
    def torchslim_attach(self, model: nn.Module) -> None:
        model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        model.register_forward_hook(self._post_hook, with_kwargs=True, always_call=True)

    def torchslim_detach(self, model: nn.Module) -> None:
        for hooks, extra in ((model._forward_pre_hooks, (model._forward_pre_hooks_with_kwargs,)),
                             (model._forward_hooks, (model._forward_hooks_with_kwargs,
                                                     model._forward_hooks_always_called))):
            for key, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) is self:
                    del hooks[key]
                    for d in extra:
                        d.pop(key, None)

    # -- hooks --------------------------------------------------------------------------------------
    def _pre_hook(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        if not self.active:
            self._calls.append(None)
            return None
        self._calls.append(None)                # replaced below once the call is understood
        self._check_alone(model)
        kwargs = dict(kwargs)
        if args:
            if len(args) > 1 or "input_ids" in kwargs:
                raise ConfigError(f"{self.method} tuning: pass the model's inputs by name (got {len(args)} positional)")
            kwargs["input_ids"] = args[0]
        if kwargs.get("return_dict") is False:
            raise ConfigError(f"{self.method} tuning needs the model's ModelOutput: call it without return_dict=False")
        text = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if text is None:
            raise ConfigError(f"{self.method} tuning: the call has neither input_ids nor inputs_embeds")
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ConfigError(f"{self.method} tuning extends a 2-D attention mask; got a {mask.dim()}-D one")
        drop = self.edit_call(model, kwargs, int(text.shape[0]), int(text.shape[1]))
        self._calls[-1] = (int(text.shape[1]), drop)
        return (), kwargs

    def _post_hook(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        call = self._calls.pop() if self._calls else None
        if call is None or output is None:
            return None
        length, drop = call
        if drop and getattr(output, "past_key_values", None) is not None:
            _set(output, "past_key_values", None)
        for key in STRIPPED:
            t = getattr(output, key, None)
            if isinstance(t, torch.Tensor) and t.dim() >= 3 and t.shape[1] > length:
                _set(output, key, t[:, t.shape[1] - length:])
        hidden = getattr(output, "hidden_states", None)
        if isinstance(hidden, tuple) and hidden and all(isinstance(h, torch.Tensor) for h in hidden):
            _set(output, "hidden_states", tuple(h[:, h.shape[1] - length:] if h.shape[1] > length else h
                                                for h in hidden))
        return output

    def _check_alone(self, model: nn.Module) -> None:
        others = [b for b in model.children() if isinstance(b, VirtualBranch) and b is not self and b.active]
        if others:
            raise ConfigError(f"adapters '{self.adapter}' and '{others[0].adapter}' both add virtual tokens: "
                              "activate one at a time (torchslim.peft.set_adapter)")

    # -- what a method defines ------------------------------------------------------------------------
    def edit_call(self, model: nn.Module, kwargs: dict[str, Any], batch: int, length: int) -> bool:
        """Edit one call's keyword arguments in place; True: the call made a cache the caller did not ask for
        (remove it from the output, so a caller without a cache does not continue from it)."""
        raise NotImplementedError

    # -- shared edits ---------------------------------------------------------------------------------
    def shift_positions(self, kwargs: dict[str, Any], prepend: bool) -> None:
        """Real tokens move ``n_virtual`` positions on; when the virtual positions are in this call, they take
        positions ``0..n_virtual-1``."""
        pos = kwargs.get("position_ids")
        if pos is None:
            return
        if pos.dim() != 2:
            raise ConfigError(f"{self.method} tuning shifts 2-D position_ids; got {pos.dim()}-D ones")
        shifted = pos + self.n_virtual
        if prepend:
            virtual = torch.arange(self.n_virtual, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], -1)
            shifted = torch.cat([virtual, shifted], dim=1)
        kwargs["position_ids"] = shifted

    def extend_mask(self, kwargs: dict[str, Any], batch: int, length: int, make: bool) -> None:
        """``n_virtual`` ones before the attention mask (a mask of ones is made when ``make`` and none came)."""
        mask = kwargs.get("attention_mask")
        if mask is None and make:
            mask = torch.ones(batch, length, dtype=torch.long, device=self.device_of())
        if mask is not None:
            kwargs["attention_mask"] = _ones_before(mask, self.n_virtual, 1)

    def extend_per_token(self, kwargs: dict[str, Any], batch: int, length: int) -> None:
        """Token types (0) and labels (-100, not scored) for the virtual positions, when given per token."""
        for key, value in (("token_type_ids", 0), ("labels", -100)):
            t = kwargs.get(key)
            if isinstance(t, torch.Tensor) and t.dim() == 2 and tuple(t.shape) == (batch, length):
                kwargs[key] = _ones_before(t, self.n_virtual, value)

    def device_of(self) -> torch.device:
        return next(self.parameters()).device
