"""load_hf_folder: any HF folder on disk, offline, with the matching task."""
from __future__ import annotations

import pytest
import torch

from torchslim.core.errors import ConfigError, UnknownModelError
from torchslim.tasks.causal_lm import CausalLMTask
from torchslim.tasks.embedding import SentenceEmbeddingTask
from torchslim.zoo.hf import load_hf_folder
from torchslim.zoo.tiny import tiny_bert, tiny_llama


def _save(loaded, folder, tokenizer=True):
    loaded.model.save_pretrained(folder)
    if tokenizer:
        loaded.tokenizer.save_pretrained(folder)
    return folder


def test_decoder_folder_gets_causal_lm(tmp_path):
    src = tiny_llama(seed=3)
    got = load_hf_folder(_save(src, tmp_path / "lm"), max_eval_windows=2)
    assert type(got.model).__name__ == "LlamaForCausalLM" and not got.model.training
    assert got.source == {"kind": "hf", "path": str((tmp_path / "lm").resolve())} and got.name == "lm"
    assert all(torch.equal(a, b) for a, b in zip(src.model.state_dict().values(), got.model.state_dict().values()))
    assert got.model.lm_head.weight.data_ptr() == got.model.model.embed_tokens.weight.data_ptr()
    assert isinstance(got.task, CausalLMTask) and got.task.max_eval_windows == 2
    expected = CausalLMTask(src.tokenizer, max_eval_windows=2).evaluate(src.model)["perplexity"]
    assert got.task.evaluate(got.model)["perplexity"] == pytest.approx(expected, rel=1e-6)


def test_encoder_folder_gets_sentence_embedding(tmp_path):
    folder = _save(tiny_bert(seed=5), tmp_path / "enc")
    got = load_hf_folder(folder, max_eval_sentences=20)
    assert type(got.model).__name__ == "BertModel"
    assert isinstance(got.task, SentenceEmbeddingTask)
    assert got.tokenizer(["Hi"])["input_ids"] == [[2, 77, 110, 3]]
    r = got.task.evaluate(got.model)                  # reference reloaded from the folder
    assert r["cosine_fidelity"] == pytest.approx(1.0, abs=1e-6) and r["eval_sentences"] == 20


def test_task_choice(tmp_path):
    folder = _save(tiny_llama(), tmp_path / "bare", tokenizer=False)
    assert load_hf_folder(folder).task is None
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        load_hf_folder(folder, task="causal-lm")
    src = tiny_llama()
    own = CausalLMTask(src.tokenizer, seq_len=16)
    assert load_hf_folder(folder, task=own).task is own
    with_tok = _save(src, tmp_path / "tok")
    with pytest.raises(ConfigError, match="unknown task 'translation'"):
        load_hf_folder(with_tok, task="translation")


def test_missing_folder_or_config(tmp_path):
    with pytest.raises(UnknownModelError, match="model folder not found"):
        load_hf_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="no config.json"):
        load_hf_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "no-such-arch"}')
    with pytest.raises(UnknownModelError, match="cannot read the model config"):
        load_hf_folder(tmp_path / "bad")


# -- hostile model folders: one line, never a silent wrong model -------------------------------------
def _edit_config(folder, **changes):
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,match", [
    ({"hidden_size": "sixty-four"}, "cannot (read|load) the model"),
    ({"num_attention_heads": 5}, "cannot (read|load) the model"),
    ({"vocab_size": 300}, "do not match|cannot load"),
    ({"num_hidden_layers": 0}, "do not match: .* tensors the model does not use"),
])
def test_inconsistent_configs_are_refused(tmp_path, changes, match):
    folder = _save(tiny_llama(seed=1), tmp_path / "m")
    _edit_config(folder, **changes)
    with pytest.raises(UnknownModelError, match=match):
        load_hf_folder(folder)


def test_truncated_and_pickle_only_weights_are_refused(tmp_path):
    folder = _save(tiny_llama(seed=1), tmp_path / "t")
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:5000])
    with pytest.raises(UnknownModelError, match="cannot load the model"):
        load_hf_folder(folder)
    w.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(UnknownModelError, match="no .safetensors weights; torchslim does not load pickle"):
        load_hf_folder(folder)


def test_a_bogus_architectures_entry_does_not_change_the_task(tmp_path, caplog):
    folder = _save(tiny_llama(seed=1), tmp_path / "b")
    _edit_config(folder, architectures=["BertModel"])
    with caplog.at_level("WARNING", logger="torchslim.zoo"):
        got = load_hf_folder(folder, max_eval_windows=1)
    assert isinstance(got.task, CausalLMTask) and "not a llama model: ignored" in caplog.text
