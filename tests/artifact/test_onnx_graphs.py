"""ONNX export of every family torchslim loads (tiny models from zoo/families.py): the exported graphs run in ONNX
Runtime and compute what the torchslim model computes; causal LMs and encoder-decoders generate greedily with past
key/values and pick the same tokens as torch recomputing every prefix.

Tolerances: float graphs and int4 symmetric groups agree to 1e-4 of the largest logit (the same codes and scales;
only summation order differs); int4 asymmetric groups and int8 weight-only to 2e-2 (ONNX Runtime rounds the float
zero point per group; torchslim's int8 kernel rounds to bfloat16)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx_run import (
    ort_greedy_causal,
    ort_greedy_seq2seq,
    torch_greedy_causal,
    torch_greedy_seq2seq,
)
from torch import nn

import torchslim
from torchslim import WeightOnlyConfig
from torchslim.artifact.export_onnx import write_onnx
from torchslim.core.errors import ConfigError
from torchslim.quantization import IntFormat, PerChannel, PerGroup
from torchslim.zoo.families import build_family

INT4_SYM = WeightOnlyConfig(format=IntFormat(4), granularity=PerGroup(128))        # 64 inputs: one partial group
INT4_ASYM = WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32))


def _ops(path) -> dict[str, int]:
    ops = [n.op_type for n in onnx.load(path).graph.node]
    return {o: ops.count(o) for o in set(ops)}


def _packed(model) -> int:
    return sum(1 for m in model.modules() if type(m).__name__ in ("QuantLinear", "Int8DynamicLinear",
                                                                  "Int8StaticLinear", "QuantConv2d"))


CAUSAL = {"llama": (INT4_SYM, 1e-4), "opt": (INT4_ASYM, 2e-2), "gpt2": (None, 1e-4)}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f == "gpt2" else f for f in CAUSAL])
def test_causal_lm_folder_generates_with_past_key_values(tmp_path, family) -> None:
    cfg, tol = CAUSAL[family]
    model = build_family(family).model
    if cfg is not None:
        torchslim.quantize_(model, cfg)
    info = write_onnx(model, tmp_path / "out")
    assert {"model.onnx", "config.json", "generation_config.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == model.config.model_type
    assert info["packed_layers"] == _packed(model) and info["float_layers"] == 0
    if cfg is not None:   # every linear (OPT's fc1/fc2 were Gemm nodes) runs the codes; no float Gemm is left
        ops = _ops(tmp_path / "out" / "model.onnx")
        assert ops.get("MatMulNBits") == info["rewritten"]["nbits"] == _packed(model) and "Gemm" not in ops
    sess = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    names = [i.name for i in sess.get_inputs()]
    assert names[:2] == ["input_ids", "attention_mask"] and "past_key_values.0.key" in names
    assert [o.name for o in sess.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
    ids = torch.randint(3, 200, (2, 7), generator=torch.Generator().manual_seed(3))
    got, first = ort_greedy_causal(tmp_path / "out", ids.numpy(), 5)
    with torch.no_grad():
        want = model(input_ids=ids).logits.numpy()
    assert np.abs(first - want).max() <= tol * np.abs(want).max()
    if tol <= 1e-4:
        assert got == torch_greedy_causal(model, ids, 5)


# three graphs each: 40-70 s on shared CPUs, so with the slow suite
@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) for f in ("bart", "t5")])
def test_encoder_decoder_folder_generates_with_past_key_values(tmp_path, family) -> None:
    model = build_family(family).model
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    info = write_onnx(model, tmp_path / "out")
    assert info["files"] == ["encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"]
    assert info["packed_layers"] == _packed(model) and info["float_layers"] == 0
    assert info["rewritten"] == {"int8": _packed(model)}
    ids = torch.randint(3, 200, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, -2:] = 0
    start = model.config.decoder_start_token_id
    got, got_logits = ort_greedy_seq2seq(tmp_path / "out", ids.numpy(), mask.numpy(), start, 5)
    want, want_logits = torch_greedy_seq2seq(model, ids, mask, start, 5)
    assert got == want
    # torchslim's int8 weight-only kernel rounds its products to bfloat16; ONNX Runtime keeps float32
    assert np.abs(got_logits - want_logits).max() <= 2e-2 * np.abs(want_logits).max()


def test_vit_exports_from_example_inputs_with_int4_layers(tmp_path) -> None:
    fam = build_family("vit")
    torchslim.quantize_(fam.model, WeightOnlyConfig(format=IntFormat(4), granularity=PerGroup(32)))
    example = fam.make_inputs(1, 0)
    info = write_onnx(fam.model, tmp_path / "vit.onnx", example_inputs=example)
    # the linears run MatMulNBits; the patch embedding (an int4 conv) an int4 blocked DequantizeLinear + Conv
    assert info["inputs"] == ["pixel_values"] and info["float_layers"] == 0
    assert info["rewritten"] == {"nbits": _packed(fam.model) - 1, "blocked": 1}
    assert _ops(tmp_path / "vit.onnx")["MatMulNBits"] == _packed(fam.model) - 1
    int4 = [i for i in onnx.load(tmp_path / "vit.onnx").graph.initializer if i.data_type == onnx.TensorProto.INT4]
    assert [tuple(i.dims) for i in int4] == [(64, 192)]          # 64 channels x 3*8*8 inputs, stored as int4
    x = torch.randn(3, 3, 32, 32)                               # another batch size than exported with
    got = ort.InferenceSession(str(tmp_path / "vit.onnx")).run(None, {"pixel_values": x.numpy()})[0]
    want = fam.output({"pixel_values": x}).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_static_int8_cnn_exports_from_its_task_as_qdq(tmp_path) -> None:
    from torchslim import W8A8Config
    from torchslim.quantization import ActMode
    from torchslim.zoo.digits_cnn import build_digits_cnn, digits_task

    torch.manual_seed(0)
    cnn, task = build_digits_cnn().eval(), digits_task()
    torchslim.quantize_(cnn, W8A8Config(mode=ActMode.STATIC, n_samples=16), calibration=task)
    info = write_onnx(cnn, tmp_path / "cnn.onnx", task)
    n = sum(1 for m in cnn.modules() if type(m).__name__ in ("Int8StaticConv2d", "Int8StaticLinear"))
    assert info["inputs"] == ["x"] and info["rewritten"] == {"static": n} and info["float_layers"] == 0
    ops = _ops(tmp_path / "cnn.onnx")     # per layer: a uint8 QuantizeLinear input, two DequantizeLinear
    assert ops["QuantizeLinear"] == n and ops["DequantizeLinear"] == 2 * n
    x = task.example_inputs(5)["x"]
    got = ort.InferenceSession(str(tmp_path / "cnn.onnx")).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = cnn(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()     # the same uint8 x int8 products


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16 * 8 * 8, 96), nn.Linear(96, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(image)).flatten(1)         # 2-D inputs: the exporter writes Gemm nodes
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("bits, grouped", [(4, True), (8, False), (8, True)])
def test_plain_module_with_example_inputs_keeps_gemm_and_conv_codes(tmp_path, bits, grouped) -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    gran = PerGroup(64) if grouped else PerChannel()               # 96 inputs are 1.5 groups of 64
    torchslim.quantize_(net, WeightOnlyConfig(format=IntFormat(bits), granularity=gran))
    info = write_onnx(net, tmp_path / "net.onnx", example_inputs=torch.randn(1, 3, 8, 8))
    ops = _ops(tmp_path / "net.onnx")
    assert info["inputs"] == ["image"] and info["packed_layers"] == _packed(net) == 3 and "Gemm" not in ops
    if bits == 4:     # the linears run MatMulNBits, the conv an int4 blocked DequantizeLinear (opset 21)
        assert ops.get("MatMulNBits") == 2 and info["rewritten"] == {"nbits": 2, "blocked": 1}
        assert info["float_layers"] == 0
    elif grouped:     # int8 groups: blocked DequantizeLinear (opset 21) of the int8 codes, one scale per group
        assert info["rewritten"] == {"blocked": 3} and info["float_layers"] == 0
    else:             # int8 DequantizeLinear weights feeding the MatMuls and the Conv (ORT fuses them to int8)
        assert info["rewritten"] == {"int8": 3} and info["float_layers"] == 0 and ops["DequantizeLinear"] == 3
    x = torch.randn(4, 3, 8, 8)
    got = ort.InferenceSession(str(tmp_path / "net.onnx")).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(got - want).max() <= (1e-4 if bits == 4 else 2e-2) * np.abs(want).max()


def test_a_module_without_task_or_example_inputs_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="example_inputs"):
        write_onnx(_Net(), tmp_path / "net.onnx")
    assert not (tmp_path / "net.onnx").exists()


def test_a_causal_lm_is_written_as_a_folder_not_a_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="folder"):
        write_onnx(build_family("llama").model, tmp_path / "m.onnx")
