"""The Python examples in README.md and docs/*.md run as written (on the tiny test models)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SWAP = {'"smollm2-135m"': '"tiny-llama"', '"minilm"': '"tiny-bert"'}


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(re.finditer(r"```python\n(.*?)```", doc.read_text(), re.S)):
            out.append((doc.name, i, m.group(1)))
    return out


@pytest.mark.parametrize("doc,index,code", _blocks(), ids=lambda v: str(v)[:30])
def test_example_runs(doc, index, code, tmp_path, monkeypatch):
    for a, b in SWAP.items():
        code = code.replace(a, b)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{doc}[{index}]", "exec"), {"__name__": "__docs__"})
