"""Fixtures shared across test folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tools"))     # test tools (support_matrix) import by name

# The demo measures this machine's kernel table once (about 30 s) and caches it in the user's folder: tests use
# the documented default instead, so that they neither spend that time nor depend on a table measured elsewhere.
os.environ.setdefault("TORCHSLIM_MEASURE_KERNELS", "0")
os.environ.setdefault("TORCHSLIM_KERNEL_TABLE", os.devnull + ".no-kernel-table.json")   # never a user's table
# OpenMP threads that spin at every barrier make a 2-thread forward hundreds of times slower when the cores are
# shared (measured: tiny-llama 814 ms against 2.8 ms at load ~13), so tests with time limits failed on a loaded
# machine. Sleeping threads cost a little latency on a quiet one; no test asserts a speed. Set before torch loads,
# and inherited by every command the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def pruned_int8_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real artifact: tiny-llama with 25% of its MLP neurons removed and the MLP projections in int8
    (resized modules, replacement layers, tied weights, a history). Tests copy it before tampering."""
    import torchslim
    from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig

    loaded = torchslim.load_model("tiny-llama")
    torchslim.prune_(loaded.model, torchslim.StructuredConfig(targets=("neurons",), ratio=0.25))
    torchslim.quantize_(loaded.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                                                       selector=torchslim.Selector(include=("re:.*mlp\\..*_proj",))))
    path = tmp_path_factory.mktemp("shared") / "pruned-int8"
    torchslim.save(loaded.model, path)
    return path


@pytest.fixture
def cli(capsys, monkeypatch):
    """``torchslim ARGS`` through the same entry point, in this process: a ``CompletedProcess`` (exit code, stdout,
    stderr) without an interpreter start per call (about 2 s each). Tests of the installed executable itself run it
    in a subprocess."""
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "0")
    monkeypatch.setenv("COLUMNS", "240")

    from torchslim.cli.main import main

    def call(*args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            main([*map(str, args)])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)
    return call
