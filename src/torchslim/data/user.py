"""User data for calibration and evaluation: a text file, a JSONL file, or a folder.

* a ``.txt`` (or any non-JSONL) file: its text, whole (causal LMs cut it into windows);
* a ``.jsonl`` file: one JSON object per line with a ``"text"`` field, and a ``"label"`` (an integer
  class id, or a label name the model's config knows) for classification;
* a folder: every ``*.txt`` file in it (sorted by name), or, for image classification, one sub-folder
  per class name holding images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``).

Every error names the file (and the line of a JSONL file). Reads are bounded: at most
:data:`MAX_TEXT_BYTES` of text per file or folder (the rest is not read: a warning says so),
:data:`MAX_EXAMPLES` JSONL lines, :data:`MAX_FILES` files of a folder and :data:`MAX_IMAGES` images.
"""
from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.core.codec import shown
from torchslim.core.errors import ConfigError

log = logging.getLogger("torchslim.data")

MAX_TEXT_BYTES = 2 << 20       # text used per file or folder: ~500 k tokens, more than calibration draws
MAX_EXAMPLES = 100_000         # JSONL lines
MAX_FILES = 10_000             # entries of a data folder looked at
MAX_IMAGES = 1024              # images used (1024 x 3 x 224 x 224 float32 is 600 MiB)
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


def read_user_data(path: str | Path, limit: int = MAX_TEXT_BYTES) -> UserData:
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_folder(path)
    text, cut = read_capped(path, limit)
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text.rsplit("\n", 1)[0] if cut else text)
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty")
    return UserData(str(path), [text])


def read_capped(path: Path, limit: int) -> tuple[str, bool]:
    """The first ``limit`` bytes of a UTF-8 file as text, and whether it was longer (a warning says so)."""
    if not path.is_file():
        what = "not a regular file" if path.exists() or path.is_symlink() else "data not found"
        raise ConfigError(f"{what}: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    cut = len(raw) > limit
    raw = raw[:limit]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (cut and e.start >= len(raw) - 3 and e.reason == "unexpected end of data"):
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        text = raw[: e.start].decode("utf-8")
    if cut:
        size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
        log.warning("%s is larger than %s: only its first %s are used (the bound on user data read per file)", path,
                    size, size)
    return text, cut


def _read_jsonl(path: Path, text: str) -> UserData:
    texts, labels = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(texts) >= MAX_EXAMPLES:
            log.warning("%s: only its first %d examples are used (the bound on JSONL lines)", path, MAX_EXAMPLES)
            break
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


def _entries(path: Path) -> list[Path]:
    """The first :data:`MAX_FILES` entries of a folder, sorted (a warning says when there are more)."""
    try:
        found = list(itertools.islice(path.iterdir(), MAX_FILES + 1))
    except OSError as e:
        raise ConfigError(f"{path}: cannot list it ({e.strerror or e})") from None
    if len(found) > MAX_FILES:
        log.warning("%s holds more than %d entries: only %d are looked at (the bound on a data folder)", path,
                    MAX_FILES, MAX_FILES)
    return sorted(found[:MAX_FILES])


def _read_folder(path: Path) -> UserData:
    txt = [p for p in _entries(path) if p.suffix == ".txt" and p.is_file()]
    if txt:
        texts, budget = [], MAX_TEXT_BYTES
        for p in txt:
            if budget <= 0:
                log.warning("%s: only the first %d MiB of its text files are used (the bound on user data)", path,
                            MAX_TEXT_BYTES >> 20)
                break
            texts.append(read_capped(p, budget)[0])
            budget -= len(texts[-1].encode("utf-8"))
        return UserData(str(path), texts)
    paths, labels = [], []
    for c in (p for p in _entries(path) if p.is_dir()):
        for img in (p for p in _entries(c) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            paths.append(img)
            labels.append(c.name)
    if not paths:
        raise ConfigError(f"{path}: no .txt files and no class sub-folders with images")
    if len(paths) > MAX_IMAGES:
        log.warning("%s: %d images; only the first %d are used (the bound on images)", path, len(paths), MAX_IMAGES)
    return UserData(str(path), labels=labels[:MAX_IMAGES], paths=paths[:MAX_IMAGES])


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
