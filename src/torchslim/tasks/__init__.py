"""Tasks: the data and metric a model is judged by (and calibrated / fine-tuned on)."""
from torchslim.tasks import source_text  # noqa: F401 - torchslim.tasks.source_text.source_task, as documented
from torchslim.tasks.base import DecodeStats, Task

__all__ = ["DecodeStats", "Task"]
