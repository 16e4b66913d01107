"""HF folders out: config.json that from_pretrained can trust, or a marker naming torchslim.load; relocatable."""
import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import torchslim
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig
from torchslim.zoo.tiny import tiny_llama


def test_from_pretrained_refuses_a_compressed_artifact_with_a_message_naming_torchslim_load(tmp_path):
    loaded = torchslim.load_model("tiny-llama")
    torchslim.quantize_(loaded.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    torchslim.save(loaded.model, tmp_path / "q")
    with pytest.raises(ValueError, match="torchslim.load"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "q", local_files_only=True)
    again = torchslim.load(tmp_path / "q")
    ids = torch.arange(10).reshape(1, 10)
    assert torch.equal(again(ids).logits, loaded.model(ids).logits)


def test_a_plain_model_artifact_stays_a_standard_hf_folder(tmp_path):
    loaded = torchslim.load_model("tiny-llama")
    torchslim.save(loaded.model, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["model_type"] == "llama"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "p", local_files_only=True)
    ids = torch.arange(10).reshape(1, 10)
    assert torch.allclose(hf(ids).logits, loaded.model(ids).logits, atol=1e-6)


def test_an_artifact_of_an_hf_folder_carries_its_tokenizer_and_survives_a_move(tmp_path):
    src = tiny_llama(seed=2)
    src.model.save_pretrained(tmp_path / "src")
    src.tokenizer.save_pretrained(tmp_path / "src")
    loaded = torchslim.load_model(str(tmp_path / "src"))
    torchslim.quantize_(loaded.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    torchslim.save(loaded.model, tmp_path / "art", source=loaded.source)
    assert (tmp_path / "art" / "tokenizer.json").is_file()
    shutil.move(tmp_path / "art", tmp_path / "moved")
    shutil.rmtree(tmp_path / "src")
    again = torchslim.load_model(str(tmp_path / "moved"))
    assert again.task is not None and again.tokenizer("hi")["input_ids"]
    assert again.task.evaluate(again.model)["perplexity"] > 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_export_hf_dense_writes_a_folder_from_pretrained_loads(tmp_path, family):
    from torchslim.artifact.export_hf import export_hf
    from torchslim.core.errors import TorchSlimError
    from torchslim.zoo.families import build_family

    fam = build_family(family)
    torchslim.quantize_(fam.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    ids = {"input_ids": torch.arange(12).reshape(1, 12)}
    out = fam.output(ids)
    torchslim.save(fam.model, tmp_path / "q")
    with pytest.raises(TorchSlimError, match="--dense writes them back in float"):
        export_hf(tmp_path / "q", tmp_path / "hf")
    done = export_hf(tmp_path / "q", tmp_path / "hf", dense=True)
    assert done["densified_layers"] > 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    got = hf(**ids).logits.detach()          # float matmuls where the int8 kernel takes bf16 activations
    assert float((got - out).norm() / out.norm()) < 0.01


def test_a_config_transformers_would_reject_is_refused_at_save_time(tmp_path):
    from torchslim.core.errors import ArtifactError

    loaded = torchslim.load_model("tiny-llama")
    loaded.model.config.num_attention_heads = 3          # hidden size 64 is not a multiple of 3
    with pytest.raises(ArtifactError, match="fails transformers' validation .*not a multiple"):
        torchslim.save(loaded.model, tmp_path / "bad")
    assert not (tmp_path / "bad" / "config.json").exists()
