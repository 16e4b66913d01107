"""llama.cpp (through the llama-cpp-python bindings) running a GGUF file as a model-like module.

``forward(input_ids=...)`` evaluates each row from an empty context and returns the logits of every position (as a
causal LM's forward does), so a task's perplexity is computed from llama.cpp's own logits; ``generate`` is greedy
decoding with llama.cpp's key/value cache. Token ids are fed as they are (no BOS is added): the task tokenizes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchslim.core.errors import TorchSlimError
from torchslim.runtime.backends.graph import FileModel, Outputs, as_numpy, outputs


class LlamaCppModel(FileModel):
    """A GGUF file loaded by llama.cpp on the CPU. ``n_ctx``: the longest sequence a call may hold (prompt plus
    generated tokens); ``threads``: llama.cpp's threads for decoding and for batches (default: its own choice);
    ``n_batch``: tokens per llama.cpp batch."""

    runtime = "llamacpp"

    def __init__(self, path: str | Path, threads: int | None = None, n_ctx: int = 2048, n_batch: int = 512):
        super().__init__(path)
        from llama_cpp import Llama

        kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": min(n_batch, n_ctx), "logits_all": True,
                                  "verbose": False, "n_gpu_layers": 0}
        if threads:
            kwargs.update(n_threads=threads, n_threads_batch=threads)
        self.n_ctx = n_ctx
        self.llm = Llama(model_path=str(self.path), **kwargs)

    def _check(self, n: int) -> None:
        if n > self.n_ctx:
            raise TorchSlimError(f"{self.path.name}: {n} tokens do not fit llama.cpp's context of {self.n_ctx} "
                                 "(open the file with a larger n_ctx)")

    def _logits(self, row: np.ndarray) -> np.ndarray:
        self._check(len(row))
        self.llm.reset()
        self.llm.eval(row.tolist())
        return self.llm.scores[: len(row)].copy()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> Outputs:
        ids = as_numpy(input_ids).astype(np.int64)
        if attention_mask is not None and not bool(np.all(as_numpy(attention_mask))):
            raise TorchSlimError(f"{self.path.name}: llama.cpp runs unpadded sequences (the attention mask has zeros)")
        return outputs(["logits"], [np.stack([self._logits(row) for row in ids])])

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, min_new_tokens: int | None = None,
                 **_: Any) -> torch.Tensor:
        """Greedy generation of exactly ``max_new_tokens`` tokens per row (the arg-max of llama.cpp's logits; the
        end-of-text token does not stop it, as ``min_new_tokens`` asks of transformers)."""
        rows = []
        for row in as_numpy(input_ids).astype(np.int64):
            self._check(len(row) + max_new_tokens)
            self.llm.reset()
            self.llm.eval(row.tolist())
            new = []
            for step in range(max_new_tokens):
                token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                new.append(token)
                if step + 1 < max_new_tokens:
                    self.llm.eval([token])
            rows.append(np.concatenate([row, np.asarray(new, np.int64)]))
        return torch.from_numpy(np.stack(rows))
