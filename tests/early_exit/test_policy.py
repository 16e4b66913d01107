"""Exit policies: settings that never fire, patience across exits, typed validation."""
import pytest
import torch

from torchslim.core.config import config_from_dict
from torchslim.core.errors import ConfigError
from torchslim.early_exit import EntropyPolicy, LearnedPolicy, PatiencePolicy
from torchslim.early_exit.policy import compact_state


@pytest.mark.parametrize("cls", [EntropyPolicy, PatiencePolicy, LearnedPolicy])
def test_never_fires_on_any_logits(cls):
    pol = cls.never()
    state = pol.start(64, torch.device("cpu"))
    for k in range(6):
        logits = torch.zeros(64, 3)
        logits[:, 0] = 100.0                         # certain, and the same prediction at every exit
        assert not pol.decide(k, logits, torch.full((64,), 100.0), state).any()


def test_patience_fires_after_agreeing_exits():
    pol = PatiencePolicy(patience=2)
    state = pol.start(2, torch.device("cpu"))
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    flip = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out = [pol.decide(0, logits, torch.zeros(2), state).tolist(), pol.decide(1, flip, torch.zeros(2), state).tolist(),
           pol.decide(2, flip, torch.zeros(2), state).tolist()]
    assert out == [[False, False], [False, False], [True, False]]
    kept = compact_state(state, torch.tensor([False, True]))
    assert kept["count"].tolist() == [1] and kept["last"].tolist() == [0]


def test_policies_validate_and_round_trip():
    with pytest.raises(ConfigError, match="threshold"):
        EntropyPolicy(threshold=2.0)
    with pytest.raises(ConfigError, match="patience"):
        PatiencePolicy(patience=0)
    p = LearnedPolicy(threshold=0.8)
    assert config_from_dict(p.to_dict()) == p
