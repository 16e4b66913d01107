"""Fixtures of the training-engine tests."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

# Test modules here import the shared helpers in _train_helpers.py (also a torchrun script).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: exact comparisons, and no OpenMP spinning slow-downs on a busy 2-core box."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide TORCHSLIM_CACHE holding the trained digits-cnn (trained once per session).

    tests/zoo uses the same folder, so whichever runs first trains and the other reads the cache.
    """
    from torchslim.zoo.digits_cnn import load_digits_cnn

    root = tmp_path_factory.getbasetemp() / "torchslim-cache"
    load_digits_cnn(cache_dir=root)
    return root
