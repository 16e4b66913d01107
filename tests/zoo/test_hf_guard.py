"""No code from a model folder, and a folder's files and numbers are checked before transformers reads them."""
from __future__ import annotations

import ast
import json
import math
import os
import shutil
from pathlib import Path

import pytest

import torchslim
from torchslim.core.errors import UnknownModelError
from torchslim.zoo.hf_guard import LOADER_KWARGS, check_folder

SRC = Path(torchslim.__file__).parent


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    from torchslim.zoo.tiny import tiny_llama

    folder = tmp_path_factory.mktemp("guard") / "lm"
    src = tiny_llama(seed=2)
    src.model.save_pretrained(folder)
    src.tokenizer.save_pretrained(folder)
    return folder


def _copy(lm: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(lm, tmp_path / "m"))


def _edit(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _loader_calls(tree: ast.AST):
    """Every ``X.from_pretrained(...)`` / ``X.from_config(...)`` call in a parsed file (docstrings and messages
    that name these methods are text, not calls)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("from_pretrained", "from_config"):
            owner = ast.unparse(node.func.value)
            if owner == "cls" or owner.split(".")[-1] in ("Embedding", "EmbeddingBag"):
                continue                        # torch's Embedding.from_pretrained, a classmethod's own cls
            yield node


def _is_guarded(call: ast.Call) -> bool:
    for kw in call.keywords:
        if kw.arg is None and isinstance(kw.value, ast.Name) and kw.value.id in ("LOADER_KWARGS", "kwargs"):
            return True
        if kw.arg == "trust_remote_code" and isinstance(kw.value, ast.Constant) and kw.value.value is False:
            return True
    return False


def test_every_transformers_loader_is_told_never_to_run_remote_code():
    assert LOADER_KWARGS == {"local_files_only": True, "trust_remote_code": False}
    calls = 0
    for file in SRC.rglob("*.py"):
        text = file.read_text()
        for call in _loader_calls(ast.parse(text)):
            calls += 1
            assert _is_guarded(call), (file, call.lineno, ast.unparse(call)[:200])
            if any(kw.arg is None and getattr(kw.value, "id", "") == "kwargs" for kw in call.keywords):
                assert '"trust_remote_code": False' in text or "LOADER_KWARGS" in text, file
    assert calls >= 6


@pytest.mark.parametrize("file, extra", [("config.json", {"model_type": "evil"}),
                                         ("tokenizer_config.json", {"tokenizer_class": "Evil"}),
                                         ("preprocessor_config.json", {})])
def test_an_auto_map_is_refused_and_its_code_never_runs(lm, tmp_path, file, extra):
    folder = _copy(lm, tmp_path)
    marker = tmp_path / "MARKER"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    path = folder / file
    if not path.exists():
        path.write_text("{}")
    _edit(path, auto_map={"AutoConfig": "evil.X", "AutoTokenizer": [None, "evil.X"]}, **extra)
    with pytest.raises(UnknownModelError, match=rf"{file}: 'auto_map' asks to run code from the folder"):
        torchslim.load_model(str(folder))
    assert not marker.exists()


@pytest.mark.parametrize("key, value, message", [
    ("num_hidden_layers", 10**6, r"'num_hidden_layers' is 1000000: out of range \(0 to 4096\)"),
    ("num_hidden_layers", 30, "more layers than the 20 tensors its weights hold"),
    ("rms_norm_eps", math.nan, "'rms_norm_eps' is nan: a config number must be finite"),
    ("rms_norm_eps", 0.0, r"a normalisation epsilon must lie in \(0, 1\)"),
    ("max_position_embeddings", 10**12, r"out of range \(0 to 16777216\)"),
    ("hidden_size", 1 << 20, "parameters, but the weights hold 90,496 values"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": math.inf}, "'rope_parameters.rope_theta' is inf"),
])
def test_absurd_config_numbers_are_refused_before_building(lm, tmp_path, key, value, message):
    folder = _copy(lm, tmp_path)
    _edit(folder / "config.json", **{key: value})
    with pytest.raises(UnknownModelError, match=message):
        torchslim.load_model(str(folder))


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/a.safetensors", "gone.safetensors"])
def test_a_shard_index_naming_files_outside_the_folder_is_refused(lm, tmp_path, name):
    folder = _copy(lm, tmp_path)
    shutil.copy(folder / "model.safetensors", tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": name}}))
    with pytest.raises(UnknownModelError, match="model.safetensors.index.json: names the shard"):
        torchslim.load_model(str(folder))


def test_special_files_are_refused_without_reading_them(lm, tmp_path):
    folder = _copy(lm, tmp_path)
    (folder / "tokenizer.json").unlink()
    os.mkfifo(folder / "tokenizer.json")                 # reading it would block forever
    with pytest.raises(UnknownModelError, match="tokenizer.json: not a regular file"):
        check_folder(folder)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(folder / "tokenizer.json")
    with pytest.raises(UnknownModelError, match="tokenizer.json: a broken or looping link"):
        check_folder(folder)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(lm / "tokenizer.json")      # a link to a regular file (HF cache layout)
    check_folder(folder)


def test_image_processor_sizes_and_numbers_are_bounded():
    from torchslim.zoo.hf_guard import check_processor_numbers

    where = Path("preprocessor_config.json")
    check_processor_numbers({"size": {"height": 224, "width": 224}, "image_mean": [0.5, 0.5, 0.5]}, where)
    with pytest.raises(UnknownModelError, match=r"'size.height' is 1000000000: out of range \(0 to 16384\)"):
        check_processor_numbers({"size": {"height": 10**9, "width": 224}}, where)
    with pytest.raises(UnknownModelError, match=r"'image_mean\[1\]' is nan: a processor number must be finite"):
        check_processor_numbers({"image_mean": [0.5, math.nan, 0.5]}, where)
    with pytest.raises(UnknownModelError, match=r"'max_pixels' is 1099511627776: out of range \(0 to 67108864\)"):
        check_processor_numbers({"max_pixels": 1 << 40}, where)


def test_a_tokenizer_setting_of_the_wrong_type_is_refused_at_load(lm, tmp_path):
    from torchslim.zoo.hf import load_tokenizer

    folder = _copy(lm, tmp_path)
    _edit(folder / "tokenizer_config.json", model_max_length="x")
    with pytest.raises(UnknownModelError, match="tokenizer_config.json: 'model_max_length' must be a number, got 'x'"):
        load_tokenizer(folder)


def test_quiet_transformers_turns_off_its_tqdm_bar_and_restores_it():
    # the Python API loads zoo models inside it: transformers' "Loading weights" bar wrote \r frames into logs
    from transformers.utils import logging as hf_logging

    from torchslim.zoo.hf_guard import quiet_transformers

    hf_logging.enable_progress_bar()
    with quiet_transformers():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()               # a user who turned them off keeps them off
    with quiet_transformers():
        pass
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
