"""Knowledge distillation: white-box (logits, hidden states, relations) and black-box (teacher generations)."""
from torchslim.distill.blackbox import BlackBoxDistillConfig
from torchslim.distill.config import DistillConfig
from torchslim.distill.reconstruct import ReconstructConfig
from torchslim.distill.losses import cosine_loss, hidden_mse, kd_kl, relation_kl, topk_kd_kl

__all__ = ["BlackBoxDistillConfig", "DistillConfig", "ReconstructConfig", "cosine_loss", "hidden_mse", "kd_kl", "relation_kl", "topk_kd_kl"]
