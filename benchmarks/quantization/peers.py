"""Peer libraries run on the same model in the same process, for side-by-side rows.

Each builder returns ``(model-like, note)``; a peer that fails is reported with its error
instead of being silently dropped.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn


def torchao_int4(base: nn.Module, group: int) -> tuple[nn.Module, str]:
    """torchao 0.18's CPU int4 weight-only path (Int4OpaqueTensor, bf16 activations)."""
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    m = copy.deepcopy(base).to(torch.bfloat16)
    skipped = []

    def fits(mod: nn.Module, fqn: str) -> bool:
        ok = isinstance(mod, nn.Linear) and mod.in_features % group == 0 and "lm_head" not in fqn
        if isinstance(mod, nn.Linear) and not ok:
            skipped.append(fqn)
        return ok

    quantize_(m, PrototypeInt4WeightOnlyConfig(group_size=group), filter_fn=fits)
    return _Fp32Out(m), f"torchao PrototypeInt4WeightOnly g{group}, bf16 model; {len(skipped)} linears left bf16"


class _Fp32Out(nn.Module):
    """Calls a bf16 model and returns fp32 logits, so tasks see the usual dtype."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m
        self.config = getattr(m, "config", None)
        self.generation_config = getattr(m, "generation_config", None)

    def forward(self, *args, **kwargs):
        out = self.m(*args, **kwargs)
        if getattr(out, "logits", None) is not None:
            out.logits = out.logits.float()
        return out

    def generate(self, *args, **kwargs):
        return self.m.generate(*args, **kwargs)


class OrtCausalLM(nn.Module):
    """An ONNX Runtime session (no KV cache) behind ``model(input_ids=...)`` returning ``.logits``."""

    def __init__(self, path: Path, threads: int):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        logits = self.session.run(None, {"input_ids": input_ids.numpy()})[0]

        class Out:
            pass

        out = Out()
        out.logits = torch.from_numpy(logits)
        out.loss = None
        return out


def ort_int4(base: nn.Module, block: int) -> tuple[nn.Module, str]:
    """ONNX Runtime MatMulNBits int4 (RTN, block ``block``) on a legacy-exported graph without KV cache."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    folder = Path(tempfile.mkdtemp())
    fp32 = folder / "model.onnx"
    ids = torch.ones(1, 16, dtype=torch.long)
    torch.onnx.export(Wrap(base), (ids,), str(fp32), input_names=["input_ids"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}}, opset_version=17, dynamo=False)
    q = MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=block, is_symmetric=False)
    q.process()
    int4 = folder / "model.int4.onnx"
    q.model.save_model_to_file(str(int4), use_external_data_format=True)
    return OrtCausalLM(int4, torch.get_num_threads()), f"ORT MatMulNBits int4 block {block}, no KV cache (no decode)"
