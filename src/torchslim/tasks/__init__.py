"""Tasks: the data and metric a model is judged by (and calibrated / fine-tuned on)."""
from torchslim.tasks.base import DecodeStats, Task

__all__ = ["DecodeStats", "Task"]
