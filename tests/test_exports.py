"""`torchslim export hf` of a zoo model's artifact writes the tokenizer the model is loaded with."""
from __future__ import annotations

import torchslim
from torchslim.exports import export_hf_folder
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig


def test_a_zoo_artifact_exports_with_its_tokenizer(tmp_path) -> None:
    from transformers import AutoTokenizer

    lm = torchslim.load_model("tiny-llama")
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    torchslim.save(lm.model, tmp_path / "art", source=lm.source)
    done = export_hf_folder(tmp_path / "art", tmp_path / "hf", dense=True)
    assert "tokenizer" in done and (tmp_path / "hf" / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=False)
    assert tok("hello world")["input_ids"] == lm.tokenizer("hello world")["input_ids"]
