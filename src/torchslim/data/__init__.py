"""Offline datasets used by the tasks (real text; disjoint evaluation and calibration splits)."""
from torchslim.data.text import (
    CALIBRATION_FILES,
    DATA_NOTE,
    EVAL_FILES,
    calibration_sentences,
    calibration_text,
    eval_sentences,
    eval_text,
    sentences,
    split_text,
)

__all__ = [
    "CALIBRATION_FILES",
    "DATA_NOTE",
    "EVAL_FILES",
    "calibration_sentences",
    "calibration_text",
    "eval_sentences",
    "eval_text",
    "sentences",
    "split_text",
]
