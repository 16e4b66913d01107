"""Option parsers the CLI verbs share (kept apart from ``cli.main`` so that verb modules need not import it)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from torchslim.core.errors import TorchSlimError

PARALLEL_HELP = ("How torchrun processes share training: ddp, fsdp (parameters, gradients and optimizer state "
                 "sharded over the processes) or auto (FSDP when a whole replica would take over half the memory "
                 "of a process). Default: the training config's own setting (auto).")
MAX_MEMORY_HELP = ("Memory budget for the model's weights, e.g. 700MB: a model whose float32 weights exceed it is "
                   "compressed block by block (layer-wise onloading; post-training stages only), an artifact larger "
                   "than it is evaluated by block streaming (perplexity only).")


def parse_shape(text: str) -> tuple[int, int | None]:
    """``"8x128"`` -> ``(8, 128)``; ``"8"`` -> ``(8, None)``."""
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            shape = (int(parts[0]), None)
        elif len(parts) == 2:
            shape = (int(parts[0]), int(parts[1]))
        else:
            raise ValueError
    except ValueError:
        raise TorchSlimError(f"bad shape '{text}': expected BATCH or BATCHxSEQ_LEN, e.g. 8x128") from None
    if shape[0] < 1 or (shape[1] is not None and shape[1] < 1):
        raise TorchSlimError(f"bad shape '{text}': sizes must be positive")
    return shape


def data_flags(calib_data: Optional[Path], eval_data: Optional[Path], seq_len: Optional[int]) -> dict:
    return {k: v for k, v in (("calib_data", calib_data), ("eval_data", eval_data), ("seq_len", seq_len))
            if v is not None}
