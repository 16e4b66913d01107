"""A tiny Llama saved as a Hugging Face folder (safetensors), its calibration batches, and in-memory references."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))     # _scale_helpers
from _scale_helpers import GPTQ, WANDA, in_memory  # noqa: E402


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchslim.zoo.tiny import tiny_llama

    lm = tiny_llama(num_hidden_layers=3)
    folder = tmp_path_factory.mktemp("scale") / "tiny-llama-hf"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def calib() -> list[dict]:
    from torchslim.zoo.tiny import tiny_llama

    return tiny_llama().task.calibration_batches(4, 2)


@pytest.fixture(scope="session")
def gptq_ref(tiny_folder: Path, calib: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return in_memory(tiny_folder, GPTQ, calib, tmp_path_factory.mktemp("ref") / "gptq")


@pytest.fixture(scope="session")
def wanda_ref(tiny_folder: Path, calib: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return in_memory(tiny_folder, WANDA, calib, tmp_path_factory.mktemp("ref") / "wanda")
