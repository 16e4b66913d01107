"""Fixtures of the zoo tests."""
from __future__ import annotations

import time
from typing import Any

import pytest


@pytest.fixture(scope="session")
def digits_first_load(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first load of digits-cnn in a session cache (trains unless tests/train already did).

    Same folder as tests/train's ``digits_cache`` fixture, so the model is trained once per session.
    """
    from torchslim.zoo.digits_cnn import load_digits_cnn

    root = tmp_path_factory.getbasetemp() / "torchslim-cache"
    t0 = time.perf_counter()
    loaded = load_digits_cnn(cache_dir=root)
    return {"root": root, "loaded": loaded, "seconds": time.perf_counter() - t0}
