"""Seeded fuzzing of configs, manifests and safetensors headers through the CLI and ``torchslim.load``.

Every case runs in one worker process whose address space is capped (so an attempt to allocate beyond
the bound fails loudly instead of swapping), and must end in exit 0, or exit 2 with one ``error:``
line naming the field or file; never a traceback; and no file outside the target folder may change.
"""
from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import pytest
import yaml

from _judge import clean_exit, one_error, run_worker
from _mutations import mutate

SEED = int(__import__("os").environ.get("TORCHSLIM_FUZZ_SEED", "20261129"))   # other seeds: more cases

CONFIGS = {
    "quantize": [
        {"_type": "WeightOnlyConfig", "format": {"_type": "IntFormat", "bits": 8}, "granularity": {"_type": "PerChannel"},
         "selector": {"include": ["type:Linear"], "exclude": ["lm_head"]}},
        {"_type": "GPTQConfig", "n_samples": 4, "block_size": 32,
         "weight": {"format": {"_type": "IntFormat", "bits": 4, "symmetric": False},
                    "granularity": {"_type": "PerGroup", "size": 32}, "selector": {"exclude": ["lm_head"]}}},
        {"_type": "CastConfig", "dtype": "bfloat16", "selector": {"include": ["type:Embedding"]}},
        {"_type": "W8A8Config", "mode": "dynamic", "smooth_alpha": None, "n_samples": 4,
         "observer": {"_type": "KL", "bins": 64, "stride": 4}},
    ],
    "prune": [
        {"_type": "UnstructuredConfig", "sparsity": 0.5, "importance": "magnitude", "pattern": None},
        {"_type": "StructuredConfig", "targets": ["neurons"], "ratio": 0.25, "importance": "magnitude_l2",
         "round_to": 8, "min_keep": 1},
    ],
}


def _names(path: tuple) -> list[str]:
    return [str(k) for k in path if isinstance(k, str) and not k.startswith("_data")]


def _config_cases(root: Path, rng: random.Random, n: int) -> list[dict]:
    cases = []
    for i in range(n):
        verb = rng.choice(sorted(CONFIGS))
        base = rng.choice(CONFIGS[verb])
        doc, path, what = mutate(base, rng)
        d = root / f"cfg{i}"
        d.mkdir()
        cfg = d / ("c.yaml" if i % 2 else "c.json")
        cfg.write_text(yaml.safe_dump(doc) if i % 2 else json.dumps(doc))
        cases.append({"id": f"config {i}: {verb} {base['_type']} {what} {path}", "kind": "cli", "root": str(d),
                      "allowed": [str(d / "out")], "argv": [verb, "tiny-llama", "-c", str(cfg), "-o", str(d / "out"), "--no-eval"],
                      "names": _names(path) + [base["_type"], str(cfg)]})
    return cases


@pytest.fixture
def base_artifact(pruned_int8_artifact) -> Path:
    return pruned_int8_artifact


def _manifest_cases(base: Path, root: Path, rng: random.Random, n: int) -> list[dict]:
    manifest = json.loads((base / "manifest.json").read_text())
    cases = []
    for i in range(n):
        doc, path, what = mutate(manifest, rng, skip=("torch_version", "created", "torchslim_version", "metadata"))
        d = root / f"man{i}"
        shutil.copytree(base, d / "a")
        (d / "a" / "manifest.json").write_text(json.dumps(doc))
        kind = ["info", "load"][i % 2]          # `eval` and `quantize` of an artifact load it the same way
        argv = ["info", str(d / "a")]
        cases.append({"id": f"manifest {i}: {kind} {what} {path}", "kind": "load" if kind == "load" else "cli",
                      "path": str(d / "a"), "argv": argv, "root": str(d), "allowed": [],
                      "names": _names(path) + [str(d / "a")]})
    return cases


def _header_cases(base: Path, root: Path, rng: random.Random, n: int) -> list[dict]:
    from torchslim.core.io import sha256

    raw = (base / "model.safetensors").read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    cases = []
    for i in range(n):
        doc, path, what = mutate(header, rng, skip=("__metadata__",))
        d = root / f"hdr{i}"
        shutil.copytree(base, d / "a")
        new = json.dumps(doc).encode()
        w = d / "a" / "model.safetensors"
        w.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + size:])
        m = json.loads((d / "a" / "manifest.json").read_text())
        m["weights"].update(bytes=w.stat().st_size, sha256=sha256(w))
        (d / "a" / "manifest.json").write_text(json.dumps(m))
        cases.append({"id": f"header {i}: {what} {path}", "kind": "load", "path": str(d / "a"), "root": str(d),
                      "allowed": [], "names": _names(path) + [str(d / "a")]})
    return cases


def test_fuzzed_inputs_fail_cleanly(tmp_path, base_artifact):
    rng = random.Random(SEED)
    cases = (_config_cases(tmp_path, rng, 48) + _manifest_cases(base_artifact, tmp_path, rng, 48)
             + _header_cases(base_artifact, tmp_path, rng, 24))
    results = run_worker(tmp_path, cases, timeout=900)
    problems = []
    for case, r in zip(cases, results):
        problems += clean_exit(case, r)
        line = one_error(r)
        if line is not None and not any(n in line for n in case["names"]):
            problems.append(f"{case['id']}: the error names neither the field nor the file: {line[:300]}")
        if r["seconds"] > 60:
            problems.append(f"{case['id']}: took {r['seconds']:.0f} s")
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:15])
    assert sum(r["code"] == 2 for r in results) > len(cases) // 2      # most mutations are errors, not no-ops
