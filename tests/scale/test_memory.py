"""Onloading holds one block: its peak resident set is below the in-memory run's (each run in its own process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
import torchslim
from torchslim.pruning import UnstructuredConfig
from torchslim.scale.onload import compress_onloaded

def hwm():
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith("VmHWM:"))

mode, folder, out = sys.argv[1:4]
cfg = UnstructuredConfig(sparsity=0.5, importance="wanda", n_samples=2)
base = hwm()
if mode == "memory":
    loaded = torchslim.load_model(folder)
    torchslim.apply_(loaded.model, cfg, task=loaded.task)
    torchslim.save(loaded.model, out, source=loaded.source)
else:
    compress_onloaded(folder, cfg, out, max_memory="60MB", cache_memory="1MB")
print(json.dumps({"base": base, "peak": hwm()}))
"""


@pytest.fixture(scope="module")
def wide_folder(tmp_path_factory) -> Path:
    """8 blocks of 4.2 M float32 parameters (134 MB): big enough that holding them all shows in the peak."""
    from torchslim.zoo.tiny import tiny_llama

    lm = tiny_llama(num_hidden_layers=8, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                    num_key_value_heads=8, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("wide") / "hf"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def _run(mode: str, folder: Path, out: Path) -> dict:
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(out)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow      # two processes that import torch and transformers and prune 134 MB: ~15 s
def test_onloaded_peak_memory_is_below_the_in_memory_run(wide_folder, tmp_path):
    mem = _run("memory", wide_folder, tmp_path / "mem")
    onl = _run("onload", wide_folder, tmp_path / "onl")
    assert (tmp_path / "mem" / "model.safetensors").read_bytes() == (tmp_path / "onl" / "model.safetensors").read_bytes()
    grew_mem, grew_onl = mem["peak"] - mem["base"], onl["peak"] - onl["base"]
    assert grew_onl < 0.5 * grew_mem, (grew_onl, grew_mem)      # the model is 134 MB, one block 17 MB
