"""Small data helpers of the training loop."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from torchslim.core.errors import TorchSlimError
from torchslim.tasks.base import Batch


def move_to(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor (in dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def cycle_batches(data: Iterable[Batch]) -> Iterator[Batch]:
    """Repeat a re-iterable source (list, DataLoader) epoch after epoch; a one-shot iterator must not run out."""
    one_shot = iter(data) is data
    while True:
        n = 0
        for b in data:
            n += 1
            yield b
        if one_shot or n == 0:
            raise TorchSlimError(f"train_data ran out after {n} batch(es); pass a re-iterable or an endless stream")
