"""User data for calibration and evaluation: a text file, a JSONL file, or a folder.

* a ``.txt`` (or any non-JSONL) file: its text, whole (causal LMs cut it into windows);
* a ``.jsonl`` file: one JSON object per line with a ``"text"`` field, and a ``"label"`` (an integer
  class id, or a label name the model's config knows) for classification;
* a folder: every ``*.txt`` file in it (sorted by name), or, for image classification, one sub-folder
  per class name holding images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``).

Every error names the file (and the line of a JSONL file).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.core.codec import shown
from torchslim.core.errors import ConfigError
from torchslim.core.io import read_text

MAX_FILE_BYTES = 1 << 30
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class UserData:
    """Examples read from a user's file or folder: ``texts`` (and ``labels`` when labelled), or image
    ``paths`` with ``labels``; ``source`` names where they came from."""

    source: str
    texts: list[str] = field(default_factory=list)
    labels: list[Any] | None = None
    paths: list[Path] = field(default_factory=list)

    @property
    def text(self) -> str:
        """All texts joined by a blank line (a causal LM's evaluation or calibration text)."""
        return "\n\n".join(self.texts)


def read_user_data(path: str | Path) -> UserData:
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_folder(path)
    text = read_text(path, MAX_FILE_BYTES, "data not found")
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text)
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty")
    return UserData(str(path), [text])


def _read_jsonl(path: Path, text: str) -> UserData:
    texts, labels = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"{path}:{i}: not a JSON object ({str(e)[:80]})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ConfigError(f"{path}:{i}: each line needs a \"text\" string, got {shown(obj)}")
        texts.append(obj["text"])
        if "label" in obj:
            if not isinstance(obj["label"], (int, str)) or isinstance(obj["label"], bool):
                raise ConfigError(f"{path}:{i}: \"label\" must be a class id or a label name, got {shown(obj['label'])}")
            labels.append(obj["label"])
    if not texts:
        raise ConfigError(f"{path}: no examples")
    if labels and len(labels) != len(texts):
        raise ConfigError(f"{path}: {len(texts) - len(labels)} line(s) have no \"label\" while others do")
    return UserData(str(path), texts, labels or None)


def _read_folder(path: Path) -> UserData:
    txt = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".txt")
    if txt:
        return UserData(str(path), [read_user_data(p).text for p in txt])
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    paths, labels = [], []
    for c in classes:
        for img in sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            paths.append(img)
            labels.append(c.name)
    if not paths:
        raise ConfigError(f"{path}: no .txt files and no class sub-folders with images")
    return UserData(str(path), labels=labels, paths=paths)


def label_ids(data: UserData, label2id: dict[str, int] | None, num_labels: int) -> list[int]:
    """Integer class ids of ``data.labels`` (names through the model's ``label2id``), checked against ``num_labels``."""
    ids = []
    for i, lab in enumerate(data.labels or []):
        if isinstance(lab, str):
            if lab.isdigit():
                lab = int(lab)
            elif label2id and lab in label2id:
                lab = label2id[lab]
            else:
                raise ConfigError(f"{data.source}: label {shown(lab)} (example {i + 1}) is not one of the model's "
                                  f"labels ({', '.join(sorted(label2id or {})) or 'none named'})")
        if not 0 <= lab < num_labels:
            raise ConfigError(f"{data.source}: label {lab} (example {i + 1}) is outside the model's {num_labels} classes")
        ids.append(lab)
    return ids
