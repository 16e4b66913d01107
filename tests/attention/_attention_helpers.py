"""Shared helpers of the efficient-attention tests (conftest.py puts this folder on the path)."""
import torch

IDS = torch.arange(60).reshape(2, 30) % 200
MASK = torch.ones_like(IDS)
MASK[1, :5] = 0                                   # the second row is (left-)padded


def hidden(m, ids=IDS, mask=MASK):
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
