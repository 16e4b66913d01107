"""``export hf --dense``: packed convolutions and embeddings come back as float Conv2d / Embedding (a ViT's quantized
patch embedding is a convolution, not a linear layer), and from_pretrained reads the folder."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import ViTForImageClassification

import torchslim
from torchslim.artifact.export_hf import dense_conv, dense_linear, dense_module
from torchslim.core.errors import TorchSlimError
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig
from torchslim.zoo.families import build_family

EXE = str(Path(sys.executable).with_name("torchslim"))


def test_export_hf_dense_writes_a_quantized_vit_with_its_patch_convolution_in_float(tmp_path):
    fam = build_family("vit")
    torchslim.quantize_(fam.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    patch = fam.model.vit.embeddings.patch_embeddings.projection
    assert dense_linear(patch) is None and isinstance(dense_module(patch), nn.Conv2d)
    x = fam.batches(1)[0]
    out = fam.output(x)
    torchslim.save(fam.model, tmp_path / "q")
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "COLUMNS": "240"}
    r = subprocess.run([EXE, "export", "hf", str(tmp_path / "q"), "--out", str(tmp_path / "hf"), "--dense", "--no-eval"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hf = ViTForImageClassification.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert isinstance(hf.vit.embeddings.patch_embeddings.projection, nn.Conv2d)
    with torch.no_grad():
        got = hf(**x).logits
    assert float((got - out).norm() / out.norm()) < 0.01     # int8 kernels take bf16 activations


@pytest.mark.parametrize("quantized", [False, True])
def test_export_hf_dense_writes_factorized_gpt2_layers_as_their_product(tmp_path, quantized):
    """A low-rank pair (with its bias, with int8 factors inside it) densifies whole into the model's own Conv1D."""
    from transformers import GPT2LMHeadModel

    from torchslim.artifact.export_hf import export_hf
    from torchslim.lowrank import LowRankConfig

    fam = build_family("gpt2")
    torchslim.factorize_(fam.model, LowRankConfig(method="svd", ratio=0.2, measure_speed=False))
    if quantized:
        torchslim.quantize_(fam.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                                                        selector=torchslim.Selector(exclude=("lm_head",))))
    x = fam.batches(1)[0]
    out = fam.output(x)
    torchslim.save(fam.model, tmp_path / "a")
    assert export_hf(tmp_path / "a", tmp_path / "hf", dense=True)["densified_layers"] == 8   # the pairs, not factors
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    with torch.no_grad():
        got = hf(**x).logits
    assert float((got - out).norm() / out.norm()) < (0.01 if quantized else 1e-5)


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1), dict(groups=2, dilation=2, padding=2)])
def test_a_packed_convolution_densifies_to_the_convolution_it_computes(kw):
    from torchslim.quantization.qconv import quantize_conv_weight_only

    conv = nn.Conv2d(4, 6, 3, bias=True, **kw)
    q = quantize_conv_weight_only(conv, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    x = torch.randn(2, 4, 9, 9)
    assert torch.allclose(dense_conv(q)(x), q(x), atol=1e-5)


def test_a_convolution_with_a_fused_relu_is_refused_not_densified():
    class Fused(nn.Module):
        geometry, fused_relu = object(), True

        def dense_weight(self):
            return torch.zeros(1)

    Fused.geometry = type("G", (), {"in_channels": 3, "out_channels": 4})()
    with pytest.raises(TorchSlimError, match="ReLU fused"):
        dense_conv(Fused())
