"""Tasks on user data: HF folders load the class their config names (keeping heads) and get a task for it."""
import json

import pytest
import torch

import torchslim
from torchslim.core.errors import ConfigError


@pytest.fixture
def classifier_folder(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from torchslim.zoo.tiny import byte_tokenizer, BERT_SPECIALS

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=261, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    byte_tokenizer(BERT_SPECIALS, bert=True).save_pretrained(tmp_path / "clf")
    data = [{"text": f"example {i}", "label": "pos" if i % 2 else "neg"} for i in range(10)]
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(d) for d in data))
    return tmp_path


def test_a_classifier_folder_keeps_its_head_and_evaluates_on_labelled_jsonl(classifier_folder):
    loaded = torchslim.load_model(str(classifier_folder / "clf"), eval_data=classifier_folder / "eval.jsonl")
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    metrics = loaded.task.evaluate(loaded.model)
    assert 0 <= metrics["top1"] <= 100 and metrics["loss"] > 0
    torchslim.quantize_(loaded.model, torchslim.WeightOnlyConfig())
    assert loaded.task.evaluate(loaded.model)["top1"] >= 0
    batch = next(loaded.task.train_batches(4))
    assert loaded.task.loss(loaded.model, batch).ndim == 0


def test_a_classifier_without_labelled_data_says_what_to_pass(classifier_folder):
    (classifier_folder / "plain.txt").write_text("no labels here")
    with pytest.raises(ConfigError, match="classifies text: pass --eval-data, a JSONL file"):
        torchslim.load_model(str(classifier_folder / "clf"), eval_data=classifier_folder / "plain.txt")


def test_causal_lm_windows_are_capped_by_the_context(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from torchslim.zoo.tiny import EOS, byte_tokenizer

    GPT2LMHeadModel(GPT2Config(vocab_size=257, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(
        tmp_path / "g")
    byte_tokenizer((EOS,)).save_pretrained(tmp_path / "g")
    loaded = torchslim.load_model(str(tmp_path / "g"))
    assert loaded.task.seq_len == 64 and loaded.task.evaluate(loaded.model)["perplexity"] > 0


def test_an_image_classifier_folder_evaluates_on_a_folder_of_class_subfolders(tmp_path):
    from tiny_vit import vit_folder_and_images

    vit_folder_and_images(tmp_path)
    loaded = torchslim.load_model(str(tmp_path / "vit"), eval_data=tmp_path / "imgs")
    assert type(loaded.model).__name__ == "ViTForImageClassification"
    assert loaded.task.eval_x.shape == (6, 3, 32, 32) and 0 <= loaded.task.evaluate(loaded.model)["top1"] <= 100
