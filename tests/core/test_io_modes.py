"""Files torchslim writes get the user's normal permissions (0666/0777 less the umask), not mkstemp's 0600."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import torchslim
from torchslim.core.io import atomic_dir, atomic_file, atomic_path
from torchslim.recipes import RunOptions, load_recipe, run_recipe


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def _assert_user_modes(root: Path) -> None:
    modes = _modes(root)
    assert modes, root
    for name, mode in modes.items():
        want = 0o755 if (root / name).is_dir() else 0o644
        assert mode == want, f"{name}: {oct(mode)} instead of {oct(want)}"


def test_atomic_writers_respect_the_umask(tmp_path: Path, umask_022) -> None:
    with atomic_file(tmp_path / "a.json") as f:
        f.write("{}")
    with atomic_path(tmp_path / "b.bin") as p:
        p.write_bytes(b"x")
    with atomic_dir(tmp_path / "ckpt") as d:
        (d / "state.json").write_text("{}")
    _assert_user_modes(tmp_path)
    os.umask(0o077)
    with atomic_file(tmp_path / "private.json") as f:
        f.write("{}")
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_an_artifact_a_run_report_and_exports_are_readable_by_others(tmp_path: Path, umask_022) -> None:
    from torchslim.artifact.export_hf import export_hf
    from torchslim.exports import export_gguf

    out = tmp_path / "run"
    run_recipe(load_recipe("int8-weight-only"), "tiny-llama", out, RunOptions(iters=3, warmup=1, decode_tokens=2))
    assert (out / "report.md").exists() and (out / "manifest.json").exists()
    _assert_user_modes(out)
    export_hf(out, tmp_path / "hf", dense=True)
    _assert_user_modes(tmp_path / "hf")
    (tmp_path / "gguf").mkdir()
    export_gguf("tiny-llama", tmp_path / "gguf" / "m.gguf", qtype="Q8_0")
    _assert_user_modes(tmp_path / "gguf")
    saved = torchslim.save(torchslim.load(out), tmp_path / "again")
    _assert_user_modes(saved)
