"""The import layers: the contract in pyproject.toml holds (``lint-imports``), it can fail, and the picture in
docs/architecture.md is the same list."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- layers: generated from pyproject.toml by tests/test_layers.py -->", "<!-- end of layers -->"


def _lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath), "HOME": str(cwd)}
    return subprocess.run(cmd + ["--no-cache", "--config", str(cwd / "pyproject.toml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _contracts() -> dict[str, dict]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in cfg["contracts"]}


def layers_picture() -> str:
    """The layers contract drawn top to bottom, as docs/architecture.md shows it."""
    rows = [" | ".join(f"{m.strip()}/" if (ROOT / "src" / "torchslim" / m.strip()).is_dir() else f"{m.strip()}.py"
                       for m in layer.split("|")) for layer in _contracts()["layers"]["layers"]]
    body = [f"  {r}" for r in rows]
    return "\n".join([BEGIN, "```", "  (top: may import everything below)", *body, "  (bottom: imports no other layer)",
                      "```", END])


def test_the_contract_holds_with_nothing_ignored() -> None:
    for contract in _contracts().values():
        assert not contract.get("ignore_imports"), f"{contract['id']} ignores imports"
    done = _lint_imports(ROOT, ROOT / "src")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_every_package_is_placed_in_a_layer() -> None:
    placed = {m.strip() for layer in _contracts()["layers"]["layers"] for m in layer.split("|")}
    src = ROOT / "src" / "torchslim"
    children = {p.stem for p in src.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    assert children == placed


@pytest.mark.parametrize("module, line, named", [
    ("pruning/masks.py", "import torchslim.quantization.formats",                   # one family importing another
     "torchslim.pruning.masks -> torchslim.quantization.formats"),
    ("eval/size.py", "def _late():\n    from torchslim.artifact import save",        # upward, inside a function
     "torchslim.eval.size -> torchslim.artifact"),
    ("core/io.py", "def _late():\n    from torchslim.core import config",            # a circle (config imports io)
     "cycles are allowed in torchslim.core"),
])
def test_a_bad_import_fails_naming_it(tmp_path: Path, module: str, line: str, named: str) -> None:
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "torchslim" / module
    target.write_text(target.read_text() + "\n\n" + line + "\n")
    done = _lint_imports(tmp_path, tmp_path / "src")
    assert done.returncode != 0 and "BROKEN" in done.stdout
    assert named in done.stdout, done.stdout[-3000:]


def test_the_architecture_page_shows_the_same_layers() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} has no generated layers block; paste:\n{layers_picture()}"
    shown = text[text.index(BEGIN):text.index(END) + len(END)]
    assert shown == layers_picture(), f"the layers in {DOC} drifted from pyproject.toml; replace the block with:\n" \
                                      f"{layers_picture()}"


if __name__ == "__main__":          # rewrite the block in docs/architecture.md
    text = DOC.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + layers_picture() + text[stop:])
    print(f"wrote the layers block of {DOC}")
