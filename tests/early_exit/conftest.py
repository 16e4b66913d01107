import pytest
import torch
from torch import nn

from torchslim.zoo.tiny import BERT_SPECIALS, byte_tokenizer


def tiny_classifier(layers: int = 4, labels: int = 7, seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=256 + len(BERT_SPECIALS), pad_token_id=0, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=128, num_labels=labels)
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg).eval()


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.stages = nn.Sequential(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                                    nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
                                    nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))).flatten(1))


@pytest.fixture
def tokenizer():
    return byte_tokenizer(BERT_SPECIALS, bert=True)


@pytest.fixture
def text_batch(tokenizer):
    texts = ["A short one.", "This passage is quite a lot longer than the first one, with padding.", "Middle size here."]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
