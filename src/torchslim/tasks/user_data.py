"""Tasks on a user's own data (``--calib-data``, ``--eval-data``, ``--seq-len``): the model's task rebuilt on
them, or a task for a model kind that has none without data (text and image classification)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from torchslim.core.bounds import check_seq_len
from torchslim.core.errors import ConfigError, first_line
from torchslim.data.user import UserData, label_ids, read_user_data


def task_with_user_data(loaded: Any, calib: str | Path | None = None, evaluation: str | Path | None = None,
                        seq_len: int | None = None) -> Any:
    """The task of ``loaded`` (a LoadedModel) on the user's data; unchanged when none is given."""
    if calib is None and evaluation is None and seq_len is None:
        return loaded.task
    from torchslim.tasks.model_facts import context_length, task_kind

    cal = read_user_data(calib) if calib is not None else None
    ev = read_user_data(evaluation) if evaluation is not None else None
    kind = loaded.task.name if loaded.task is not None else task_kind(loaded.model)
    check_seq_len(seq_len, loaded.model)
    if kind == "causal-lm":
        from torchslim.tasks.causal_lm import CausalLMTask

        cap = context_length(loaded.model.config, 1 << 30) if hasattr(loaded.model, "config") else 1 << 30
        old = loaded.task.seq_len if loaded.task is not None else 512
        return CausalLMTask(_tokenizer(loaded), seq_len=min(seq_len or old, cap),
                            eval_text=ev.text if ev else None, calibration_text=cal.text if cal else None)
    if kind == "sentence-embedding":
        return _embedding(loaded, cal, ev, seq_len)
    if kind == "text-classification":
        return _text_classification(loaded, cal, ev, seq_len)
    if kind == "image-classification":
        return _image_classification(loaded, cal, ev)
    raise ConfigError(f"{type(loaded.model).__name__} ({kind}): no task takes user data for this kind of model yet")


def _tokenizer(loaded: Any) -> Any:
    if loaded.tokenizer is None:
        raise ConfigError(f"{loaded.name}: user text needs the model's tokenizer, and none was found with it")
    return loaded.tokenizer


def _embedding(loaded: Any, cal: UserData | None, ev: UserData | None, seq_len: int | None) -> Any:
    from torchslim.data.text import split_sentences
    from torchslim.tasks.embedding import SentenceEmbeddingTask

    old = loaded.task
    ref = getattr(old, "_reference", None)
    sentences = (lambda d: [s for t in d.texts for s in (split_sentences(t) or [t])] if d else None)
    return SentenceEmbeddingTask(_tokenizer(loaded), ref, max_length=seq_len or getattr(old, "max_length", 256),
                                 eval_sentences=sentences(ev), calibration_sentences=sentences(cal))


def _text_classification(loaded: Any, cal: UserData | None, ev: UserData | None, seq_len: int | None) -> Any:
    from torchslim.tasks.text_classification import TextClassificationTask

    if ev is None or ev.labels is None:
        raise ConfigError(f"{type(loaded.model).__name__} classifies text: pass --eval-data, a JSONL file with "
                          "\"text\" and \"label\" fields")
    cfg = loaded.model.config
    ids = label_ids(ev, getattr(cfg, "label2id", None), cfg.num_labels)
    cal_ids = label_ids(cal, getattr(cfg, "label2id", None), cfg.num_labels) if cal and cal.labels else None
    return TextClassificationTask(_tokenizer(loaded), ev.texts, ids, cal.texts if cal else None, cal_ids,
                                  max_length=seq_len or 128, data_note=f"labelled examples from {ev.source}")


def _image_classification(loaded: Any, cal: UserData | None, ev: UserData | None) -> Any:
    from torchslim.tasks.classification import ClassificationTask

    if ev is None or not ev.paths:
        raise ConfigError(f"{type(loaded.model).__name__} classifies images: pass --eval-data, a folder with one "
                          "sub-folder of images per class")
    cfg = loaded.model.config
    ex, ey = _pixels(loaded, ev), torch.tensor(label_ids(ev, getattr(cfg, "label2id", None), cfg.num_labels))
    cx, cy = (_pixels(loaded, cal), torch.tensor(label_ids(cal, getattr(cfg, "label2id", None), cfg.num_labels))) \
        if cal is not None and cal.paths else (ex, ey)
    return ClassificationTask(cx, cy, ex, ey, data_note=f"labelled images from {ev.source}")


def _pixels(loaded: Any, data: UserData) -> torch.Tensor:
    processor = loaded.extra.get("image_processor")
    if processor is None:
        load = loaded.extra.get("image_processor_loader")      # the model loader's (zoo.hf): it checks the folder
        if load is None:
            raise ConfigError(f"{loaded.name}: images need the model's image processor (preprocessor_config.json)")
        processor = load()
    chunks = []
    for i in range(0, len(data.paths), 64):          # decoded images are held 64 at a time
        images = [_image(p) for p in data.paths[i : i + 64]]
        try:
            chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
        except Exception as e:  # noqa: BLE001 - the processor refuses an image: one line
            raise ConfigError(f"{data.source}: the image processor refused an image ({first_line(e)})") from None
    return torch.cat(chunks)


MAX_IMAGE_PIXELS = 1 << 26          # 67 M pixels (8192 x 8192): checked from the header, before decoding


def _image(p: Path) -> Any:
    """The image at ``p`` as RGB, refusing one over :data:`MAX_IMAGE_PIXELS` before decoding it."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ConfigError(f"{p}: {w} x {h} pixels, more than the bound of {MAX_IMAGE_PIXELS:,} pixels")
            return im.convert("RGB")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a damaged image (and a decompression bomb)
        raise ConfigError(f"{p}: not a readable image ({first_line(e, 80)})") from None
