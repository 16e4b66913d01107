"""Greedy generation with ONNX Runtime on an exported folder, reusing past key/values (as optimum does), and the
same greedy search in torch recomputing every prefix: the two must pick the same tokens."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def _empty_past(sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
    return feeds


def ort_greedy_causal(folder: Path, ids: np.ndarray, steps: int) -> tuple[list[list[int]], np.ndarray]:
    """Tokens picked with the cache, and the first step's logits."""
    sess = ort.InferenceSession(str(folder / "model.onnx"))
    names = [i.name for i in sess.get_inputs()]
    outs_names = [o.name for o in sess.get_outputs()]
    b, n = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones((b, n), np.int64), **_empty_past(sess, b)}
    if "position_ids" in names:
        feeds["position_ids"] = np.tile(np.arange(n), (b, 1))
    picked, first = [], None
    for _ in range(steps):
        outs = dict(zip(outs_names, sess.run(None, feeds)))
        first = outs["logits"] if first is None else first
        tok = outs["logits"][:, -1].argmax(-1)
        picked.append(tok.tolist())
        feeds = {"input_ids": tok[:, None].astype(np.int64), "attention_mask": np.ones((b, n + 1), np.int64)}
        if "position_ids" in names:
            feeds["position_ids"] = np.full((b, 1), n)
        feeds.update({k.replace("present.", "past_key_values."): v for k, v in outs.items() if k.startswith("present.")})
        n += 1
    return [list(r) for r in zip(*picked)], first


def torch_greedy_causal(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> list[list[int]]:
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[:, -steps:].tolist()


def ort_greedy_seq2seq(folder: Path, ids: np.ndarray, mask: np.ndarray, start: int,
                       steps: int) -> tuple[list[list[int]], np.ndarray]:
    """Tokens picked with the cache, and each step's last-position logits ``(steps, batch, vocab)``."""
    enc = ort.InferenceSession(str(folder / "encoder_model.onnx"))
    dec = ort.InferenceSession(str(folder / "decoder_model.onnx"))
    past_dec = ort.InferenceSession(str(folder / "decoder_with_past_model.onnx"))
    hidden = enc.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    b = ids.shape[0]
    tok = np.full((b, 1), start, np.int64)
    outs = dict(zip([o.name for o in dec.get_outputs()],
                    dec.run(None, {"input_ids": tok, "encoder_attention_mask": mask, "encoder_hidden_states": hidden})))
    cross = {k.replace("present.", "past_key_values."): v for k, v in outs.items() if ".encoder." in k}
    picked, logits = [], []
    for _ in range(steps):
        logits.append(outs["logits"][:, -1])
        tok = outs["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        picked.append(tok[:, 0].tolist())
        feeds = {"input_ids": tok, "encoder_attention_mask": mask, **cross}
        feeds.update({k.replace("present.", "past_key_values."): v for k, v in outs.items() if ".decoder." in k})
        outs = dict(zip([o.name for o in past_dec.get_outputs()], past_dec.run(None, feeds)))
    return [list(r) for r in zip(*picked)], np.stack(logits)


def torch_greedy_seq2seq(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, start: int,
                         steps: int) -> tuple[list[list[int]], np.ndarray]:
    dec, out = torch.full((ids.shape[0], 1), start, dtype=torch.long), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits
            out.append(logits[:, -1].numpy())
            dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return dec[:, 1:].tolist(), np.stack(out)
