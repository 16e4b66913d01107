"""The labelled offline text tasks of :mod:`torchslim.data.labelled` as text-classification tasks: which license
(``licenses``) or which Python reference topic (``pydoc``) a passage comes from."""
from __future__ import annotations

from typing import Any

from torchslim.data.labelled import class_names, labelled_split
from torchslim.tasks.text_classification import TextClassificationTask


def source_task(task: str, tokenizer: Any, *, eval_split: str = "test", max_length: int = 64,
                batch_size: int = 16) -> TextClassificationTask:
    """Evaluation on ``eval_split`` (``test`` or ``val``); training/calibration batches from ``train``."""
    texts, labels = labelled_split(task, eval_split)
    train_texts, train_labels = labelled_split(task, "train")
    names = class_names(task)
    note = (f"{task}: which of {len(names)} sources a {len(texts[0].split())}-word passage comes from "
            f"({eval_split} split, {len(texts)} passages; train {len(train_texts)})")
    return TextClassificationTask(tokenizer, texts, labels, train_texts, train_labels, max_length=max_length,
                                  batch_size=batch_size, data_note=note)
