from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.artifact.size import artifact_size
from torchslim.eval.size import count_parameters, measure_size, memory_bytes, weight_storage


class PackedInt4Linear(nn.Module):
    """A stand-in quantized layer: int4 weights packed two per byte, fp16 scales, fp32 bias."""

    def __init__(self, in_features: int = 64, out_features: int = 32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float16))
        self.bias = nn.Parameter(torch.ones(out_features))

    def torchslim_layer_info(self) -> dict:
        return {"format": "int4-g64", "kernel": "reference", "weight_elements": self.in_features * self.out_features,
                "weight_tensors": ["qweight", "scales"]}


def test_counts_after_zeroing_half_of_a_weight() -> None:
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.bias.fill_(1.0)
        lin.weight.fill_(0.5)
        lin.weight[:16].zero_()
    total, nonzero = count_parameters(lin)
    assert total == 64 * 32 + 32
    assert nonzero == total - 16 * 64


def test_bits_per_weight_fp32_then_bf16() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    nbytes, elems = weight_storage(model)
    assert elems == 64 * 32 + 32 * 4          # biases are not weight tensors
    assert 8 * nbytes / elems == 32.0
    size = measure_size(model.to(torch.bfloat16), artifact_dir=None)
    assert size.bits_per_weight == 16.0
    assert size.weight_bytes == 2 * elems


def test_packed_weights_count_by_real_storage() -> None:
    layer = PackedInt4Linear()
    nbytes, elems = weight_storage(layer)
    assert elems == 64 * 32
    assert nbytes == 32 * 32 + 32 * 2       # uint8 nibbles + fp16 scales
    assert 8 * nbytes / elems == 4.25
    assert count_parameters(layer) == (64 * 32 + 32, 64 * 32 + 32)


def test_tied_weights_are_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight

    model = Tied()
    assert weight_storage(model) == (10 * 8 * 4, 10 * 8)
    assert count_parameters(model)[0] == 80
    assert memory_bytes(model) == 320


def test_memory_bytes_includes_non_persistent_buffers() -> None:
    lin = nn.Linear(4, 4)
    lin.register_buffer("cache", torch.zeros(100), persistent=False)
    assert memory_bytes(lin) == (16 + 4) * 4 + 400


def test_without_a_sizer_bytes_on_disk_are_not_measured_and_the_note_says_so() -> None:
    size = measure_size(nn.Linear(2, 2))
    assert size.artifact_bytes is None and "not measured" in size.artifact_note
    assert size.parameters == 6


def test_the_sizer_is_called_with_the_model_folder_and_source() -> None:
    seen = []
    lin = nn.Linear(2, 2)
    size = measure_size(lin, artifact_dir="somewhere", source={"kind": "module"},
                        sizer=lambda m, d, src: seen.append((m, d, src)) or (123, "measured"))
    assert seen == [(lin, "somewhere", {"kind": "module"})] and size.artifact_bytes == 123


def test_packed_weight_elements_from_shape() -> None:
    class ShapeOnly(PackedInt4Linear):
        def torchslim_layer_info(self) -> dict:
            return {"storage": "int4", "shape": [self.out_features, self.in_features]}

    layer = ShapeOnly()
    nbytes, elems = weight_storage(layer)
    assert elems == 64 * 32 and nbytes == 32 * 32 + 32 * 2     # default weight tensors: all but bias
    assert count_parameters(layer)[0] == 64 * 32 + 32


def test_real_quantlinear_bits_per_weight() -> None:
    """The project's own packed layer: int4 asym, groups of 128, fp32 scale + offset -> 4 + 64/128 bits."""
    wo = pytest.importorskip("torchslim.quantization.weight_only")
    from torchslim.api import quantize_

    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    quantize_(model, wo.WeightOnlyConfig())
    size = measure_size(model, sizer=artifact_size)
    nbytes, elems = weight_storage(model)
    assert elems == 256 * 128 + 128 * 64
    assert 8 * nbytes / elems == 4.5
    assert count_parameters(model)[0] == elems + 128 + 64
    assert size.bits_per_weight == 4.5 and size.artifact_bytes > nbytes


def test_a_tied_embedding_reading_the_heads_codes_counts_once() -> None:
    import torchslim
    from torchslim import WeightOnlyConfig
    from torchslim.quantization import IntFormat, PerChannel, PerGroup
    from torchslim.zoo.tiny import tiny_llama

    model = tiny_llama().model
    before, _ = count_parameters(model)
    head = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32),
                                                selector=torchslim.Selector(overrides={"lm_head": head})))
    assert type(model.model.embed_tokens).__name__ == "PackedEmbedding"
    after, _ = count_parameters(model)
    assert after == before                      # the same logical weights, the shared table once
    nbytes, elements = weight_storage(model)
    table = model.config.vocab_size * model.config.hidden_size
    linears = sum(m.in_features * m.out_features for n, m in model.named_modules() if n.endswith("_proj"))
    assert elements == table + linears


def test_pruning_keeps_the_parameter_count_of_every_sparse_layer():
    # sparse layers build their stored values in state_dict(): freed between layers, a reused address made a
    # later layer look like an alias of an earlier one and count 0 parameters (the total moved run to run)
    import torchslim
    from torchslim.eval.size import count_parameters
    from torchslim.pruning import UnstructuredConfig
    from torchslim.zoo.tiny import build_tiny_llama

    m = build_tiny_llama().eval()
    total, _ = count_parameters(m)
    torchslim.prune_(m, UnstructuredConfig(sparsity=0.5))
    for _ in range(5):
        assert count_parameters(m)[0] == total


def test_quantized_weights_count_non_zero_as_they_compute() -> None:
    """Quantizing never adds non-zero weights: a packed layer's non-zero count is that of the weight it computes
    with (SmolLM2 showed 134 M -> 135 M: exact float zeros counted, packed codes all taken for non-zero)."""
    import torchslim
    from torchslim import WeightOnlyConfig
    from torchslim.quantization import IntFormat, PerChannel

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16, bias=False))
    with torch.no_grad():
        model[0].weight[:, :4] = 0.0          # exact zeros stay zero
        model[0].weight[0, 4:] = 1e-6         # tiny, but row 0 has its own scale: kept non-zero
        model[0].weight[1, 4:8] = 1e-6        # rounds to code 0 beside row 1's large weights
    before = count_parameters(model)
    assert before == (512, 512 - 64)
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    total, nonzero = count_parameters(model)
    assert total == 512
    assert nonzero == int(torch.count_nonzero(model[0].dequantize())) <= 512 - 64 - 4
    assert bool((model[0].dequantize()[0, 4:] != 0).all())
    assert count_parameters(model, nonzero=False) == (512, None)
