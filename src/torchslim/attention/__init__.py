"""Efficient attention conversion: a pretrained model's softmax attention becomes sliding-window / block-sparse
(local plus global tokens), Linformer (learned projections of keys and values along the sequence) or Performer
(FAVOR+ positive random features), then recovers by distillation from the original model (``DistillConfig``).

Layers: ``math`` is pure math; ``module`` is the representation (:class:`EfficientAttention`, an added child of each
attention module that the registered ``"torchslim_efficient"`` attention function runs); ``convert`` is the model
flow. Importing this package registers the ``convert_attention_`` handler.
"""
from torchslim.attention import convert  # noqa: F401 - registers the handler
from torchslim.attention.config import AttentionConfig, Method
from torchslim.attention.convert import attention_modules, converted
from torchslim.attention.module import EfficientAttention

__all__ = ["AttentionConfig", "EfficientAttention", "Method", "attention_modules", "converted"]
