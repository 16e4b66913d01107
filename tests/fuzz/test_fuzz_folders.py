"""Seeded fuzzing of model folders and user data through the CLI, in the capped worker of test_fuzz.py.

Surfaces: Hugging Face folders (config.json numbers, tokenizer files, image processor configs, shard indexes,
symbolic links, code planted behind an ``auto_map``), torchslim artifacts that carry or point at such a
folder, user data files (``--calib-data`` / ``--eval-data``: text, CSV, JSONL, folders, images) and absurd
command-line numbers.
Every case must end in exit 0, or exit 2 with one ``error:`` line; never a traceback, never beyond the time
bound, never a file changed outside the case's output folder, never the planted code's marker file; and
the cases marked ``must_refuse`` (an absurd value, code to run, a path out of the folder) must exit 2.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from _judge import clean_exit, run_worker
from _mutations import mutate

SEED = int(os.environ.get("TORCHSLIM_FUZZ_SEED", "20261206"))
CASE_SECONDS = 60
ABSURD = [10**12, 2**70, -1, 1e308, math.inf, -math.inf, math.nan, 10**21]
SIZE_KEYS = {"num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta"}
EVIL = "open({marker!r}, 'w').write('ran')\nfrom transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n" \
       "    model_type = 'evil'\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama HF folder, the same sharded, a tiny ViT classifier folder, and an artifact of the Llama."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    import torchslim
    from torchslim.zoo.tiny import tiny_llama

    root = tmp_path_factory.mktemp("folders")
    src = tiny_llama(seed=1)
    src.model.save_pretrained(root / "lm")
    src.tokenizer.save_pretrained(root / "lm")
    src.model.save_pretrained(root / "sharded", max_shard_size="100KB")
    src.tokenizer.save_pretrained(root / "sharded")
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32, num_labels=2,
                                        id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
                              ).save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    loaded = torchslim.load_model(str(root / "lm"))
    torchslim.save(loaded.model, root / "artifact", source=loaded.source)
    return {"lm": root / "lm", "sharded": root / "sharded", "vit": root / "vit", "artifact": root / "artifact"}


def _case(cases: list, root: Path, name: str, argv: list[str], must_refuse: bool = False) -> None:
    cases.append({"id": f"{len(cases)} {name}", "kind": "cli", "argv": argv, "root": str(root),
                  "allowed": [str(root / "out")], "must_refuse": must_refuse, "marker": str(root / "MARKER")})


def _copy(src: Path, d: Path) -> Path:
    shutil.copytree(src, d / "m", symlinks=True)
    return d / "m"


def _gen(folder: Path) -> list[str]:
    return ["generate", str(folder), "-p", "hi", "-n", "2", "--dtype", "fp32"]


def _config_cases(cases: list, base: Path, root: Path, rng: random.Random, n: int) -> None:
    doc0 = json.loads((base / "config.json").read_text())
    for i in range(n):
        if i % 2:                                 # half: an absurd number in a size field (must be refused)
            key = rng.choice(sorted(SIZE_KEYS))
            doc, path = json.loads(json.dumps(doc0)), (key,)
            (doc["rope_parameters"] if key == "rope_theta" else doc)[key] = rng.choice(ABSURD)
            refuse = True
        else:
            doc, path, _ = mutate(doc0, rng)
            refuse = False
        d = root / f"cfg{i}"
        folder = _copy(base, d)
        (folder / "config.json").write_text(json.dumps(doc))
        _case(cases, d, f"config.json {path} = {str(doc.get(path[0]))[:40]}", _gen(folder), refuse)


def _tokenizer_cases(cases: list, base: Path, root: Path, rng: random.Random, n: int) -> None:
    doc0 = json.loads((base / "tokenizer_config.json").read_text())
    for i in range(n):
        d = root / f"tok{i}"
        folder = _copy(base, d)
        what = rng.choice(["mutate", "truncate", "garbage", "fifo", "devzero", "loop", "dir"])
        tok = folder / "tokenizer.json"
        if what == "mutate":
            (folder / "tokenizer_config.json").write_text(json.dumps(mutate(doc0, rng)[0]))
        elif what == "truncate":
            tok.write_bytes(tok.read_bytes()[: rng.randrange(1, 2000)])
        elif what == "garbage":
            tok.write_bytes(bytes(rng.randrange(256) for _ in range(500)))
        else:
            tok.unlink()
            {"fifo": lambda: os.mkfifo(tok), "devzero": lambda: tok.symlink_to("/dev/zero"),
             "loop": lambda: tok.symlink_to(tok), "dir": tok.mkdir}[what]()
        _case(cases, d, f"tokenizer {what}", _gen(folder), what in ("fifo", "devzero", "loop", "dir"))


def _processor_cases(cases: list, base: Path, root: Path, rng: random.Random, n: int) -> None:
    doc0 = json.loads((base / "preprocessor_config.json").read_text())
    for i in range(n):
        if i % 2:                                 # an absurd output size or a non-finite number: refused
            doc, path = json.loads(json.dumps(doc0)), ("size", rng.choice(["height", "width"]))
            doc["size"][path[1]] = rng.choice(ABSURD)
            refuse = True
        else:
            doc, path, _ = mutate(doc0, rng)
            refuse = False
        d = root / f"proc{i}"
        folder = _copy(base, d)
        (folder / "preprocessor_config.json").write_text(json.dumps(doc))
        _case(cases, d, f"preprocessor_config.json {path}", ["eval", str(folder), "--no-speed", "--eval-data",
                                                             str(_images(d, [(16, 16)]))], refuse)


def _shard_cases(cases: list, base: Path, root: Path) -> None:
    index = json.loads((base / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    for i, (what, value) in enumerate([("parent", "../outside.safetensors"), ("absolute", "/etc/passwd"),
                                       ("subfolder", "sub/x.safetensors"), ("missing", "nope.safetensors"),
                                       ("number", 5), ("nul", "a\x00.safetensors")]):
        d = root / f"shard{i}"
        folder = _copy(base, d)
        shutil.copy(folder / first, d / "outside.safetensors")       # a real shard, one folder up
        doc = json.loads(json.dumps(index))
        doc["weight_map"][sorted(doc["weight_map"])[0]] = value
        (folder / "model.safetensors.index.json").write_text(json.dumps(doc))
        _case(cases, d, f"shard index {what}", _gen(folder), True)
    d = root / "shard-link"
    folder = _copy(base, d)
    (folder / first).unlink()
    (folder / first).symlink_to("/dev/zero")
    _case(cases, d, "shard linked to /dev/zero", _gen(folder), True)


def _plant(folder: Path, file: str, marker: Path, nested: bool = False) -> None:
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    doc = json.loads((folder / file).read_text()) if (folder / file).is_file() else {}
    auto = {"AutoConfig": "evil.EvilConfig", "AutoTokenizer": [None, "evil.EvilConfig"],
            "AutoImageProcessor": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig"}
    if nested:
        doc["image_processor"] = {"auto_map": auto}
    else:
        doc["auto_map"] = auto
    if file == "config.json":
        doc["model_type"] = "evil"                 # no transformers class: only the folder's code could load it
    if file == "tokenizer_config.json":
        doc["tokenizer_class"] = "EvilConfig"
    (folder / file).write_text(json.dumps(doc))


def _remote_code_cases(cases: list, f: dict[str, Path], root: Path) -> None:
    for i, (base, file, nested, verb) in enumerate([
            ("lm", "config.json", False, "generate"), ("lm", "tokenizer_config.json", False, "generate"),
            ("lm", "tokenizer_config.json", False, "eval"), ("vit", "preprocessor_config.json", False, "eval"),
            ("vit", "processor_config.json", True, "eval"), ("artifact", "config.json", False, "generate")]):
        d = root / f"code{i}"
        folder = _copy(f[base], d)
        _plant(folder, file, d / "MARKER", nested)
        argv = _gen(folder) if verb == "generate" else ["eval", str(folder), "--no-speed"]
        if base == "vit":
            argv += ["--eval-data", str(_images(d, [(16, 16)]))]
        _case(cases, d, f"auto_map in {base}/{file} ({verb})", argv, True)
    d = root / "code-source"                                       # an artifact recording an evil source folder
    evil = _copy(f["lm"], d)
    _plant(evil, "tokenizer_config.json", d / "MARKER")
    art = d / "art"
    shutil.copytree(f["artifact"], art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["source"] = {"kind": "hf", "path": str(evil)}
    (art / "manifest.json").write_text(json.dumps(manifest))
    _case(cases, d, "artifact whose source folder has an auto_map", ["eval", str(art), "--no-speed"], True)


def _png(w: int, h: int, ok: bool = True) -> bytes:
    """A PNG of ``w x h`` grey pixels; with ``ok=False``, only the header claims that size (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"".join(b"\x00" + b"\x80" * w for _ in range(h))) if ok else zlib.compress(b"\x00")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _images(d: Path, sizes: list[tuple[int, int]], extra: bytes | None = None) -> Path:
    folder = d / "images"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for j, (w, h) in enumerate(sizes):
            (folder / cls / f"{j}.png").write_bytes(_png(w, h, ok=w * h < 10**6))
        if extra is not None:
            (folder / cls / "x.png").write_bytes(extra)
    return folder


