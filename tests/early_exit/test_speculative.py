"""Self-speculative decoding: the same greedy tokens as plain decoding, whether drafts are accepted or rejected."""
import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.early_exit.speculative import SelfSpeculativeDecoder, shallow
from torchslim.runtime.decode import FastDecoder
from torchslim.zoo.tiny import build_tiny_llama


@pytest.fixture(scope="module")
def lm():
    return build_tiny_llama(num_hidden_layers=4, initializer_range=0.3)   # varied tokens: drafts often rejected


@pytest.mark.parametrize("exit_layer,k", [(1, 1), (2, 3), (3, 5)])
def test_output_equals_plain_greedy(lm, exit_layer, k):
    ids = torch.randint(1, 250, (1, 10), generator=torch.Generator().manual_seed(exit_layer))
    ref, _ = FastDecoder(lm).generate(ids, 30)
    out, stats = SelfSpeculativeDecoder(lm, exit_layer, k).generate(ids, 30)
    assert torch.equal(out, ref) and stats.new_tokens == 30
    assert 0 < stats.accepted < stats.drafted                    # both paths (accept, reject + crop) ran


def test_shallow_restores_the_depth_and_bad_settings_are_errors(lm):
    with shallow(lm, 1):
        assert lm.config.num_hidden_layers == 1
    assert lm.config.num_hidden_layers == 4
    with pytest.raises(ConfigError, match="exit_layer"):
        SelfSpeculativeDecoder(lm, 4)
    with pytest.raises(ConfigError, match="draft_tokens"):
        SelfSpeculativeDecoder(lm, 2, 0)
