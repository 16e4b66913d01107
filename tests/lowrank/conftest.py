"""Low-rank tests: tiny-llama fixtures; helpers in _lowrank_helpers.py (this folder goes on the path)."""
import copy
import sys
from pathlib import Path

import pytest

import torchslim

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def tiny():
    """tiny-llama and its task (copy the model before changing it)."""
    return torchslim.load_model("tiny-llama")


@pytest.fixture
def model(tiny):
    return copy.deepcopy(tiny.model)