def _data_cases(cases: list, f: dict[str, Path], root: Path, rng: random.Random) -> None:
    gptq = {"_type": "GPTQConfig", "n_samples": 4, "block_size": 32,
            "weight": {"format": {"_type": "IntFormat", "bits": 4}, "granularity": {"_type": "PerGroup", "size": 32},
                       "selector": {"exclude": ["lm_head"]}}}
    texts = {"latin1": "caf\xe9 ".encode("latin-1") * 50, "empty": b"", "nul": b"\x00" * 5000,
             "csv": b"text,label\n" + b"hello world,1\n" * 300, "markup": b"[/bold] [red]x[/] " * 400,
             "big": None, "jsonl-bad": b'{"text": 5}\n{"text": "a"}\n', "jsonl-deep": b"[" * 100000 + b"\n",
             "jsonl-labels": b"\n".join(json.dumps({"text": f"t{i}", "label": rng.choice([-1, 10**30, "x", 1])})
                                        .encode() for i in range(50))}
    for i, (what, raw) in enumerate(sorted(texts.items())):
        d = root / f"data{i}"
        d.mkdir()
        p = d / (f"d.{what.split('-')[0]}" if what.startswith(("jsonl", "csv")) else "d.txt")
        if raw is None:                                  # 50 MB of English-like text: bounded, then used
            p.write_bytes(b"The quick brown fox jumps over the lazy dog. " * (50 << 20 // 45))
        else:
            p.write_bytes(raw)
        flag = "--calib-data" if i % 2 else "--eval-data"
        argv = (["quantize", "tiny-llama", "-c", str(_json(d / "c.json", gptq)), "-o", str(d / "out"), "--no-eval",
                 flag, str(p)]
                if flag == "--calib-data" else ["eval", "tiny-llama", "--no-speed", flag, str(p)])
        _case(cases, d, f"user text {what} ({flag})", argv, what in ("latin1", "empty", "jsonl-bad", "jsonl-deep"))
    for i, what in enumerate(["fifo", "devzero", "loop", "dir"]):
        d = root / f"special{i}"
        (d / "texts").mkdir(parents=True)
        p = d / "texts" / "a.txt"
        {"fifo": lambda: os.mkfifo(p), "devzero": lambda: p.symlink_to("/dev/zero"),
         "loop": lambda: p.symlink_to(p), "dir": p.mkdir}[what]()
        _case(cases, d, f"data folder with a.txt as {what}", ["eval", "tiny-llama", "--no-speed", "--eval-data",
                                                             str(d / "texts")], True)
        _case(cases, d, f"data file that is a {what}", ["eval", "tiny-llama", "--no-speed", "--eval-data", str(p)],
              True)
    for i, (what, sizes, extra) in enumerate([("gigapixel", [(40000, 40000)], None), ("80 Mpx", [(9000, 9000)], None),
                                              ("text as png", [(16, 16)], b"not an image"),
                                              ("truncated png", [(16, 16)], _png(16, 16)[:40])]):
        d = root / f"img{i}"
        d.mkdir()
        _case(cases, d, f"images: {what}", ["eval", str(f["vit"]), "--no-speed", "--eval-data",
                                            str(_images(d, sizes, extra))], True)


def _json(p: Path, doc: dict) -> Path:
    p.write_text(json.dumps(doc))
    return p


def _number_cases(cases: list, f: dict[str, Path], root: Path) -> None:
    for i, (what, argv) in enumerate([
            ("seq-len 10^21", ["eval", "tiny-llama", "--no-speed", "--seq-len", str(10**21)]),
            ("seq-len past context", ["eval", str(f["lm"]), "--no-speed", "--seq-len", "100000"]),
            ("new tokens past context", ["generate", "tiny-llama", "-p", "hi", "-n", "65536"]),
            ("non-UTF-8 prompt", ["generate", "tiny-llama", "-p", "hi \udcff\udcfe"]),
            ("markup model name", ["generate", str(root / "a[") + "/b]", "-p", "hi", "-n", "2"]),
            ("batch of a million", ["finetune", "tiny-llama", "--steps", "1", "--batch-size", "1000000"]),
            ("shape of a million", ["eval", "tiny-llama", "--shape", "1000000x128", "--iters", "3"])]):
        d = root / f"num{i}"
        d.mkdir()
        _case(cases, d, what, argv, what != "markup model name")
    (root / "a[").mkdir()
    shutil.copytree(f["lm"], root / "a[" / "b]")


def _run(tmp_path: Path, cases: list[dict]) -> list[dict]:
    return run_worker(tmp_path, cases, CASE_SECONDS * len(cases) + 120,
                      stdin="y\n" * 100)      # a prompt asking to run a folder's code would get "y"


def _problems(cases: list[dict], results: list[dict]) -> list[str]:
    problems = []
    for case, r in zip(cases, results):
        problems += clean_exit(case, r, ignore=("Loading weights",))
        if case["must_refuse"] and r["code"] == 0 and not r["traceback"]:
            problems.append(f"{case['id']}: accepted silently (exit {r['code']})")
        if Path(case["marker"]).exists():
            problems.append(f"{case['id']}: ran code from the model folder")
        if r["seconds"] > CASE_SECONDS:
            problems.append(f"{case['id']}: took {r['seconds']:.0f} s")
    return problems


def _all_cases(folders: dict[str, Path], root: Path, seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    cases: list[dict] = []
    _config_cases(cases, folders["lm"], root, rng, n)
    _tokenizer_cases(cases, folders["lm"], root, rng, n // 2)
    _processor_cases(cases, folders["vit"], root, rng, max(n // 3, 4))
    _shard_cases(cases, folders["sharded"], root)
    _remote_code_cases(cases, folders, root)
    _data_cases(cases, folders, root, rng)
    _number_cases(cases, folders, root)
    return cases


def test_fuzzed_folders_and_data_fail_cleanly(tmp_path, folders):
    cases = _all_cases(folders, tmp_path, SEED, 12)
    problems = _problems(cases, _run(tmp_path, cases))
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:15])


@pytest.mark.slow
def test_more_fuzzed_folders(tmp_path, folders):
    cases = _all_cases(folders, tmp_path, SEED + 1, 60)
    problems = _problems(cases, _run(tmp_path, cases))
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:15])
