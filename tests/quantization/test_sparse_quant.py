"""Pruned then quantized: int8/int4 codes of the kept weights only, round trip through the artifact."""
import pytest
import torch

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.pruning import UnstructuredConfig
from torchslim.quantization.sparse_quant import SparseQuantLinear
from torchslim.quantization import GPTQConfig, IntFormat, PerChannel, PerGroup, WeightOnlyConfig
from torchslim.zoo.tiny import build_tiny_llama
from torchslim.core.state import state_of

IDS = torch.randint(1, 200, (1, 16), generator=torch.Generator().manual_seed(0))


def _pruned(sparsity=0.5):
    m = build_tiny_llama().eval()
    torchslim.prune_(m, UnstructuredConfig(sparsity=sparsity))
    return m


@pytest.mark.parametrize("bits", [8, 4])
def test_pruned_then_quantized_keeps_zeros_and_round_trips(tmp_path, bits):
    m = _pruned()
    masks = {n: mod.mask.clone() for n, mod in m.named_modules() if hasattr(mod, "mask") and hasattr(mod, "to_linear")}
    ref = {n: m.get_submodule(n).weight.detach().clone() for n in masks}
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(bits), granularity=PerChannel()))
    for n, mask in masks.items():
        layer = m.get_submodule(n)
        assert isinstance(layer, SparseQuantLinear)
        w = layer.dequantize()
        assert torch.equal(w != 0, mask & (w != 0)) and (w[~mask] == 0).all()   # pruned stay exactly zero
        step = ref[n].abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert ((w - ref[n]).abs() <= step / 2 + 1e-6).all()                     # round-to-nearest per channel
    expected = m(input_ids=IDS).logits
    torchslim.save(m, tmp_path / "sq")
    loaded = torchslim.load(tmp_path / "sq")
    assert torch.allclose(loaded(input_ids=IDS).logits, expected, atol=1e-4)
    info = state_of(loaded).manifest["layers"]["model.layers.0.mlp.up_proj"]
    assert info["technique"] == "unstructured+rtn" and info["prune_config"]["_type"] == "UnstructuredConfig"


def test_sparse_quantized_file_is_smaller_than_either_alone(tmp_path):
    sizes = {}
    for name, (sparsity, quant) in {"sparse": (0.5, False), "quant": (0.0, True), "both": (0.5, True)}.items():
        m = _pruned(sparsity) if sparsity else build_tiny_llama().eval()
        if quant:
            torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                                                    selector=torchslim.Selector(exclude=("lm_head",))))
        torchslim.save(m, tmp_path / name)
        sizes[name] = (tmp_path / name / "model.safetensors").stat().st_size
    assert sizes["both"] < sizes["sparse"] and sizes["both"] < sizes["quant"]


def test_quantizing_a_pruned_model_keeps_its_non_zero_count():
    # the eval table's "Non-zero parameters" read 1.00x for a 50% sparse int8 SmolLM2 (every code counted)
    from torchslim.eval.size import count_parameters

    m = _pruned()
    total, nonzero = count_parameters(m)
    assert nonzero < 0.8 * total
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    after_total, after_nonzero = count_parameters(m)
    assert after_total == total and abs(after_nonzero - nonzero) < 0.01 * total   # a few codes may round to 0


def test_unsupported_schemes_on_pruned_layers_are_clear_errors():
    with pytest.raises(ConfigError, match="per-channel"):
        torchslim.quantize_(_pruned(), WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    with pytest.raises(ConfigError, match="pruned"):
        torchslim.quantize_(_pruned(), GPTQConfig(), calibration=[{"input_ids": IDS}])


def test_structured_pruned_then_int4_quantized_round_trips(tmp_path):
    """Structured pruning leaves ordinary smaller linears, which every quantization method accepts."""
    m = build_tiny_llama().eval()
    torchslim.prune_(m, torchslim.StructuredConfig(targets=("heads", "neurons"), ratio=0.5))
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32),
                                            selector=torchslim.Selector(exclude=("lm_head",))))
    expected = m(input_ids=IDS).logits
    torchslim.save(m, tmp_path / "sq")
    loaded = torchslim.load(tmp_path / "sq")
    assert loaded.model.layers[0].mlp.down_proj.in_features == 64
    assert torch.allclose(loaded(input_ids=IDS).logits, expected, atol=1e-4)
