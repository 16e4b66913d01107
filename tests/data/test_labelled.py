"""The labelled offline text tasks: fixed, disjoint splits with every class in each."""
import pytest

from torchslim.core.errors import ConfigError
from torchslim.data.labelled import SPLITS, TASKS, class_names, labelled_split, passages


@pytest.mark.parametrize("task", TASKS)
def test_splits_are_disjoint_deterministic_and_cover_every_class(task):
    seen = set()
    for split in SPLITS:
        texts, labels = labelled_split(task, split)
        assert len(texts) == len(labels) > 50 and set(labels) == set(range(len(class_names(task))))
        assert not seen & set(texts)
        seen |= set(texts)
        assert labelled_split(task, split) == (texts, labels)


def test_passages_and_errors():
    assert passages("a b c d e", words=2) == ["a b", "c d"]
    with pytest.raises(ConfigError, match="unknown labelled text task"):
        labelled_split("nope", "test")
    with pytest.raises(ConfigError, match="unknown split"):
        labelled_split("pydoc", "dev")
