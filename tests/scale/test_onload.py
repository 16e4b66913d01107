"""Layer-wise onloading gives the very artifact an in-memory run saves, within one block of memory."""
from __future__ import annotations

import json

import pytest
import torch

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.core.io import ONLOAD_DIR, sha256
from torchslim.quantization import WeightOnlyConfig
from torchslim.scale.onload import compress_onloaded

from _scale_helpers import GPTQ, WANDA, in_memory


def _same_artifact(a, b, calib) -> None:
    assert sha256(a / "model.safetensors") == sha256(b / "model.safetensors")     # byte for byte
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["layers"] == mb["layers"] and ma["aliases"] == mb["aliases"] and ma["source"] == mb["source"]
    assert [h["config"] for h in ma["history"]] == [h["config"] for h in mb["history"]]
    x = calib[0]["input_ids"]
    assert torch.equal(torchslim.load(a)(x).logits, torchslim.load(b)(x).logits)


def test_gptq_onloaded_is_bit_identical_to_in_memory_and_spills_inputs(tiny_folder, calib, gptq_ref, tmp_path):
    out = tmp_path / "gptq"
    _, stats = compress_onloaded(str(tiny_folder), GPTQ, out, calibration=calib, cache_memory="1KB")
    _same_artifact(gptq_ref, out, calib)
    assert stats.spilled_bytes > 0 and stats.blocks == 3 and stats.stages == 1
    assert not (out / ONLOAD_DIR).exists()                          # block files and spilled inputs removed


def test_wanda_onloaded_is_bit_identical_to_in_memory(tiny_folder, calib, wanda_ref, tmp_path):
    out = tmp_path / "wanda"
    compress_onloaded(str(tiny_folder), WANDA, out, calibration=calib, max_memory="10MB")
    _same_artifact(wanda_ref, out, calib)


@pytest.mark.slow      # AWQ's search: ~4 s alone, 20 s on 2 shared cores
def test_two_stages_read_the_first_stages_block_files(tiny_folder, calib, tmp_path):
    cfgs = [torchslim.AWQConfig(scale_only=True, n_samples=2, grid=4), GPTQ]
    ref = in_memory(tiny_folder, cfgs, calib, tmp_path / "ref")       # one pass each, as onloading runs them
    _, stats = compress_onloaded(str(tiny_folder), cfgs, tmp_path / "onl", calibration=calib)
    assert stats.stages == 2
    _same_artifact(ref, tmp_path / "onl", calib)


def test_a_block_larger_than_the_budget_is_a_one_line_error(tiny_folder, calib, tmp_path):
    with pytest.raises(ConfigError, match="one transformer block needs .* more than --max-memory"):
        compress_onloaded(str(tiny_folder), GPTQ, tmp_path / "x", calibration=calib, max_memory="50KB")


def test_a_method_that_does_not_walk_blocks_is_refused(tiny_folder, calib, tmp_path):
    with pytest.raises(ConfigError, match="block by block|whole-model"):
        compress_onloaded(str(tiny_folder), WeightOnlyConfig(), tmp_path / "rtn", calibration=calib)
    global_wanda = torchslim.UnstructuredConfig(sparsity=0.5, importance="wanda", scope="global", n_samples=4)
    with pytest.raises(ConfigError, match="whole-model forwards"):
        compress_onloaded(str(tiny_folder), global_wanda, tmp_path / "gw", calibration=calib)


def test_gpt2_conv1d_weights_onload_into_the_swapped_linears(tmp_path, calib):
    """GPT-2 stores its Conv1D weights [in, out]; the techniques swap them for nn.Linear before a block is read."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from torchslim.zoo.tiny import tiny_llama

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tiny_llama().model.config.vocab_size, n_embd=32, n_layer=2, n_head=4,
                        n_positions=256)
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    ref = in_memory(folder, GPTQ, calib, tmp_path / "ref")
    _, stats = compress_onloaded(str(folder), GPTQ, tmp_path / "onl", calibration=calib)
    assert stats.blocks == 2
    _same_artifact(ref, tmp_path / "onl", calib)
