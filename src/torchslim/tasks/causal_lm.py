"""Causal language modelling: token perplexity on real English text, and decode speed.

Perplexity protocol (:meth:`CausalLMTask.evaluate`):

1. The evaluation text (GPL-3, see :mod:`torchslim.data.text`) is tokenized once, as one
   string, with ``add_special_tokens=False`` (no BOS is inserted).
2. The token stream is cut into NON-OVERLAPPING windows of ``seq_len`` tokens, starting at
   token 0; the incomplete tail window is dropped. ``max_eval_windows`` keeps only the first
   windows.
3. Each window is run on its own (no context carried across windows). Every token of a window
   except its first is predicted from the tokens before it in that window, so a window scores
   ``seq_len - 1`` tokens.
4. ``nll`` = mean negative log-likelihood (natural log, computed in float32) over all scored
   tokens of all windows; ``perplexity = exp(nll)``; ``eval_tokens`` = number of scored tokens.

Calibration and training windows come from the calibration text only (disjoint files).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.progress import track
from torchslim.core.surgery import model_device
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.data import text as text_data
from torchslim.tasks.base import Batch, DecodeStats, Task

DECODE_PROMPT = "The capital of France is"
CALIBRATION_SEED = 0




@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode and inference mode, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output (an HF ``ModelOutput``, a tuple, or a tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0]
    return logits


def shifted_nll(logits: torch.Tensor, input_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token NLL: position ``t`` predicts token ``t + 1`` (float32 cross-entropy)."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = input_ids[:, 1:].reshape(-1).to(pred.device)
    return F.cross_entropy(pred, target, reduction=reduction)


def _window_starts(n_tokens: int, seq_len: int, count: int, generator: torch.Generator) -> list[int]:
    if n_tokens < seq_len:
        raise TorchSlimError(f"the calibration text has {n_tokens} tokens, fewer than seq_len={seq_len}")
    return torch.randint(0, n_tokens - seq_len + 1, (count,), generator=generator).tolist()


ENCODE_CHUNK = 1 << 20          # characters tokenized at once (the built-in texts are shorter: one piece)


class CausalLMTask(Task):
    """Perplexity on the GPL-3 text (see the module docstring for the exact protocol)."""

    name = "causal-lm"
    metric = "perplexity"
    higher_is_better = False
    outputs_logits = True
    default_shapes = ((1, 128), (8, 128))

    def __init__(
        self,
        tokenizer: Any,
        seq_len: int = 512,
        max_eval_windows: int | None = None,
        *,
        eval_batch_size: int = 1,
        prompt: str = DECODE_PROMPT,
        eval_text: str | None = None,
        calibration_text: str | None = None,
    ) -> None:
        if seq_len < 2:
            raise ConfigError(f"seq_len must be at least 2, got {seq_len}")
        if max_eval_windows is not None and max_eval_windows < 1:
            raise ConfigError(f"max_eval_windows must be positive or None, got {max_eval_windows}")
        if eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be positive, got {eval_batch_size}")
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.max_eval_windows = max_eval_windows
        self.eval_batch_size = eval_batch_size
        self.prompt = prompt
        self._texts = {"eval": eval_text, "calibration": calibration_text}
        self._ids: dict[str, torch.Tensor] = {}
        self.last_generated_text: str | None = None
        custom = eval_text is not None or calibration_text is not None
        self.data_note = (
            "token perplexity on user-supplied text"
            if custom
            else f"token perplexity, non-overlapping {seq_len}-token windows; {text_data.DATA_NOTE}"
        )

    # ----------------------------------------------------------------- data
    def text(self, split: str) -> str:
        """The raw text of ``split`` (``"eval"`` / ``"calibration"``): the user's, else the built-in corpus."""
        text = self._texts.get(split)
        return text_data.split_text(split) if text is None else text

    def token_ids(self, split: str) -> torch.Tensor:
        """The whole text of ``split`` (``"eval"`` / ``"calibration"``) as one 1-D id tensor (cached)."""
        if split not in self._ids:
            self._ids[split] = self._encode(self.text(split))
        return self._ids[split]

    def _encode(self, text: str) -> torch.Tensor:
        """``text`` as ids; a text over :data:`ENCODE_CHUNK` characters is tokenized a piece at a time (cut
        after a newline), so the tokenizer's per-token bookkeeping never holds the whole text at once."""
        parts, start = [], 0
        while start < len(text):
            end = len(text) if len(text) - start <= ENCODE_CHUNK else start + ENCODE_CHUNK
            if end < len(text):
                cut = text.rfind("\n", start, end)
                end = cut + 1 if cut > start else end
            ids = self.tokenizer(text[start:end], add_special_tokens=False, verbose=False)["input_ids"]
            parts.append(torch.tensor(ids, dtype=torch.long))
            start = end
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def eval_windows(self) -> torch.Tensor:
        """The evaluation windows, shape ``(n_windows, seq_len)``."""
        ids = self.token_ids("eval")
        n = ids.numel() // self.seq_len
        if self.max_eval_windows is not None:
            n = min(n, self.max_eval_windows)
        if n == 0:
            raise TorchSlimError(f"the evaluation text has {ids.numel()} tokens, fewer than seq_len={self.seq_len}")
        return ids[: n * self.seq_len].view(n, self.seq_len)

    def _calibration_windows(self, starts: list[int], seq_len: int) -> torch.Tensor:
        ids = self.token_ids("calibration")
        return torch.stack([ids[s : s + seq_len] for s in starts])

    @staticmethod
    def _batch(input_ids: torch.Tensor) -> Batch:
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    # --------------------------------------------------------------- metric
    def eval_batches(self) -> list[Batch]:
        """The batches :meth:`evaluate` runs, in its order (block streaming replays them)."""
        return [self._batch(chunk) for chunk in self.eval_windows().split(self.eval_batch_size)]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        batches = self.eval_batches()
        device = model_device(model)
        nll_sum, count = 0.0, 0
        with eval_mode(model):
            for batch in track(batches, f"perplexity ({sum(len(b['input_ids']) for b in batches)} windows)"):
                chunk = batch["input_ids"].to(device)
                logits = logits_of(self.forward(model, {k: v.to(device) for k, v in batch.items()}))
                nll_sum += shifted_nll(logits, chunk, reduction="sum").item()
                count += chunk[:, 1:].numel()
        nll = nll_sum / count
        windows = sum(len(b["input_ids"]) for b in batches)
        return {"perplexity": math.exp(nll), "nll": nll, "eval_tokens": float(count), "eval_windows": float(windows)}

    # ---------------------------------------------------------------- inputs
    def example_inputs(self, batch: int, seq_len: int | None = None) -> Batch:
        """Consecutive calibration-text tokens shaped ``(batch, seq_len)`` (text repeats if too short)."""
        seq_len = seq_len or self.seq_len
        ids = self.token_ids("calibration")
        need = batch * seq_len
        if ids.numel() < need:
            ids = ids.repeat(math.ceil(need / ids.numel()))
        return self._batch(ids[:need].view(batch, seq_len).clone())

    def calibration_batches(self, n_samples: int = 128, batch_size: int = 1) -> list[Batch]:
        """``n_samples`` calibration windows of ``seq_len`` tokens at seeded random offsets (seed 0)."""
        if n_samples < 1 or batch_size < 1:
            raise ConfigError(f"n_samples and batch_size must be positive, got {n_samples} and {batch_size}")
        g = torch.Generator().manual_seed(CALIBRATION_SEED)
        starts = _window_starts(self.token_ids("calibration").numel(), self.seq_len, n_samples, g)
        windows = self._calibration_windows(starts, self.seq_len)
        return [self._batch(w) for w in windows.split(batch_size)]

    def train_batches(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Endless calibration-text windows; each step draws ``batch_size * world_size`` and yields shard ``rank``."""
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"bad sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        n_tokens = self.token_ids("calibration").numel()
        g = torch.Generator().manual_seed(seed)
        while True:
            starts = _window_starts(n_tokens, self.seq_len, batch_size * world_size, g)
            mine = starts[rank * batch_size : (rank + 1) * batch_size]
            yield self._batch(self._calibration_windows(mine, self.seq_len))

    def train_forward(self, model: nn.Module, batch: Batch) -> Any:
        """The model's output with ``labels=input_ids`` (a Hugging Face model then computes its own loss)."""
        device = model_device(model)
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return self.forward(model, {**inputs, "labels": inputs["input_ids"]})

    def loss_from_output(self, output: Any, batch: Batch) -> torch.Tensor:
        """Mean next-token cross-entropy: the output's own ``loss`` if it has one, else from its logits
        (position ``t`` predicts token ``t + 1``)."""
        loss = None if isinstance(output, torch.Tensor) else getattr(output, "loss", None)
        return loss if loss is not None else shifted_nll(logits_of(output), batch["input_ids"])

    # ---------------------------------------------------------------- decode
    @property
    def supports_decode(self) -> bool:
        return True

    def decode(self, model: nn.Module, new_tokens: int = 32) -> DecodeStats:
        """Greedy generation of exactly ``new_tokens`` tokens after :data:`DECODE_PROMPT`.

        One warm-up call first; then ``prefill_s`` = a ``generate`` with one new token (time to
        first token) and the total = a ``generate`` with ``new_tokens``; ``decode_s`` = total -
        prefill_s and ``tokens_per_s = (new_tokens - 1) / decode_s``.
        """
        if new_tokens < 2:
            raise ConfigError(f"new_tokens must be at least 2 to time decoding, got {new_tokens}")
        if not hasattr(model, "generate"):
            raise TorchSlimError(f"{type(model).__name__} has no generate(); cannot measure decoding")
        ids = self.tokenizer(self.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(model_device(model))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kwargs = {"attention_mask": torch.ones_like(ids), "do_sample": False, "pad_token_id": pad}

        def run(n: int) -> tuple[torch.Tensor, float]:
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
            return out, time.perf_counter() - t0

        with eval_mode(model):
            run(2)
            _, prefill_s = run(1)
            out, total_s = run(new_tokens)
        produced = out.shape[1] - ids.shape[1]
        if produced != new_tokens:
            raise TorchSlimError(f"generate produced {produced} tokens instead of {new_tokens}")
        self.last_generated_text = self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        decode_s = max(total_s - prefill_s, 1e-9)
        return DecodeStats(
            prompt_tokens=int(ids.shape[1]),
            new_tokens=new_tokens,
            prefill_s=prefill_s,
            decode_s=decode_s,
            tokens_per_s=(new_tokens - 1) / decode_s,
        )
