"""What the block runners need from layer-wise onloading, without knowing where weights come from.

A model compressed with onloading (``torchslim.scale``) has its blocks' parameters on the meta device; an
*onloader* attached to the model gives each block its weights when a runner reaches it (``enter``) and
writes and releases them when the runner is done with it (``leave``). The runners here also keep the
cached block inputs in a :class:`BlockInputs`, whose hidden states spill to disk beyond a byte budget
(the other block arguments, masks and rotary tables, are small and stay in memory).

Without an onloader attached nothing changes: blocks are used as they are and inputs stay in memory.
"""
from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from torch import nn


class Onloader(Protocol):
    def enter(self, name: str, block: nn.Module) -> None: ...       # give the block its weights
    def leave(self, name: str, block: nn.Module) -> None: ...       # write (if changed) and release them
    def new_store(self) -> "HiddenStore": ...                       # where the next block's inputs go


_ONLOADERS: "weakref.WeakKeyDictionary[nn.Module, Onloader]" = weakref.WeakKeyDictionary()


def attach_onloader(model: nn.Module, onloader: Onloader | None) -> None:
    """Make the block runners onload ``model``'s blocks through ``onloader`` (``None``: detach)."""
    if onloader is None:
        _ONLOADERS.pop(model, None)
    else:
        _ONLOADERS[model] = onloader


def onloader_of(model: nn.Module) -> Onloader | None:
    return _ONLOADERS.get(model)


class HiddenStore:
    """A list of tensors that keeps at most ``budget`` bytes in memory and writes the rest to ``folder``
    (one safetensors file per tensor, read back exactly). ``budget=None``: all in memory."""

    _serial = 0

    def __init__(self, budget: int | None = None, folder: Path | None = None) -> None:
        self.budget, self.folder = budget, folder
        self._items: list[torch.Tensor | Path] = []
        self.resident = 0
        self.spilled = 0
        HiddenStore._serial += 1
        self._tag = HiddenStore._serial

    def append(self, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if self.budget is None or self.folder is None or self.resident + size <= self.budget:
            self._items.append(t)
            self.resident += size
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"hidden-{self._tag}-{len(self._items)}.safetensors"
        save_file({"h": t.detach().contiguous()}, str(path))
        self._items.append(path)
        self.spilled += size

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self._items[i]
        if isinstance(item, Path):
            from safetensors.torch import load_file

            return load_file(str(item))["h"]
        return item

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def release(self) -> None:
        """Drop the tensors and delete the spilled files."""
        for item in self._items:
            if isinstance(item, Path):
                item.unlink(missing_ok=True)
        self._items.clear()
        self.resident = self.spilled = 0


class BlockInputs:
    """The cached ``(args, kwargs)`` of one block per batch: hidden states in a :class:`HiddenStore`, the
    other arguments as caught. Iterates and indexes like the list of ``(args, kwargs)`` it stands for."""

    def __init__(self, hidden: HiddenStore, rest: list[tuple[tuple, dict[str, Any]]]) -> None:
        self.hidden, self.rest = hidden, rest

    @classmethod
    def from_caught(cls, caught: list[tuple], store: HiddenStore) -> "BlockInputs":
        for args, _ in caught:
            store.append(args[0])
        return cls(store, [(tuple(args[1:]), kwargs) for args, kwargs in caught])

    def with_hidden(self, hidden: HiddenStore) -> "BlockInputs":
        """The next block's inputs: ``hidden`` in place of this block's hidden states (whose files are deleted)."""
        if hidden is not self.hidden:
            self.hidden.release()
        return BlockInputs(hidden, self.rest)

    def __len__(self) -> int:
        return len(self.rest)

    def __getitem__(self, i: int) -> tuple[tuple, dict[str, Any]]:
        args, kwargs = self.rest[i]
        return (self.hidden[i], *args), kwargs

    def __iter__(self) -> Iterator[tuple[tuple, dict[str, Any]]]:
        return (self[i] for i in range(len(self)))
