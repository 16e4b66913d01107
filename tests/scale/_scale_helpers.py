"""Helpers the scale tests share (imported as ``_scale_helpers``: conftest puts this folder on the path)."""
from __future__ import annotations

from pathlib import Path

import torchslim
from torchslim.pruning import UnstructuredConfig
from torchslim.quantization.gptq import GPTQConfig

GPTQ = GPTQConfig(n_samples=4)
WANDA = UnstructuredConfig(sparsity=0.5, importance="wanda", n_samples=4)


def in_memory(folder: Path, configs, calib: list[dict], out: Path) -> Path:
    """The reference: the whole model loaded, each config applied by the registry (one pass each), saved."""
    loaded = torchslim.load_model(str(folder))
    for config in configs if isinstance(configs, list) else [configs]:
        torchslim.apply_(loaded.model, config, calibration=calib)
    return torchslim.save(loaded.model, out, source=loaded.source)
