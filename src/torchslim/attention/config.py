"""The typed config of the efficient-attention family (``torchslim.convert_attention_(model, AttentionConfig(...))``)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from torchslim.core.config import BaseConfig, between
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector


def every_attention() -> Selector:
    """Every attention module the architecture table names (a rule on names narrows it: ``re:.*layers\\.0\\..*``)."""
    return Selector(include=("re:.*",))


class Method(str, enum.Enum):
    SLIDING_WINDOW = "sliding_window"   # local window (+ global tokens): exact where the window covers the sequence
    BLOCK_SPARSE = "block_sparse"       # a query block sees its own and neighbouring key blocks (+ global tokens)
    LINFORMER = "linformer"             # keys/values projected along the sequence to `proj_len` rows (learned)
    PERFORMER = "performer"             # softmax kernel by `features` positive orthogonal random features (FAVOR+)


@dataclass
class AttentionConfig(BaseConfig):
    """Replace the softmax attention of the selected attention modules by an efficient approximation.

    ``window``: sliding window reach (a token sees keys fewer than ``window`` positions away on each side; behind it
    only, in causal models) or the block size of ``block_sparse``. ``n_global``: leading tokens (``[CLS]``, a
    decoder's first tokens) that see and are seen by every token. ``proj_len`` / ``max_length``: Linformer's
    projected length ``k`` and the longest sequence its projections cover (``n``). ``features``: Performer's random
    feature count ``m``; ``seed`` draws them (saved in the artifact, so reloads are identical).
    """

    family = "attention"
    technique = "attention"
    method: Method = Method.SLIDING_WINDOW
    window: int = between(128, 1, 1 << 20)
    n_global: int = between(0, 0, 1 << 16)
    block: int | None = None            # compute block of the sliding window (default: the window)
    proj_len: int = between(128, 1, 1 << 20)
    max_length: int = between(512, 1, 1 << 20)
    features: int = between(256, 1, 1 << 16)
    seed: int = 0
    selector: Selector = field(default_factory=every_attention)

    def validate(self) -> None:
        if self.block is not None and self.block < 1:
            raise ConfigError(f"AttentionConfig.block must be >= 1 (or null), got {self.block}")
        if self.method is Method.LINFORMER and self.proj_len > self.max_length:
            raise ConfigError(f"AttentionConfig: Linformer's proj_len ({self.proj_len}) cannot exceed max_length "
                              f"({self.max_length})")

    def rule(self) -> str:
        if self.method is Method.SLIDING_WINDOW:
            what = f"window {self.window}"
        elif self.method is Method.BLOCK_SPARSE:
            what = f"blocks of {self.window}"
        elif self.method is Method.LINFORMER:
            return f"linformer k={self.proj_len}, n={self.max_length}"
        else:
            return f"performer m={self.features}"
        return what + (f" + {self.n_global} global" if self.n_global else "")
