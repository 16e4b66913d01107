"""Efficient-attention tests: tiny-llama (decoder) and tiny-bert (encoder) fixtures; helpers in
_attention_helpers.py (this folder goes on the path)."""
import copy
import sys
from pathlib import Path

import pytest

import torchslim

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def tiny_llama():
    return torchslim.load_model("tiny-llama")


@pytest.fixture(scope="module")
def tiny_bert():
    return torchslim.load_model("tiny-bert")


@pytest.fixture(params=["tiny-llama", "tiny-bert"])
def model(request, tiny_llama, tiny_bert):
    return copy.deepcopy((tiny_llama if request.param == "tiny-llama" else tiny_bert).model).eval()
