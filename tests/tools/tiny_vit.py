"""A tiny ViT image classifier folder (two labels) and a folder of images per class, as a user would have them."""
from __future__ import annotations

from pathlib import Path

import torch


def vit_folder_and_images(root: Path) -> tuple[Path, Path]:
    """``root/vit`` (config, weights, image processor) and ``root/imgs/{cat,dog}/*.png`` (three 40x40 images each)."""
    import numpy as np
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                    patch_size=8, num_labels=2, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    ViTForImageClassification(cfg).save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "imgs" / cls / f"{i}.png")
    return root / "vit", root / "imgs"
