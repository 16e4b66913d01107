"""Fixtures the search tests share."""
import pytest

from torchslim.search import parse_actions, sensitivity
from torchslim.zoo.tiny import tiny_llama


def scanned(actions: str = "int8,int2g32"):
    """tiny-llama and a scan of its blocks by the block-local proxy (fast)."""
    lm = tiny_llama(seed=0)
    lm.task.max_eval_windows = 4
    return lm, sensitivity(lm.model, lm.task, parse_actions(actions), granularity="block", measure="block")


@pytest.fixture(scope="module")
def scan():
    return scanned()
