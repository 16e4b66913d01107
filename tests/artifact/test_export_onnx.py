"""ONNX export: packed layers become ONNX Runtime's int4/int8 operators with the same codes, and the exported
model computes what the torchslim model computes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx_run import ort_greedy_causal

import torchslim
from torchslim import W8A8Config, WeightOnlyConfig
from torchslim.exports import export_onnx
from torchslim.quantization import ActMode, IntFormat, PerChannel, PerGroup
from torchslim.zoo.tiny import tiny_bert, tiny_llama

CASES = {
    "int4-asym": (tiny_llama, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)),
                  "MatMulNBits", 2e-2),
    "int4-sym": (tiny_llama, WeightOnlyConfig(format=IntFormat(4), granularity=PerGroup(64)), "MatMulNBits", 1e-4),
    "int8": (tiny_llama, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()), "DequantizeLinear", 2e-2),
    "w8a8-dynamic-smooth": (tiny_bert, W8A8Config(mode=ActMode.DYNAMIC, smooth_alpha=0.5), "MatMulIntegerToFloat",
                            2e-2),
    "w8a8-dynamic": (tiny_bert, W8A8Config(mode=ActMode.DYNAMIC), "MatMulIntegerToFloat", 2e-2),
    "w8a8-static": (tiny_bert, W8A8Config(mode=ActMode.STATIC), "QuantizeLinear", 1e-4),
    "fp32": (tiny_bert, None, None, 1e-5),
}


def _out(model, feeds):
    with torch.no_grad():
        r = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return (r.logits if hasattr(r, "logits") else r.last_hidden_state).numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_model_runs_the_packed_codes_in_onnx_runtime(tmp_path, case) -> None:
    make, cfg, op, tol = CASES[case]
    lm = make()
    if cfg is not None:
        torchslim.quantize_(lm.model, cfg, **({"calibration": lm.task} if isinstance(cfg, W8A8Config) else {}))
    art = torchslim.save(lm.model, tmp_path / "a", source=lm.source)
    causal = make is tiny_llama                     # causal LMs export as a folder with past key/values
    out = tmp_path / ("m" if causal else "m.onnx")
    info = export_onnx(art, out)
    path = out / "model.onnx" if causal else out
    n_packed = sum(1 for m in lm.model.modules() if type(m).__name__ in ("QuantLinear", "Int8DynamicLinear",
                                                                         "Int8StaticLinear"))
    assert info["packed_layers"] == n_packed and info["float_layers"] == 0
    graph = onnx.load(path).graph
    if op is not None:
        assert sum(n.op_type == op for n in graph.node) >= n_packed
    batch = lm.task.example_inputs(3, 12)                      # another batch and length than exported with
    if causal:
        got = ort_greedy_causal(out, batch["input_ids"].numpy(), 1)[1]
        want = _out(lm.model, {"input_ids": batch["input_ids"].numpy()})
    else:
        sess = ort.InferenceSession(str(path))
        feeds = {i.name: batch[i.name].numpy() for i in sess.get_inputs()}
        got, want = sess.run(None, feeds)[0], _out(lm.model, feeds)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


def test_q_k_v_share_one_dynamic_activation_quantization(tmp_path) -> None:
    lm = tiny_bert()
    torchslim.quantize_(lm.model, W8A8Config(mode=ActMode.DYNAMIC))
    export_onnx(torchslim.save(lm.model, tmp_path / "a", source=lm.source), tmp_path / "m.onnx")
    graph = onnx.load(tmp_path / "m.onnx").graph
    quant = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    # per block: q/k/v's shared input, the attention output, the MLP input and the MLP output projection
    assert len(quant) == 4 * lm.model.config.num_hidden_layers
    assert len({n.input[0] for n in quant}) == len(quant)


def test_int4_initializers_hold_the_codes_not_a_float_copy(tmp_path) -> None:
    lm = tiny_llama()
    torchslim.quantize_(lm.model, CASES["int4-asym"][1])
    art = torchslim.save(lm.model, tmp_path / "a", source=lm.source)
    export_onnx(art, tmp_path / "m")
    graph = onnx.load(tmp_path / "m" / "model.onnx").graph
    float_mats = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2]
    # every linear weight went; the lookup table stays
    assert [n.split(".")[-2:] for n in float_mats] == [["embed_tokens", "weight"]]
    packed = [i for i in graph.initializer if i.name.endswith("_B")]
    assert len(packed) == 15 and all(i.data_type == onnx.TensorProto.UINT8 for i in packed)


def test_export_errors_are_one_line(tmp_path) -> None:
    from torchslim.core.errors import TorchSlimError, UnknownModelError

    with pytest.raises((TorchSlimError, UnknownModelError)):
        export_onnx(tmp_path / "missing", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_unsupported_layers_fail_before_the_export(tmp_path, monkeypatch) -> None:
    """A layer ONNX cannot run is refused before the (slow) torch exporter starts."""
    import torch

    from torchslim.artifact.export_onnx import write_onnx
    from torchslim.core.errors import TorchSlimError
    from torchslim.quantization.int8_linear import Int8StaticLinear

    layer = Int8StaticLinear.from_linear(torch.nn.Linear(8, 4), None)
    layer.set_range(-1.0, 1.0)
    layer.act_qmax = lambda: 127           # 7-bit activation codes (CPUs without VNNI): not ONNX's uint8 QDQ
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("the exporter ran"))
    with pytest.raises(TorchSlimError, match="uint8"):
        write_onnx(torch.nn.Sequential(layer), tmp_path / "m.onnx", example_inputs=torch.randn(2, 8))
    assert not (tmp_path / "m.onnx").exists()
