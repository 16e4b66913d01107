import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.quantization.cast import CastConfig, CastLinear


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_cast_error_bound_and_dtypes(dtype, tol):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8))
    x = torch.randn(16, 64)
    ref = m(x)
    torchslim.quantize_(m, CastConfig(dtype=dtype))
    assert all(isinstance(m[i], CastLinear) and m[i].weight.dtype == dtype for i in (0, 2))
    out = m(x)
    assert out.dtype == torch.float32
    rel = (out - ref).norm() / ref.norm()
    assert 0 < rel < tol


def test_selector_excludes_and_overrides():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    sel = torchslim.Selector(exclude=("2",), overrides={"1": CastConfig(dtype=torch.float16)})
    torchslim.quantize_(m, CastConfig(selector=sel))
    assert m[0].weight.dtype == torch.bfloat16
    assert m[1].weight.dtype == torch.float16
    assert type(m[2]) is nn.Linear
    assert m[1].torchslim_layer_info()["storage"] == "float16"


def test_bad_configs():
    with pytest.raises(ConfigError, match="bfloat16 or float16"):
        CastConfig(dtype=torch.int8)
    m = nn.Sequential(nn.Conv2d(1, 1, 1))
    with pytest.raises(ConfigError, match="applies to nn.Linear and nn.Embedding"):
        torchslim.quantize_(m, CastConfig(selector=torchslim.Selector(include=(nn.Conv2d,))))


def test_tied_embeddings_stay_tied_and_round_trip(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()
    n_params = sum(p.numel() for p in m.parameters())
    ids = torch.randint(0, 64, (1, 6))
    ref = m(ids).logits
    torchslim.quantize_(m, CastConfig())
    assert m.lm_head.weight is m.model.embed_tokens.weight and m.lm_head.weight.dtype == torch.bfloat16
    assert sum(p.numel() for p in m.parameters()) == n_params
    out = m(ids).logits
    assert out.dtype == torch.float32 and (out - ref).norm() / ref.norm() < 0.05
    torchslim.save(m, tmp_path / "t")
    m2 = torchslim.load(tmp_path / "t")
    assert m2.lm_head.weight is m2.model.embed_tokens.weight
    assert torch.equal(m2(ids).logits, out)


def test_a_selector_matching_nothing_is_an_error():
    import pytest
    from torch import nn

    import torchslim
    from torchslim.core.errors import ConfigError

    with pytest.raises(ConfigError, match="matched no layer"):
        torchslim.quantize_(nn.Sequential(nn.Linear(2, 2)), torchslim.CastConfig(
            selector=torchslim.Selector(include=("nothing",))))
